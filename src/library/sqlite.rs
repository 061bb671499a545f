//! [`SqliteStore`]: the catalog in an embedded SQLite database (`catalog.db`), in WAL mode so
//! readers never wait for writers, with a busy timeout so concurrent writers queue instead of
//! failing. Every write is one statement or one `BEGIN IMMEDIATE` transaction.
//!
//! The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] lists the steps, applied
//! in order inside one immediate transaction by whichever process opens an older database first.
//!
//! | table      | columns                                                                   |
//! |------------|---------------------------------------------------------------------------|
//! | `images`   | the [`ImageRecord`] fields, plus `lease_pid`, `lease_host`, `lease_boot_id`, `lease_start_time`, `lease_expires` while `creating` |
//! | `settings` | `key`, `value` (library settings: `operator`, `max_compressed_size`)     |
//! | `chunks`, `image_chunks` | deduplicated frames and their references (see [`crate::library::chunks::catalog`]) |

mod chunks;

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior};

use super::record::{catalog_error, ImageRecord, Status};
use super::store::{upload_busy, CatalogStore, Changes, Lease};
use crate::error::{Error, ErrorKind, Result};

/// How long a writer waits for another's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Schema steps; `user_version` is the number applied. Adding a column is one more line here,
/// e.g. `"ALTER TABLE images ADD COLUMN digest TEXT"` (and the same in the PostgreSQL store).
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
        public INTEGER NOT NULL,
        official INTEGER NOT NULL,
        username TEXT,
        source TEXT NOT NULL,
        virtual_size INTEGER NOT NULL,
        disk_size INTEGER NOT NULL,
        compressed_size INTEGER NOT NULL,
        format TEXT,
        chunks INTEGER NOT NULL,
        reason TEXT,
        lease_pid INTEGER,
        lease_host TEXT,
        lease_boot_id TEXT,
        lease_start_time INTEGER,
        lease_expires INTEGER
    );
    CREATE INDEX images_by_status ON images (status);
    CREATE TABLE settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);",
    // 2: one registration at a time per upload.
    super::store::ONE_REGISTRATION_PER_UPLOAD,
    // 3: the image digest and the upload's SHA-256 (archive format version 2).
    "ALTER TABLE images ADD COLUMN digest TEXT; ALTER TABLE images ADD COLUMN source_sha256 TEXT;",
    // 4: one image per upload, whatever the timing of the registrations.
    super::store::ONE_IMAGE_PER_UPLOAD,
    // 5: deduplicated chunks and the images that reference them.
    super::chunks::catalog::SQLITE_MIGRATION,
];

const COLUMNS: &str = "id, owner, source_type, created_on, status, name, description, arch, \
    mode, public, official, username, source, virtual_size, disk_size, compressed_size, format, \
    chunks, reason, digest, source_sha256";

/// The catalog in a SQLite database file.
pub struct SqliteStore {
    conn: Connection,
}

fn db_error(what: &str, e: rusqlite::Error) -> Error {
    Error::new(ErrorKind::Io, format!("catalog database: {what}")).with_source(e)
}

fn to_sql_size(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::invalid_argument(format!("size {value} is too large")))
}

fn from_sql_size(value: i64) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Integer, Box::new(e))
    })
}

