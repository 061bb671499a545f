//! [`PostgresStore`]: the catalog on a PostgreSQL server, so that registrars and builders on
//! many hosts share one library. Same tables, columns, checks and compare-and-swap updates as
//! [`SqliteStore`](super::sqlite::SqliteStore); every write is one statement, so a connection
//! lost half-way applies all of it or nothing.
//!
//! | table            | columns                                                             |
//! |------------------|---------------------------------------------------------------------|
//! | `images`         | as in SQLite (sizes `BIGINT`, flags `BOOLEAN`), leases included     |
//! | `settings`       | `key`, `value`                                                      |
//! | `imgpack_schema` | `version`: the number of [`MIGRATIONS`] applied                     |
//!
//! Migrations run inside one transaction holding a transaction-level advisory lock
//! ([`MIGRATION_LOCK`]), so many processes opening a fresh catalog at once apply each step
//! exactly once; the others wait and then find the schema current.
//!
//! The connection is made again, transparently, when the server went away (a restart): reads
//! are retried once on the new connection; a write whose connection was lost is reported as
//! an error, never retried, because it may or may not have committed and the caller must
//! re-read (compare-and-swap makes that safe).
//!
//! Lease expiries are kept in the server's clock: the offset between this host's clock and
//! the server's is measured at every connection and applied on the way in and out, so hosts
//! whose clocks disagree still agree on when a lease has expired.

use std::str::FromStr;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row};

use super::record::{ImageRecord, Status};
use super::store::{CatalogStore, Changes, Lease};
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
    super::store::ONE_REGISTRATION_PER_UPLOAD,
];

/// The advisory lock key held while migrating ("imgpack" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x0069_6d67_7061_636b;

/// How long connecting may take before it is an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const COLUMNS: &str = "id, owner, source_type, created_on, status, name, description, arch, \
    mode, public, official, username, source, virtual_size, disk_size, compressed_size, format, \
    chunks, reason";

/// The catalog in a PostgreSQL database.
pub struct PostgresStore {
    config: Config,
    /// The server as shown in messages: never the password.
    shown: String,
    client: Option<Client>,
    /// Server clock minus this host's clock, in seconds, measured at connection.
    clock_offset: i64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("server", &self.shown)
            .finish()
    }
}

