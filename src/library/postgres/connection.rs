//! The connection of a [`PostgresStore`]: made at open, made again when the server went
//! away, checked before every write; reads retried once on a new connection; the offset
//! between this host's clock and the server's measured at every connection.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};

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
