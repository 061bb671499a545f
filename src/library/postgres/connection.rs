//! The connection of a [`PostgresStore`]: made at open, made again when the server went
//! away, checked before every write; reads retried once on a new connection; the offset
//! between this host's clock and the server's measured at every connection.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, NoTls, Statement};

use super::PostgresStore;
use crate::error::{Error, ErrorKind, Result};

/// How long connecting may take before it is an error.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

    pub(super) fn connect(&mut self) -> Result<&mut Client> {
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
        self.statements.clear();
        Ok(self.client.insert(client))
    }

    /// The open connection, made again if the server closed it (a restart).
    pub(super) fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            return self.connect();
        }
        Ok(self.client.as_mut().expect("checked above"))
    }

    /// Runs `work` on the connection; a read that finds the connection lost is retried once
    /// on a new one.
    pub(super) fn read<T>(
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
    pub(super) fn write<T>(
        &mut self,
        what: &str,
        work: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let result = work(self.live_client()?);
        result.map_err(|e| self.failed(what, e))
    }

    /// Statement `sql`, prepared on the current connection once.
    fn prepared(&mut self, sql: &'static str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let client = self.client.as_mut().expect("called with a connection");
        let statement = client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Runs `work` with the statements `sql`, prepared once per connection, as
    /// [`write`](Self::write) runs its work: once, on a connection checked first.
    pub(super) fn write_prepared<T, const N: usize>(
        &mut self,
        what: &str,
        sql: [&'static str; N],
        work: impl FnOnce(&mut Client, [Statement; N]) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        self.live_client()?;
        let result = sql
            .iter()
            .map(|sql| self.prepared(sql))
            .collect::<std::result::Result<Vec<_>, _>>()
            .and_then(|statements| {
                let statements: [Statement; N] = statements.try_into().expect("one per statement");
                work(self.client.as_mut().expect("checked above"), statements)
            });
        result.map_err(|e| self.failed(what, e))
    }

    /// Runs the single statement `sql`, prepared once per connection, via `work`; where the
    /// connection is found lost, on a new connection once more. Only for a statement that
    /// may run twice: its first run may have committed before its reply was lost.
    pub(super) fn run_repeatable<T>(
        &mut self,
        what: &str,
        sql: &'static str,
        mut work: impl FnMut(&mut Client, &Statement) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        match self.run_prepared(sql, &mut work)? {
            Err(e) if connection_lost(&e) => {
                self.client = None;
                let second = self.run_prepared(sql, &mut work)?;
                second.map_err(|e| self.failed(what, e))
            }
            result => result.map_err(|e| self.failed(what, e)),
        }
    }

    /// One run of [`run_repeatable`](Self::run_repeatable): an error connecting is final, a
    /// statement's error is the caller's to judge.
    fn run_prepared<T>(
        &mut self,
        sql: &'static str,
        work: &mut impl FnMut(&mut Client, &Statement) -> std::result::Result<T, postgres::Error>,
    ) -> Result<std::result::Result<T, postgres::Error>> {
        self.client()?;
        Ok(self
            .prepared(sql)
            .and_then(|statement| work(self.client.as_mut().expect("made above"), &statement)))
    }

    /// The connection, checked with an empty query and made again if it is gone.
    pub(super) fn live_client(&mut self) -> Result<&mut Client> {
        if self.client()?.is_valid(CONNECT_TIMEOUT).is_err() {
            self.client = None;
        }
        self.client()
    }

    /// The error for a failed statement; forgets a connection that is gone so the next call
    /// makes a new one.
    pub(super) fn failed(&mut self, what: &str, e: postgres::Error) -> Error {
        if connection_lost(&e) || self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        self.error(what, e)
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