/// A connection string as it may be shown: user, hosts, ports and database, never a password.
pub fn describe_config(config: &Config) -> String {
    let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let name = match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(index).or(config.get_ports().first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let database = config.get_dbname().unwrap_or("");
    format!("postgres://{user}{}/{database}", hosts.join(","))
}

impl PostgresStore {
    /// Connects to the server named by `url` (`postgres://user:password@host:port/database`)
    /// and brings the schema up to date.
    pub fn open(url: &str) -> Result<PostgresStore> {
        let mut config = Config::from_str(url).map_err(|e| {
            Error::invalid_argument("the PostgreSQL catalog's connection string is not valid").with_source(e)
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // Notices a dead server within about a minute instead of the kernel's two hours.
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("imgpack");
        let shown = describe_config(&config);
        let mut store = PostgresStore {
            config,
            shown,
            client: None,
            clock_offset: 0,
        };
        store.connect()?;
        store.migrate()?;
        Ok(store)
    }

    fn error(&self, what: &str, e: postgres::Error) -> Error {
        let message = if connection_lost(&e) {
            format!(
                "catalog database {}: {what}: the connection was lost (a statement in flight is \
                 applied whole or not at all; the next call connects again)",
                self.shown
            )
        } else {
            format!("catalog database {}: {what}", self.shown)
        };
        Error::new(ErrorKind::Io, message).with_source(e)
    }

    fn connect(&mut self) -> Result<&mut Client> {
        let mut client = self.config.connect(NoTls).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("catalog database {}: cannot connect", self.shown),
            )
            .with_source(e)
        })?;
        let before = precise_now();
        let server_now: f64 = client
            .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| self.error("cannot read the server's clock", e))?;
        let local_now = (before + precise_now()) / 2.0;
        // Rounded to whole seconds, as leases are kept: hosts in step measure 0.
        self.clock_offset = (server_now - local_now).round() as i64;
        Ok(self.client.insert(client))
    }

    /// The open connection, made again if the server closed it (a restart).
    fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            return self.connect();
        }
        Ok(self.client.as_mut().expect("checked above"))
    }

    /// Runs `work` on the connection; a read that finds the connection lost is retried once
    /// on a new one.
    fn read<T>(
        &mut self,
        what: &str,
        mut work: impl FnMut(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        match work(self.client()?) {
            Err(e) if connection_lost(&e) => {
                self.client = None;
                work(self.client()?).map_err(|e| self.failed(what, e))
            }
            result => result.map_err(|e| self.failed(what, e)),
        }
    }

    /// Runs `work` (a write) on the connection once, never twice: a write whose reply was lost
    /// may have committed. The connection is checked first with an empty query, so a server
    /// restarted since the last call costs a reconnection, not a failed write.
    fn write<T>(
        &mut self,
        what: &str,
        work: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let result = work(self.live_client()?);
        result.map_err(|e| self.failed(what, e))
    }

    /// The connection, checked with an empty query and made again if it is gone.
    fn live_client(&mut self) -> Result<&mut Client> {
        if self.client()?.is_valid(CONNECT_TIMEOUT).is_err() {
            self.client = None;
        }
        self.client()
    }

    /// The error for a failed statement; forgets a connection that is gone so the next call
    /// makes a new one.
    fn failed(&mut self, what: &str, e: postgres::Error) -> Error {
        if connection_lost(&e) || self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        self.error(what, e)
    }

    /// The schema version of the database.
    pub fn schema_version(&mut self) -> Result<u32> {
        let version: i32 = self.read("cannot read the schema version", |client| {
            client
                .query_one("SELECT version FROM imgpack_schema", &[])
                .and_then(|row| row.try_get(0))
        })?;
        Ok(u32::try_from(version).unwrap_or(0))
    }

    fn migrate(&mut self) -> Result<()> {
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

/// Whether `e` means the connection is gone: closed, a socket error, or the server shutting
/// down (`pg_ctl stop`, a crash).
fn connection_lost(e: &postgres::Error) -> bool {
    let shutdown = [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
    ];
    e.is_closed()
        || e.code().is_some_and(|code| shutdown.contains(code))
        || std::error::Error::source(e).is_some_and(|source| source.is::<std::io::Error>())
}

/// This host's clock in Unix seconds, with its fraction.
fn precise_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

fn to_sql_size(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::invalid_argument(format!("size {value} is too large")))
}

fn size_column(row: &Row, index: usize) -> Result<u64> {
    let value: i64 = row.try_get(index).map_err(column_error)?;
    u64::try_from(value).map_err(|_| catalog_corrupt(format!("column {index} holds {value}")))
}

fn parse_column<T: FromStr<Err = Error>>(row: &Row, index: usize) -> Result<T> {
    let text: String = row.try_get(index).map_err(column_error)?;
    text.parse()
}

fn column_error(e: postgres::Error) -> Error {
    catalog_corrupt("a column has an unexpected type").with_source(e)
}

fn catalog_corrupt(message: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("catalog database: {}", message.into()),
    )
}

fn record_from_row(row: &Row) -> Result<ImageRecord> {
    let get = |index: usize| row.try_get(index).map_err(column_error);
    Ok(ImageRecord {
        id: get(0)?,
        owner: get(1)?,
        source_type: parse_column(row, 2)?,
        created_on: get(3)?,
        status: parse_column(row, 4)?,
        name: get(5)?,
        description: get(6)?,
        arch: parse_column(row, 7)?,
        mode: parse_column(row, 8)?,
        public: row.try_get(9).map_err(column_error)?,
        official: row.try_get(10).map_err(column_error)?,
        username: row.try_get(11).map_err(column_error)?,
        source: get(12)?,
        virtual_size: size_column(row, 13)?,
        disk_size: size_column(row, 14)?,
        compressed_size: size_column(row, 15)?,
        format: row.try_get(16).map_err(column_error)?,
        chunks: size_column(row, 17)?,
        reason: row.try_get(18).map_err(column_error)?,
    })
}

