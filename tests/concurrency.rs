//! Many registrars, one library: real `imgpack images` processes sharing one directory and
//! one PostgreSQL catalog (a throwaway cluster, see `common/postgres.rs`). Two requests for
//! one upload, four registrars racing over eight uploads, a registrar killed with SIGKILL,
//! the server restarted or stopped under a registration, and eight processes migrating a
//! fresh catalog at once.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use common::postgres::{database, Cluster};
use imgpack::library::catalog::open_catalog;
use imgpack::library::{CatalogLocation, Status};

const OWNER: &str = "acc-xxxxx";

/// A library directory and the catalog URL its processes share.
struct Shared {
    dir: tempfile::TempDir,
    catalog: String,
}

impl Shared {
    fn new(catalog: String) -> Shared {
        Shared {
            dir: tempfile::tempdir().unwrap(),
            catalog,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `imgpack images` for OWNER on this library and catalog (the catalog from the
    /// environment, as a registrar service would configure it).
    fn imgpack(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_imgpack"));
        command
            .env("IMGPACK_LIBRARY", self.path())
            .env("IMGPACK_CATALOG", &self.catalog)
            .env("IMGPACK_ACCOUNT", OWNER)
            .env_remove("IMGPACK_OPERATOR")
            .env_remove("IMGPACK_TEST_HOLD_CREATING_MS")
            .env_remove("IMGPACK_TEST_HOLD_BEFORE_REMOVE_MS")
            .arg("images");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.imgpack().args(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(&[args, &["--json"]].concat());
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    }

    fn register_args(source: &str) -> Vec<String> {
        ["register", "-a", "x86_64", "-n", source, "-s", source, "--json"]
            .map(String::from)
            .to_vec()
    }

    /// A registration that holds its `creating` record for `hold_ms` before converting;
    /// returns the process and the id it printed.
    fn register_held(&self, source: &str, hold_ms: u64) -> (Child, String) {
        let mut child = self
            .imgpack()
            .env("IMGPACK_TEST_HOLD_CREATING_MS", hold_ms.to_string())
            .args(Shared::register_args(source))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        // The rest (the final record) is read away, so the process never meets a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let creating: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(creating["status"], "creating");
        (child, creating["id"].as_str().unwrap().to_string())
    }

    /// A raw disk upload: `size` bytes with 512 KiB of noise at 1 MiB.
    fn upload(&self, name: &str, size: u64, seed: u64) -> PathBuf {
        let dir = self.path().join("incoming").join(OWNER);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let file = fs::File::create(&path).unwrap();
        file.set_len(size).unwrap();
        let mut bytes = vec![0u8; 512 << 10];
        common::Rng::new(seed).fill(&mut bytes);
        std::os::unix::fs::FileExt::write_all_at(&file, &bytes, 1 << 20).unwrap();
        path
    }

    fn archives(&self) -> usize {
        fs::read_dir(self.path().join("images")).unwrap().count()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn two_requests_for_one_upload_register_it_once() {
    let Some(catalog) = database() else { return };
    let lib = Shared::new(catalog);
    let source = lib.upload("disk.img", 4 << 20, 1);
    let (first, id) = lib.register_held("disk.img", 1500);
    let second = lib
        .imgpack()
        .args(Shared::register_args("disk.img"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let why = stderr(&second);
    assert!(why.contains("\"disk.img\" is already being registered"), "{why}");
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let images = lib.json(&["list", "--show-all"]);
    let images = images.as_array().unwrap();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["id"], id.as_str());
    assert_eq!(images[0]["status"], "available");
    assert!(!source.exists());
    assert_eq!(lib.archives(), 1);
}

/// The window the `creating`-only index leaves open: registrar A's image is `available` but
/// A has not yet removed the upload (held there by a test-only variable) when registrar B
/// opens the same upload and inserts its own `creating` record. The upload's identity in the
/// catalog refuses B: one upload, one image.
#[test]
fn an_upload_opened_just_before_its_registration_removed_it_is_refused() {
    // Local directory and SQLite; `library_s3.rs` runs the same on S3 and PostgreSQL.
    let mut lib = Shared::new(String::new());
    lib.catalog = format!("sqlite:{}", lib.path().join("catalog.db").display());
    let source = lib.upload("twice.img", 4 << 20, 9);
    let mut first = lib
        .imgpack()
        .env("IMGPACK_TEST_HOLD_BEFORE_REMOVE_MS", "8000")
        .args(Shared::register_args("twice.img"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(first.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let id = serde_json::from_str::<Value>(&line).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while lib.json(&["show", &id])["status"] != "available" {
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never became available"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(source.exists(), "the hold did not keep the upload");
    let second = lib.run(
        &Shared::register_args("twice.img")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!second.status.success(), "registered twice");
    let why = stderr(&second);
    assert!(
        why.contains(&format!("\"twice.img\" was already registered as {id}")),
        "{why}"
    );
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let images = lib.json(&["list", "--show-all"]);
    assert_eq!(images.as_array().unwrap().len(), 1, "{images}");
    assert_eq!(images[0]["id"], id.as_str());
    assert_eq!(lib.archives(), 1);
    assert!(!source.exists());
    assert_eq!(fs::read_dir(lib.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn four_registrars_register_eight_uploads_each_once() {
    let Some(catalog) = database() else { return };
    let lib = Shared::new(catalog);
    let names: Vec<String> = (0..8).map(|n| format!("disk{n}.img")).collect();
    for (n, name) in names.iter().enumerate() {
        lib.upload(name, 4 << 20, n as u64);
    }
    // Each registrar goes through every upload, starting at a different one, as registrars
    // handed the same queue would: every upload is requested by all four.
    let outcomes: Vec<(String, Output)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|registrar| {
                let (lib, names) = (&lib, &names);
                scope.spawn(move || {
                    (0..names.len())
                        .map(|step| {
                            let name = &names[(registrar * 2 + step) % names.len()];
                            (
                                name.clone(),
                                lib.run(
                                    &Shared::register_args(name)
                                        .iter()
                                        .map(String::as_str)
                                        .collect::<Vec<_>>(),
                                ),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let mut registered: Vec<&str> = Vec::new();
    for (name, out) in &outcomes {
        if out.status.success() {
            registered.push(name);
        } else {
            let why = stderr(out);
            assert!(
                why.contains("already being registered")
                    || why.contains("there is no file")
                    || why.contains("was already registered as"),
                "{name}: an unexpected failure: {why}"
            );
        }
    }
    registered.sort();
    assert_eq!(registered, names.iter().map(String::as_str).collect::<Vec<_>>());
    let images = lib.json(&["list", "--show-all"]);
    let mut sources: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|image| {
            assert_eq!(image["status"], "available", "{image}");
            image["source"].as_str().unwrap()
        })
        .collect();
    sources.sort();
    assert_eq!(sources, registered, "each upload registered once, none failed");
    assert_eq!(lib.archives(), 8);
    assert_eq!(
        fs::read_dir(lib.path().join("incoming").join(OWNER))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(fs::read_dir(lib.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn a_registrar_killed_with_sigkill_is_reaped_by_another_registrar() {
    let Some(catalog) = database() else { return };
    let lib = Shared::new(catalog);
    let victim = lib.upload("victim.img", 4 << 20, 2);
    let before = fs::read(&victim).unwrap();
    lib.upload("next.img", 4 << 20, 3);
    let (mut child, id) = lib.register_held("victim.img", 60_000);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Another registrar's command reaps the lease as it opens the library.
    let next = lib.run(&["register", "-a", "x86_64", "-n", "Next", "-s", "next.img"]);
    assert!(next.status.success(), "{}", stderr(&next));
    // Straight from the catalog, without opening the library (which would recover too).
    let mut store = open_catalog(&CatalogLocation::Postgres(lib.catalog.clone())).unwrap();
    let record = store.get(&id).unwrap().unwrap();
    assert_eq!(record.status, Status::Failed);
    assert!(
        record.reason.as_deref().unwrap().contains("interrupted"),
        "{record:?}"
    );
    assert!(
        store.creating().unwrap().is_empty(),
        "the lease is gone with the status"
    );
    assert_eq!(fs::read(&victim).unwrap(), before, "the upload is kept");
    assert!(!lib.path().join("tmp").join(&id).exists());
    assert!(!lib.path().join("images").join(format!("{id}.imgpack")).exists());
}

#[test]
fn postgres_restarted_or_stopped_under_a_registration() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let lib = Shared::new(cluster.create_database());

    // Restarted while the registration holds its record: it connects again and finishes.
    lib.upload("calm.img", 4 << 20, 4);
    let (child, id) = lib.register_held("calm.img", 1500);
    cluster.stop();
    cluster.restart();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), cluster.log());
    assert_eq!(lib.json(&["show", &id])["status"], "available");

    // Stopped until the registration has ended: a clear error, nothing half-registered.
    let upload = lib.upload("storm.img", 4 << 20, 5);
    let before = fs::read(&upload).unwrap();
    let (child, id) = lib.register_held("storm.img", 1000);
    cluster.stop();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let why = stderr(&out);
    assert!(
        why.contains("catalog database postgres://postgres@127.0.0.1:") && why.contains("cannot connect"),
        "{why}"
    );
    assert_eq!(fs::read(&upload).unwrap(), before, "the upload is kept");
    cluster.restart();
    let record = lib.json(&["show", &id]);
    assert_eq!(record["status"], "failed", "{record}");
    assert!(
        record["reason"].as_str().unwrap().contains("interrupted"),
        "{record}"
    );
    assert!(!lib.path().join("images").join(format!("{id}.imgpack")).exists());
    assert_eq!(lib.archives(), 1);
    // The kept upload registers once the server is back.
    let again = lib.json(&["register", "-a", "x86_64", "-n", "Storm", "-s", "storm.img"]);
    assert_eq!(again["status"], "available");
    assert!(!upload.exists());
    // The server going away between commands is also only a clear error.
    cluster.stop();
    let out = lib.run(&["list"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[test]
fn eight_processes_migrate_a_fresh_catalog_once() {
    let Some(catalog) = database() else { return };
    let lib = Shared::new(catalog);
    let children: Vec<Child> = (0..8)
        .map(|_| {
            lib.imgpack()
                .args(["list", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    }
    let mut store = imgpack::library::postgres::PostgresStore::open(&lib.catalog).unwrap();
    assert_eq!(
        store.schema_version().unwrap() as usize,
        imgpack::library::postgres::MIGRATIONS.len()
    );
}
