//! Throwaway PostgreSQL clusters for tests: `initdb` and `pg_ctl` (as the `postgres` user when
//! running as root, since the server refuses to run as root) in a temporary directory, with
//! its socket there, a free loopback port and fsync off.
//!
//! [`shared`] starts one cluster per test binary, on first use; [`database`] gives each test
//! its own database in it. A test that stops or restarts the server starts its own
//! [`Cluster`]. Every cluster has a watchdog process that stops it and removes its directory
//! when the test binary exits, however it exits (even by SIGKILL), so no server outlives the
//! tests; a [`Cluster`] that is dropped stops at once.
//!
//! Missing server binaries are a skip ([`super::oracle::skip`]), and so a failure under
//! `IMGPACK_REQUIRE_ORACLES=1`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// A running PostgreSQL cluster.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The cluster is stopped and removed when this handle drops (not for [`shared`]).
    owned: bool,
}

/// Where the server binaries are: the newest `/usr/lib/postgresql/*/bin` (Debian), else the
/// directory of an `initdb` on the PATH.
pub fn server_binaries() -> Option<PathBuf> {
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    debian.sort_by_key(|bin| {
        let version = bin.parent().and_then(Path::file_name);
        version
            .and_then(|v| v.to_str())
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(bin) = debian.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A command run as the cluster's owner: `postgres` under root, else the current user.
fn as_owner(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    listener.local_addr().unwrap().port()
}

impl Cluster {
    /// Starts a new cluster of its own (stopped when dropped), or `None` after a skip when
    /// the server binaries are missing.
    pub fn start() -> Option<Cluster> {
        match Cluster::try_start() {
            Ok(cluster) => Some(cluster),
            Err(why) => {
                super::oracle::skip(&why);
                None
            }
        }
    }

    /// A new cluster, or why it cannot be had here (missing binaries: a skip); panics if the
    /// binaries are there but the server does not start.
    fn try_start() -> Result<Cluster, String> {
        let bin = server_binaries()
            .ok_or_else(|| "PostgreSQL server binaries (initdb, pg_ctl) not found".to_string())?;
        if running_as_root() && !super::oracle::on_path("runuser") {
            return Err("runuser not found (needed to run PostgreSQL as root)".to_string());
        }
        Ok(Cluster::init(bin).unwrap_or_else(|e| panic!("starting PostgreSQL: {e}")))
    }

    fn init(bin: PathBuf) -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("imgpack-pg")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        if running_as_root() {
            let mut chown = Command::new("chown");
            chown.arg("postgres:postgres").arg(&dir);
            run(chown, "chown")?;
        }
        let mut initdb = as_owner(&bin.join("initdb"));
        initdb.arg("-D").arg(dir.join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        run(initdb, "initdb")?;
        let mut cluster = Cluster {
            bin,
            dir,
            port: 0,
            owned: true,
        };
        cluster.spawn_watchdog()?;
        // A port found free may be taken before the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Stops the cluster and removes its directory once this test process is gone.
    fn spawn_watchdog(&self) -> Result<(), String> {
        let stop = format!(
            "{} {} -D {} -m immediate -w stop",
            if running_as_root() {
                "runuser -u postgres --"
            } else {
                ""
            },
            self.bin.join("pg_ctl").display(),
            self.dir.join("data").display()
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|_| ())
            .map_err(|e| format!("starting the watchdog: {e}"))
    }

    fn start_server(&self) -> Result<(), String> {
        let mut pg_ctl = as_owner(&self.bin.join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
                 -c synchronous_commit=off -c max_connections=200",
                self.dir.display(),
                self.port
            ))
            .arg("start");
        run(pg_ctl, "pg_ctl start")
    }

    /// Stops the server (fast shutdown: open connections are closed), keeping its data.
    pub fn stop(&self) {
        let mut pg_ctl = as_owner(&self.bin.join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(pg_ctl, "pg_ctl stop").unwrap();
    }

    /// Starts the server again on the same port.
    pub fn restart(&self) {
        self.start_server().unwrap();
    }

    /// The connection URL of `database` (over TCP on loopback; no password needed).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database; returns its URL.
    pub fn create_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        static SERIAL: Mutex<()> = Mutex::new(());
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut client = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .expect("connecting to the test cluster");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("creating a test database");
        self.url(&name)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            let mut pg_ctl = as_owner(&self.bin.join("pg_ctl"));
            pg_ctl
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = run(pg_ctl, "pg_ctl stop");
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The test binary's one shared cluster, started on first use; `None` after a skip (every
/// caller that gets `None` records its own skip).
pub fn shared() -> Option<&'static Cluster> {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    let started = SHARED.get_or_init(|| {
        Cluster::try_start().map(|mut cluster| {
            // Lives as long as the binary; its watchdog stops it.
            cluster.owned = false;
            cluster
        })
    });
    match started {
        Ok(cluster) => Some(cluster),
        Err(why) => {
            super::oracle::skip(why);
            None
        }
    }
}

/// A fresh database of its own for the calling test, in the shared cluster; `None` after a skip.
pub fn database() -> Option<String> {
    shared().map(Cluster::create_database)
}