/// A statement parameter of any type.
type Value = Box<dyn ToSql + Sync>;

/// The `SET` list and values of a compare-and-swap, numbered from `$1`.
fn assignments(to: Option<Status>, changes: &Changes) -> Result<(Vec<String>, Vec<Value>)> {
    let mut sets: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut set = |column: &str, value: Value| {
        values.push(value);
        sets.push(format!("{column} = ${}", values.len()));
    };
    if let Some(status) = to {
        set("status", Box::new(status.as_str()));
        if status != Status::Creating {
            set("lease_pid", Box::new(None::<i64>));
            set("lease_host", Box::new(None::<String>));
            set("lease_boot_id", Box::new(None::<String>));
            set("lease_start_time", Box::new(None::<i64>));
            set("lease_expires", Box::new(None::<i64>));
        }
    }
    if let Some(v) = &changes.name {
        set("name", Box::new(v.clone()));
    }
    if let Some(v) = &changes.description {
        set("description", Box::new(v.clone()));
    }
    if let Some(v) = changes.arch {
        set("arch", Box::new(v.as_str()));
    }
    if let Some(v) = changes.mode {
        set("mode", Box::new(v.as_str()));
    }
    if let Some(v) = changes.public {
        set("public", Box::new(v));
    }
    if let Some(v) = changes.official {
        set("official", Box::new(v));
    }
    if let Some(v) = &changes.username {
        set("username", Box::new(v.clone()));
    }
    for (column, v) in [
        ("virtual_size", changes.virtual_size),
        ("disk_size", changes.disk_size),
        ("compressed_size", changes.compressed_size),
        ("chunks", changes.chunks),
    ] {
        if let Some(v) = v {
            set(column, Box::new(to_sql_size(v)?));
        }
    }
    if let Some(v) = &changes.format {
        set("format", Box::new(v.clone()));
    }
    if let Some(v) = &changes.reason {
        set("reason", Box::new(v.clone()));
    }
    Ok((sets, values))
}

