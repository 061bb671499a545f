//! Deduplication against real concurrent processes, on a local library (SQLite) and on an
//! `s3://` library (moto) with a PostgreSQL catalog: `imgpack images register` processes of
//! overlapping uploads race `imgpack images gc` in a loop (over frames a destroyed image just
//! released), and then processes are killed with SIGKILL at random moments. Afterwards every
//! available image builds byte-exact, and one `gc` leaves no garbage: no unreferenced row, and
//! exactly one object per row.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::s3::{env_for_port, S3Server, BUCKET};
use imgpack::library::catalog::open_catalog;
use imgpack::library::chunks::parse_chunk_key;
use imgpack::library::CatalogLocation;
use serde_json::Value;

const OWNER: &str = "acc-xxxxx";
const OPERATOR: &str = "brightbox";
const PREFIX: &str = "lib";
const MIB: usize = 1 << 20;
/// Disks are 8 MiB with 4 MiB of data, drawn from a pool of 8 one-MiB blocks.
const DISK: usize = 8 * MIB;

/// A library the processes share: a directory, or a bucket prefix with a PostgreSQL catalog.
struct Env {
    dir: tempfile::TempDir,
    s3: Option<S3Server>,
    catalog: String,
}

impl Env {
    fn local() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let catalog = format!("sqlite:{}", dir.path().join("lib/catalog.db").display());
        fs::create_dir_all(dir.path().join("lib")).unwrap();
        Env {
            dir,
            s3: None,
            catalog,
        }
    }

    fn s3_postgres() -> Option<Env> {
        let catalog = common::postgres::database()?;
        let s3 = S3Server::start()?;
        Some(Env {
            dir: tempfile::tempdir().unwrap(),
            s3: Some(s3),
            catalog,
        })
    }

    fn imgpack(&self, account: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_imgpack"));
        command
            .env("IMGPACK_DEDUP", "on")
            .env("IMGPACK_CATALOG", &self.catalog)
            .env("IMGPACK_ACCOUNT", account)
            .env_remove("IMGPACK_OPERATOR")
            .env_remove("IMGPACK_TEST_HOLD_CREATING_MS")
            .stdin(Stdio::null());
        match &self.s3 {
            Some(s3) => command
                .envs(env_for_port(s3.port()))
                .env("IMGPACK_LIBRARY", format!("s3://{BUCKET}/{PREFIX}")),
            None => command.env("IMGPACK_LIBRARY", self.dir.path().join("lib")),
        };
        command
    }

    fn json(&self, account: &str, args: &[&str]) -> Value {
        let out = self.imgpack(account).args(args).arg("--json").output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().lines().last().unwrap()).unwrap()
    }

    fn upload(&self, name: &str, bytes: &[u8]) {
        let file = self.dir.path().join(format!("{name}.src"));
        fs::write(&file, bytes).unwrap();
        self.json(
            OWNER,
            &["images", "upload", file.to_str().unwrap(), "--name", name],
        );
        fs::remove_file(file).unwrap();
    }

    fn register(&self, source: &str) -> Child {
        self.imgpack(OWNER)
            .args([
                "images", "register", "-a", "x86_64", "-n", source, "-s", source, "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn gc(&self) -> Output {
        self.imgpack(OPERATOR)
            .args(["images", "gc", "--json"])
            .output()
            .unwrap()
    }

    /// Every chunk object: `(sha, gen)`.
    fn chunk_objects(&self) -> Vec<(String, u64)> {
        let keys: Vec<String> = match &self.s3 {
            Some(s3) => s3
                .keys()
                .into_iter()
                .filter_map(|k| k.strip_prefix(&format!("{PREFIX}/")).map(str::to_string))
                .collect(),
            None => walk(&self.dir.path().join("lib"), "chunks"),
        };
        keys.iter().filter_map(|k| parse_chunk_key(k)).collect()
    }

    /// The images listed as available, with their source names.
    fn available(&self) -> Vec<(String, String)> {
        let listed = self.json(OWNER, &["images", "list"]);
        listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == "available")
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["source"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// Files under `root/prefix`, as keys relative to `root`.
fn walk(root: &Path, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![prefix.to_string()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let key = format!("{dir}/{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                pending.push(key);
            } else {
                found.push(key);
            }
        }
    }
    found
}

/// Content `k`: blocks k..k+4 of the pool (mod 8) at MiBs 1..=4, so neighbours overlap.
fn content(k: usize) -> Vec<u8> {
    let mut disk = vec![0u8; DISK];
    for (slot, block) in (k..k + 4).enumerate() {
        let mut rng = common::Rng::new((block % 8) as u64 + 1);
        let bytes = common::random(&mut rng, MIB);
        disk[(slot + 1) * MIB..(slot + 2) * MIB].copy_from_slice(&bytes);
    }
    disk
}

/// The content index a source name was made from (`c<k>-...`).
fn content_of(source: &str) -> usize {
    source[1..source.find('-').unwrap()].parse().unwrap()
}

/// Every available image builds to its content, byte for byte; then one gc leaves exactly one
/// object per catalog row and no unreferenced row.
fn check_everything(env: &Env) {
    let available = env.available();
    assert!(!available.is_empty());
    let mut expected: HashMap<usize, Vec<u8>> = HashMap::new();
    for (id, source) in &available {
        let disk = env.dir.path().join("built.raw");
        env.json(
            OWNER,
            &[
                "images",
                "build",
                id,
                "--disk",
                disk.to_str().unwrap(),
                "--disk-size",
                "8M",
            ],
        );
        let want = expected
            .entry(content_of(source))
            .or_insert_with(|| content(content_of(source)));
        assert!(
            fs::read(&disk).unwrap() == *want,
            "build of {id} ({source}) differs"
        );
        fs::remove_file(&disk).unwrap();
    }
    let out = env.gc();
    assert!(
        out.status.success(),
        "gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut store = open_catalog(&env.catalog.parse::<CatalogLocation>().unwrap()).unwrap();
    assert!(store.unreferenced_chunks(10).unwrap().is_empty());
    let mut rows = store.chunk_keys().unwrap();
    let mut objects = env.chunk_objects();
    rows.sort();
    objects.sort();
    assert_eq!(rows, objects, "one object per row, and no object without one");
}

fn register_while_gc_runs(env: &Env) {
    // An image of content 0 is destroyed first: its frames are released, and the racing
    // registrations of contents 0-3 (which share them) race the collector for them.
    env.upload("c0-first", &content(0));
    let first = env.json(
        OWNER,
        &[
            "images", "register", "-a", "x86_64", "-n", "first", "-s", "c0-first",
        ],
    );
    let first_id = first["id"].as_str().unwrap().to_string();
    env.json(OWNER, &["images", "destroy", &first_id]);
    let sources: Vec<String> = (0..6).map(|i| format!("c{}-{i}", i % 4)).collect();
    for source in &sources {
        env.upload(source, &content(content_of(source)));
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let collector = scope.spawn(|| {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = env.gc();
                assert!(
                    out.status.success(),
                    "gc: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                runs += 1;
            }
            runs
        });
        let mut failures = Vec::new();
        for pair in sources.chunks(3) {
            let children: Vec<Child> = pair.iter().map(|s| env.register(s)).collect();
            for child in children {
                let out = child.wait_with_output().unwrap();
                if !out.status.success() {
                    failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
            }
        }
        // Stop the collector before any assertion, or a failed registration would leave
        // the scope waiting for it forever.
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(collector.join().unwrap() > 0);
        assert!(failures.is_empty(), "register: {failures:?}");
    });
    assert_eq!(env.available().len(), sources.len());
    check_everything(env);
}

fn kill_register_and_gc_at_random_moments(env: &Env) {
    let mut rng = common::Rng::new(17);
    for round in 0..4 {
        let source = format!("c{}-kill{round}", round % 4);
        env.upload(&source, &content(round % 4));
        let mut register = env.register(&source);
        let mut gc = env
            .imgpack(OPERATOR)
            .args(["images", "gc"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(u64::from(rng.byte()) * 3));
        let _ = register.kill(); // SIGKILL
        let _ = register.wait();
        std::thread::sleep(Duration::from_millis(u64::from(rng.byte())));
        let _ = gc.kill();
        let _ = gc.wait();
    }
    // One registration that completes, so something is available whatever the kills hit.
    env.upload("c1-last", &content(1));
    let out = env.register("c1-last").wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_everything(env);
}

#[test]
fn local_sqlite_registrations_race_gc() {
    register_while_gc_runs(&Env::local());
}

#[test]
fn local_sqlite_kill_9() {
    kill_register_and_gc_at_random_moments(&Env::local());
}

#[test]
fn s3_postgres_registrations_race_gc() {
    let Some(env) = Env::s3_postgres() else { return };
    register_while_gc_runs(&env);
}

#[test]
fn s3_postgres_kill_9() {
    let Some(env) = Env::s3_postgres() else { return };
    kill_register_and_gc_at_random_moments(&env);
}