fn parse_column<T: std::str::FromStr<Err = Error>>(text: String, index: usize) -> rusqlite::Result<T> {
    text.parse().map_err(|e: Error| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        id: row.get(0)?,
        owner: row.get(1)?,
        source_type: parse_column(row.get(2)?, 2)?,
        created_on: row.get(3)?,
        status: parse_column(row.get(4)?, 4)?,
        name: row.get(5)?,
        description: row.get(6)?,
        arch: parse_column(row.get(7)?, 7)?,
        mode: parse_column(row.get(8)?, 8)?,
        public: row.get(9)?,
        official: row.get(10)?,
        username: row.get(11)?,
        source: row.get(12)?,
        virtual_size: from_sql_size(row.get(13)?)?,
        disk_size: from_sql_size(row.get(14)?)?,
        compressed_size: from_sql_size(row.get(15)?)?,
        format: row.get(16)?,
        chunks: from_sql_size(row.get(17)?)?,
        reason: row.get(18)?,
        digest: row.get(19)?,
        source_sha256: row.get(20)?,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path)
            .map_err(|e| db_error("cannot open", e))
            .map_err(|e| e.in_file(path))?;
        let mut store = SqliteStore { conn };
        store.configure().map_err(|e| e.in_file(path))?;
        store.migrate().map_err(|e| e.in_file(path))?;
        Ok(store)
    }

    /// An in-memory catalog (for tests and dry runs).
    pub fn in_memory() -> Result<SqliteStore> {
        let conn = Connection::open_in_memory().map_err(|e| db_error("cannot open", e))?;
        let mut store = SqliteStore { conn };
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    fn configure(&mut self) -> Result<()> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| db_error("cannot set the busy timeout", e))?;
        // WAL lets listings run while a registration writes; FULL sync makes every committed
        // status change survive a power loss, which the source's deletion relies on.
        self.switch_to_wal()?;
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| db_error("cannot set synchronous mode", e))?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| db_error("cannot enable foreign keys", e))?;
        Ok(())
    }

    /// Switches a new database to WAL mode. SQLite answers "busy" at once, without waiting
    /// for the busy timeout, while another process is creating the same new database, so
    /// this waits itself, up to the same timeout.
    fn switch_to_wal(&self) -> Result<()> {
        let deadline = Instant::now() + BUSY_TIMEOUT;
        loop {
            match self.conn.pragma_update(None, "journal_mode", "WAL") {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == ErrorCode::DatabaseBusy && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                result => return result.map_err(|e| db_error("cannot switch to WAL mode", e)),
            }
        }
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32> {
        self.conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| db_error("cannot read the schema version", e))
    }

    fn migrate(&mut self) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_error("cannot start the migration", e))?;
        let version: u32 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| db_error("cannot read the schema version", e))?;
        let known = MIGRATIONS.len();
        if version as usize > known {
            return Err(Error::unsupported(format!(
                "catalog schema version {version} is newer than this imgpack knows ({known})"
            )));
        }
        for (index, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(step)
                .map_err(|e| db_error(&format!("migration {} failed", index + 1), e))?;
            tx.pragma_update(None, "user_version", index + 1)
                .map_err(|e| db_error("cannot record the schema version", e))?;
        }
        tx.commit()
            .map_err(|e| db_error("cannot commit the migration", e))
    }
}

impl CatalogStore for SqliteStore {
    fn insert(&mut self, record: &ImageRecord, lease: &Lease) -> Result<bool> {
        let result = self.conn.execute(
            &format!(
                "INSERT INTO images ({COLUMNS}, lease_pid, lease_host, lease_boot_id, \
                 lease_start_time, lease_expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                 ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26) ON CONFLICT (id) DO NOTHING"
            ),
            params![
                record.id,
                record.owner,
                record.source_type.as_str(),
                record.created_on,
                record.status.as_str(),
                record.name,
                record.description,
                record.arch.as_str(),
                record.mode.as_str(),
                record.public,
                record.official,
                record.username,
                record.source,
                to_sql_size(record.virtual_size)?,
                to_sql_size(record.disk_size)?,
                to_sql_size(record.compressed_size)?,
                record.format,
                to_sql_size(record.chunks)?,
                record.reason,
                record.digest,
                record.source_sha256,
                lease.pid,
                lease.host,
                lease.boot_id,
                to_sql_size(lease.start_time)?,
                lease.expires_at,
            ],
        );
        match result {
            Ok(inserted) => Ok(inserted == 1),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
            {
                Err(upload_busy(&record.source))
            }
            Err(e) => Err(db_error("cannot add the image", e)),
        }
    }

    fn claim_upload(&mut self, id: &str, identity: &str) -> Result<Option<String>> {
        let result = self.conn.execute(
            "UPDATE images SET upload_identity = ?2 WHERE id = ?1 AND status = 'creating'",
            params![id, identity],
        );
        match result {
            Ok(1) => Ok(None),
            Ok(_) => Err(catalog_error(format!(
                "{id}: the catalog no longer expects this registration"
            ))),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
            {
                self.conn
                    .query_row(
                        "SELECT id FROM images WHERE upload_identity = ?2 AND status <> 'failed' \
                         AND owner = (SELECT owner FROM images WHERE id = ?1)",
                        params![id, identity],
                        |row| row.get(0),
                    )
                    .map(Some)
                    .map_err(|e| db_error("cannot find the image of the upload", e))
            }
            Err(e) => Err(db_error("cannot record the upload of the image", e)),
        }
    }