impl CatalogStore for PostgresStore {
    fn insert(&mut self, record: &ImageRecord, lease: &Lease) -> Result<bool> {
        let sizes = [
            to_sql_size(record.virtual_size)?,
            to_sql_size(record.disk_size)?,
            to_sql_size(record.compressed_size)?,
            to_sql_size(record.chunks)?,
            to_sql_size(lease.start_time)?,
        ];
        let pid = i64::from(lease.pid);
        let expires = lease.expires_at.saturating_add(self.clock_offset);
        let sql = format!(
            "INSERT INTO images ({COLUMNS}, lease_pid, lease_host, lease_boot_id, \
             lease_start_time, lease_expires) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24) \
             ON CONFLICT (id) DO NOTHING"
        );
        let result = self.live_client()?.execute(
            &sql,
            &[
                &record.id,
                &record.owner,
                &record.source_type.as_str(),
                &record.created_on,
                &record.status.as_str(),
                &record.name,
                &record.description,
                &record.arch.as_str(),
                &record.mode.as_str(),
                &record.public,
                &record.official,
                &record.username,
                &record.source,
                &sizes[0],
                &sizes[1],
                &sizes[2],
                &record.format,
                &sizes[3],
                &record.reason,
                &pid,
                &lease.host,
                &lease.boot_id,
                &sizes[4],
                &expires,
            ],
        );
        match result {
            Ok(inserted) => Ok(inserted == 1),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(super::store::upload_busy(&record.source))
            }
            Err(e) => Err(self.failed("cannot add the image", e)),
        }
    }

    fn get(&mut self, id: &str) -> Result<Option<ImageRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM images WHERE id = $1");
        let row = self.read("cannot read the image", |client| client.query_opt(&sql, &[&id]))?;
        row.as_ref().map(record_from_row).transpose()
    }

    fn list(&mut self) -> Result<Vec<ImageRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM images WHERE status != 'deleted'");
        let rows = self.read("cannot list images", |client| client.query(&sql, &[]))?;
        rows.iter().map(record_from_row).collect()
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
        let (sets, mut values) = assignments(to, changes)?;
        if sets.is_empty() {
            // Nothing to write: answer whether the condition holds.
            return Ok(self
                .get(id)?
                .is_some_and(|record| expected.contains(&record.status)));
        }
        let expected: Vec<String> = expected.iter().map(|s| s.as_str().to_string()).collect();
        values.push(Box::new(id.to_string()));
        values.push(Box::new(expected));
        let sql = format!(
            "UPDATE images SET {} WHERE id = ${} AND status = ANY(${})",
            sets.join(", "),
            values.len() - 1,
            values.len()
        );
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
        let changed = self.write("cannot update the image", |client| client.execute(&sql, &params))?;
        Ok(changed == 1)
    }

    fn renew(&mut self, id: &str, disk_size: Option<u64>, expires_at: i64) -> Result<bool> {
        let disk_size = disk_size.map(to_sql_size).transpose()?;
        let expires = expires_at.saturating_add(self.clock_offset);
        let changed = self.write("cannot record progress", |client| {
            client.execute(
                "UPDATE images SET disk_size = COALESCE($2, disk_size), lease_expires = $3 \
                 WHERE id = $1 AND status = 'creating'",
                &[&id, &disk_size, &expires],
            )
        })?;
        Ok(changed == 1)
    }

    fn creating(&mut self) -> Result<Vec<(String, Lease)>> {
        let rows = self.read("cannot list images being created", |client| {
            client.query(
                "SELECT id, lease_pid, lease_host, lease_boot_id, lease_start_time, lease_expires \
                 FROM images WHERE status = 'creating'",
                &[],
            )
        })?;
        let offset = self.clock_offset;
        rows.iter()
            .map(|row| {
                let get_i64 = |index: usize| -> Result<i64> {
                    Ok(row
                        .try_get::<_, Option<i64>>(index)
                        .map_err(column_error)?
                        .unwrap_or(0))
                };
                let get_text = |index: usize| -> Result<String> {
                    Ok(row
                        .try_get::<_, Option<String>>(index)
                        .map_err(column_error)?
                        .unwrap_or_default())
                };
                let lease = Lease {
                    pid: u32::try_from(get_i64(1)?).unwrap_or(0),
                    host: get_text(2)?,
                    boot_id: get_text(3)?,
                    start_time: u64::try_from(get_i64(4)?).unwrap_or(0),
                    // Back into this host's clock, which the caller compares it with.
                    expires_at: get_i64(5)?.saturating_sub(offset),
                };
                Ok((row.try_get(0).map_err(column_error)?, lease))
            })
            .collect()
    }

    fn setting(&mut self, key: &str) -> Result<Option<String>> {
        let row = self.read("cannot read a setting", |client| {
            client.query_opt("SELECT value FROM settings WHERE key = $1", &[&key])
        })?;
        row.map(|row| row.try_get(0).map_err(column_error)).transpose()
    }

    fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.write("cannot write a setting", |client| {
            client.execute(
                "INSERT INTO settings (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
        })
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_connection_strings_never_hold_the_password() {
        let config = Config::from_str("postgres://reg:s3cret@db.example:5433/library").unwrap();
        let shown = describe_config(&config);
        assert_eq!(shown, "postgres://reg@db.example:5433/library");
        let config = Config::from_str("host=/run/pg port=5999 user=x password=s3cret dbname=d").unwrap();
        assert!(!describe_config(&config).contains("s3cret"));
    }

    #[test]
    fn a_bad_connection_string_does_not_echo_it() {
        let error = PostgresStore::open("postgres://reg:s3cret@db:notaport/x").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidArgument);
        let mut text = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(c) = cause {
            text.push_str(&c.to_string());
            cause = c.source();
        }
        assert!(!text.contains("s3cret"), "{text}");
    }
}
