//! The PostgreSQL catalog's schema: [`MIGRATIONS`], applied in order under an advisory lock
//! by whichever process opens an older database first, and recorded in `imgpack_schema`.

use super::PostgresStore;
use crate::error::{Error, ErrorKind, Result};

/// Schema steps; `imgpack_schema.version` is the number applied. Adding a column is one more
/// line here, e.g. `"ALTER TABLE images ADD COLUMN digest TEXT"`.
pub const MIGRATIONS: &[&str] = &[
    // 1: images and settings.
    "CREATE TABLE images (
        id TEXT PRIMARY KEY NOT NULL,
        owner TEXT NOT NULL,
        source_type TEXT NOT NULL CHECK (source_type IN ('upload', 'snapshot')),
        created_on TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('creating', 'available', 'deprecated', 'failed', 'deleted')),
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        arch TEXT NOT NULL CHECK (arch IN ('i686', 'x86_64')),
        mode TEXT NOT NULL CHECK (mode IN ('virtio', 'compatibility')),
        public BOOLEAN NOT NULL,
        official BOOLEAN NOT NULL,
        username TEXT,
        source TEXT NOT NULL,
        virtual_size BIGINT NOT NULL CHECK (virtual_size >= 0),
        disk_size BIGINT NOT NULL CHECK (disk_size >= 0),
        compressed_size BIGINT NOT NULL CHECK (compressed_size >= 0),
        format TEXT,
        chunks BIGINT NOT NULL CHECK (chunks >= 0),
        reason TEXT,
        lease_pid BIGINT,
        lease_host TEXT,
        lease_boot_id TEXT,
        lease_start_time BIGINT,
        lease_expires BIGINT
    );
    CREATE INDEX images_by_status ON images (status);
    CREATE TABLE settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);",
    // 2: one registration at a time per upload.
    super::super::store::ONE_REGISTRATION_PER_UPLOAD,
    // 3: the image digest and the upload's SHA-256 (archive format version 2).
    "ALTER TABLE images ADD COLUMN digest TEXT, ADD COLUMN source_sha256 TEXT;",
    // 4: one image per upload, whatever the timing of the registrations.
    super::super::store::ONE_IMAGE_PER_UPLOAD,
    // 5: deduplicated chunks and the images that reference them.
    super::super::chunks::catalog::POSTGRES_MIGRATION,
];

/// The advisory lock key held while migrating ("imgpack" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x0069_6d67_7061_636b;

impl PostgresStore {
    /// The schema version of the database.
    pub fn schema_version(&mut self) -> Result<u32> {
        let version: i32 = self.read("cannot read the schema version", |client| {
            client
                .query_one("SELECT version FROM imgpack_schema", &[])
                .and_then(|row| row.try_get(0))
        })?;
        Ok(u32::try_from(version).unwrap_or(0))
    }

    pub(super) fn migrate(&mut self) -> Result<()> {
        let shown = self.shown.clone();
        let fail = |what: &str, e: postgres::Error| {
            Error::new(ErrorKind::Io, format!("catalog database {shown}: {what}")).with_source(e)
        };
        let client = self.client()?;
        let mut tx = client
            .transaction()
            .map_err(|e| fail("cannot start the migration", e))?;
        // Serialises every migrating process; released when the transaction ends.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(|e| fail("cannot take the migration lock", e))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS imgpack_schema (version INTEGER NOT NULL);
             INSERT INTO imgpack_schema (version)
                 SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM imgpack_schema);",
        )
        .map_err(|e| fail("cannot create the schema version table", e))?;
        let version: i32 = tx
            .query_one("SELECT version FROM imgpack_schema", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| fail("cannot read the schema version", e))?;
        let known = MIGRATIONS.len();
        let applied = usize::try_from(version).unwrap_or(usize::MAX);
        if applied > known {
            return Err(Error::unsupported(format!(
                "catalog schema version {version} is newer than this imgpack knows ({known})"
            )));
        }
        for (index, step) in MIGRATIONS.iter().enumerate().skip(applied) {
            tx.batch_execute(step)
                .map_err(|e| fail(&format!("migration {} failed", index + 1), e))?;
            let done = i32::try_from(index + 1).expect("few migrations");
            tx.execute("UPDATE imgpack_schema SET version = $1", &[&done])
                .map_err(|e| fail("cannot record the schema version", e))?;
        }
        tx.commit().map_err(|e| fail("cannot commit the migration", e))
    }
}