    fn get(&mut self, id: &str) -> Result<Option<ImageRecord>> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM images WHERE id = ?1"),
                [id],
                record_from_row,
            )
            .optional()
            .map_err(|e| db_error("cannot read the image", e))
    }

    fn list(&mut self) -> Result<Vec<ImageRecord>> {
        let mut statement = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM images WHERE status != 'deleted'"))
            .map_err(|e| db_error("cannot list images", e))?;
        let rows = statement
            .query_map([], record_from_row)
            .map_err(|e| db_error("cannot list images", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| db_error("cannot list images", e))
    }

    fn compare_and_set(
        &mut self,
        id: &str,
        expected: &[Status],
        to: Option<Status>,
        changes: &Changes,
    ) -> Result<bool> {
        if expected.is_empty() {
            return Ok(false);
        }
        let mut sets: Vec<String> = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut set = |column: &str, value: rusqlite::types::Value| {
            values.push(value);
            sets.push(format!("{column} = ?{}", values.len()));
        };
        use rusqlite::types::Value;
        let text = |s: &str| Value::Text(s.to_string());
        if let Some(status) = to {
            set("status", text(status.as_str()));
            if status != Status::Creating {
                for column in [
                    "lease_pid",
                    "lease_host",
                    "lease_boot_id",
                    "lease_start_time",
                    "lease_expires",
                ] {
                    set(column, Value::Null);
                }
            }
        }
        if let Some(v) = &changes.name {
            set("name", text(v));
        }
        if let Some(v) = &changes.description {
            set("description", text(v));
        }
        if let Some(v) = changes.arch {
            set("arch", text(v.as_str()));
        }
        if let Some(v) = changes.mode {
            set("mode", text(v.as_str()));
        }
        if let Some(v) = changes.public {
            set("public", Value::Integer(v.into()));
        }
        if let Some(v) = changes.official {
            set("official", Value::Integer(v.into()));
        }
        if let Some(v) = &changes.username {
            set("username", v.as_deref().map_or(Value::Null, text));
        }
        for (column, v) in [
            ("virtual_size", changes.virtual_size),
            ("disk_size", changes.disk_size),
            ("compressed_size", changes.compressed_size),
            ("chunks", changes.chunks),
        ] {
            if let Some(v) = v {
                set(column, Value::Integer(to_sql_size(v)?));
            }
        }
        if let Some(v) = &changes.format {
            set("format", text(v));
        }
        if let Some(v) = &changes.reason {
            set("reason", text(v));
        }
        if let Some(v) = &changes.digest {
            set("digest", text(v));
        }
        if let Some(v) = &changes.source_sha256 {
            set("source_sha256", text(v));
        }
        if sets.is_empty() {
            // Nothing to write: answer whether the condition holds.
            return Ok(self
                .get(id)?
                .is_some_and(|record| expected.contains(&record.status)));
        }
        values.push(text(id));
        let id_index = values.len();
        let mut placeholders = Vec::new();
        for status in expected {
            values.push(text(status.as_str()));
            placeholders.push(format!("?{}", values.len()));
        }
        let sql = format!(
            "UPDATE images SET {} WHERE id = ?{id_index} AND status IN ({})",
            sets.join(", "),
            placeholders.join(", ")
        );
        let changed = self
            .conn
            .execute(&sql, rusqlite::params_from_iter(values))
            .map_err(|e| db_error("cannot update the image", e))?;
        Ok(changed == 1)
    }

    fn renew(&mut self, id: &str, disk_size: Option<u64>, expires_at: i64) -> Result<bool> {
        let disk_size = disk_size.map(to_sql_size).transpose()?;
        // Without an fsync (four times a second, under the store's lock that a deduplicated
        // registration's look-ups wait for): a renewal lost to a crash only makes the lease
        // of a registration that died with the host expire sooner.
        let changed = self.unsynced(|store| {
            store
                .conn
                .prepare_cached(
                    "UPDATE images SET disk_size = COALESCE(?2, disk_size), lease_expires = ?3 \
                     WHERE id = ?1 AND status = 'creating'",
                )
                .and_then(|mut update| update.execute(params![id, disk_size, expires_at]))
                .map_err(|e| db_error("cannot record progress", e))
        })?;
        Ok(changed == 1)
    }

    fn creating(&mut self) -> Result<Vec<(String, Lease)>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id, lease_pid, lease_host, lease_boot_id, lease_start_time, lease_expires \
                 FROM images WHERE status = 'creating'",
            )
            .map_err(|e| db_error("cannot list images being created", e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Lease {
                        pid: row.get::<_, Option<u32>>(1)?.unwrap_or(0),
                        host: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                        boot_id: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
                        start_time: from_sql_size(row.get::<_, Option<i64>>(4)?.unwrap_or(0))?,
                        expires_at: row.get::<_, Option<i64>>(5)?.unwrap_or(0),
                    },
                ))
            })
            .map_err(|e| db_error("cannot list images being created", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| db_error("cannot list images being created", e))
    }

    fn setting(&mut self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|e| db_error("cannot read a setting", e))
    }

    fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| db_error("cannot write a setting", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::record::{Arch, Mode, SourceType};

    fn record(id: &str) -> ImageRecord {
        ImageRecord {
            id: id.to_string(),
            owner: "acc-aaaaa".to_string(),
            source_type: SourceType::Upload,
            created_on: "2011-05-19T00:00:00Z".to_string(),
            status: Status::Creating,
            name: "Slackware".to_string(),
            description: String::new(),
            arch: Arch::I686,
            mode: Mode::Virtio,
            public: false,
            official: false,
            username: None,
            source: "slackware.img".to_string(),
            virtual_size: 0,
            disk_size: 0,
            compressed_size: 0,
            format: None,
            chunks: 0,
            reason: None,
            digest: None,
            source_sha256: None,
        }
    }

    fn lease() -> Lease {
        Lease {
            pid: 1,
            host: "h".to_string(),
            boot_id: "b".to_string(),
            start_time: 7,
            expires_at: 100,
        }
    }

    #[test]
    fn insert_refuses_duplicate_ids_and_cas_checks_status() {
        let mut store = SqliteStore::in_memory().unwrap();
        assert_eq!(store.schema_version().unwrap() as usize, MIGRATIONS.len());
        assert!(store.insert(&record("img-aaaaa"), &lease()).unwrap());
        assert!(!store.insert(&record("img-aaaaa"), &lease()).unwrap());
        // The same upload again under another id, while the first is creating: refused.
        let busy = store.insert(&record("img-ccccc"), &lease()).unwrap_err();
        assert!(busy.to_string().contains("already being registered"), "{busy}");
        assert_eq!(
            store.creating().unwrap(),
            vec![("img-aaaaa".to_string(), lease())]
        );
        assert!(store.renew("img-aaaaa", Some(4096), 200).unwrap());
        let changes = Changes {
            virtual_size: Some(1 << 20),
            ..Changes::default()
        };
        // Wrong expected status: nothing happens.
        assert!(!store
            .compare_and_set("img-aaaaa", &[Status::Available], Some(Status::Deleted), &changes)
            .unwrap());
        assert!(store
            .compare_and_set(
                "img-aaaaa",
                &[Status::Creating],
                Some(Status::Available),
                &changes
            )
            .unwrap());
        let got = store.get("img-aaaaa").unwrap().unwrap();
        assert_eq!(got.status, Status::Available);
        assert_eq!(got.disk_size, 4096);
        assert_eq!(got.virtual_size, 1 << 20);
        assert!(store.creating().unwrap().is_empty());
        assert!(!store.renew("img-aaaaa", Some(1), 300).unwrap());
        assert!(store.get("img-zzzzz").unwrap().is_none());
    }

    #[test]
    fn settings_round_trip() {
        let mut store = SqliteStore::in_memory().unwrap();
        assert_eq!(store.setting("operator").unwrap(), None);
        store.set_setting("operator", "brightbox").unwrap();
        store.set_setting("operator", "ops").unwrap();
        assert_eq!(store.setting("operator").unwrap().as_deref(), Some("ops"));
    }

    #[test]
    fn reopening_keeps_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        {
            let mut store = SqliteStore::open(&path).unwrap();
            assert!(store.insert(&record("img-bbbbb"), &lease()).unwrap());
        }
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
