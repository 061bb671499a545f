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
//!
//! | file            | what                                                              |
//! |-----------------|-------------------------------------------------------------------|
//! | `mod.rs`        | [`PostgresStore`] and its [`CatalogStore`] statements              |
//! | `connection.rs` | connecting, reconnecting, reads and writes, the clock offset      |
//! | `schema.rs`     | [`MIGRATIONS`] and the locked migration                           |
//! | `rows.rs`       | rows to records, and the assignments of a compare-and-swap        |

mod chunks;
mod connection;
mod rows;
mod schema;

use std::str::FromStr;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config};

use super::record::{catalog_error, ImageRecord, Status};
use super::store::{CatalogStore, Changes, Lease};
use crate::error::{Error, Result};

pub use connection::describe_config;
use connection::CONNECT_TIMEOUT;
use rows::{assignments, column_error, record_from_row, to_sql_size, COLUMNS};
pub use schema::{MIGRATIONS, MIGRATION_LOCK};

/// The catalog in a PostgreSQL database.
pub struct PostgresStore {
    config: Config,
    /// The server as shown in messages: never the password.
    shown: String,
    client: Option<Client>,
    /// Statements prepared on `client`, by their SQL (a registration runs a few statements
    /// once per chunk; preparing each time would double its round trips). Emptied whenever a
    /// new connection is made.
    statements: std::collections::HashMap<&'static str, postgres::Statement>,
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
            statements: std::collections::HashMap::new(),
            clock_offset: 0,
        };
        store.connect()?;
        store.migrate()?;
        Ok(store)
    }
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
             $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26) \
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
                &record.digest,
                &record.source_sha256,
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

    fn claim_upload(&mut self, id: &str, identity: &str) -> Result<Option<String>> {
        let result = self.live_client()?.execute(
            "UPDATE images SET upload_identity = $2 WHERE id = $1 AND status = 'creating'",
            &[&id, &identity],
        );
        match result {
            Ok(1) => Ok(None),
            Ok(_) => Err(catalog_error(format!(
                "{id}: the catalog no longer expects this registration"
            ))),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                let row = self.read("cannot find the image of the upload", |client| {
                    client.query_one(
                        "SELECT id FROM images WHERE upload_identity = $2 AND status <> 'failed' \
                         AND owner = (SELECT owner FROM images WHERE id = $1)",
                        &[&id, &identity],
                    )
                })?;
                Ok(Some(row.try_get(0).map_err(column_error)?))
            }
            Err(e) => Err(self.failed("cannot record the upload of the image", e)),
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
    use crate::error::ErrorKind;

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
