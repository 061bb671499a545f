//! The image library on an S3-compatible store (a real moto server on loopback, see
//! `common/s3.rs`) with a SQLite catalog, driven through the built binary: every library
//! command byte-exact against qemu-img, accounts walled off from each other, an outage, the
//! size limit and SIGKILL in the middle of a registration (no archive appears, the upload is
//! kept, the multipart upload is aborted), and credentials that never reach any output.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::s3::{env_for_port, free_port, LinkCut, S3Server, BUCKET, SECRET_KEY};
use serde_json::Value;

const OWNER: &str = "acc-xxxxx";
const OTHER: &str = "acc-yyyyy";
const PREFIX: &str = "lib";

/// An `s3://` library on a running server, its catalog in a temporary directory.
struct Lib {
    server: S3Server,
    dir: tempfile::TempDir,
    /// The port imgpack talks to: the server's, or a [`LinkCut`]'s in front of it.
    port: u16,
    /// `IMGPACK_CATALOG`: `sqlite:` in `dir`, or a PostgreSQL database.
    catalog: String,
    /// `IMGPACK_DEDUP=on`: images go to the chunk store (an index and chunk objects).
    dedup: bool,
}

impl Lib {
    fn start() -> Option<Lib> {
        let server = S3Server::start()?;
        let port = server.port();
        let dir = tempfile::tempdir().unwrap();
        let catalog = format!("sqlite:{}", dir.path().join("catalog.db").display());
        Some(Lib {
            server,
            dir,
            port,
            catalog,
            dedup: false,
        })
    }

    /// The same with a PostgreSQL catalog (a throwaway cluster, `common/postgres.rs`).
    fn start_on_postgres() -> Option<Lib> {
        let database = common::postgres::database()?;
        let mut lib = Lib::start()?;
        lib.catalog = database;
        Some(lib)
    }

    /// The same on the deduplicated store.
    fn start_on_postgres_deduplicated() -> Option<Lib> {
        let mut lib = Lib::start_on_postgres()?;
        lib.dedup = true;
        Some(lib)
    }

    /// The key of image `id`'s stored form: its archive, or on the deduplicated store its
    /// index (its chunks are under `chunks/`).
    fn image_key(&self, id: &str) -> String {
        if self.dedup {
            format!("{PREFIX}/images/{id}.index")
        } else {
            archive_key(id)
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn imgpack(&self, account: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_imgpack"));
        command
            .envs(env_for_port(self.port))
            .env("IMGPACK_LIBRARY", format!("s3://{BUCKET}/{PREFIX}"))
            .env("IMGPACK_CATALOG", &self.catalog)
            .env("IMGPACK_ACCOUNT", account)
            .env("IMGPACK_DEDUP", if self.dedup { "on" } else { "off" })
            .env_remove("IMGPACK_OPERATOR")
            .env_remove("IMGPACK_TEST_HOLD_CREATING_MS")
            .env_remove("IMGPACK_TEST_HOLD_BEFORE_REMOVE_MS");
        command
    }

    fn run(&self, account: &str, args: &[&str]) -> Output {
        let out = self.imgpack(account).args(args).output().unwrap();
        no_secret(&out);
        out
    }

    fn ok(&self, account: &str, args: &[&str]) -> String {
        let out = self.run(account, args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, account: &str, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.ok(account, &args);
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    }

    /// The error text of a command that must fail.
    fn fails(&self, account: &str, args: &[&str]) -> String {
        let out = self.run(account, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    }

    fn upload(&self, account: &str, file: &Path, name: &str) {
        let report = self.json(
            account,
            &["images", "upload", file.to_str().unwrap(), "--name", name],
        );
        assert_eq!(report["name"], name);
        assert_eq!(report["size"], fs::metadata(file).unwrap().len());
    }

    fn register(&self, account: &str, source: &str) -> Value {
        self.json(
            account,
            &["images", "register", "-a", "x86_64", "-n", source, "-s", source],
        )
    }

    fn has_key(&self, key: &str) -> bool {
        self.server.keys().iter().any(|k| k == key)
    }
}

fn upload_key(account: &str, name: &str) -> String {
    format!("{PREFIX}/incoming/{account}/{name}")
}

fn archive_key(id: &str) -> String {
    format!("{PREFIX}/images/{id}.imgpack")
}

fn marker_key(id: &str) -> String {
    format!("{PREFIX}/tmp/{id}.multipart")
}

#[track_caller]
fn no_secret(out: &Output) {
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(stream).contains(SECRET_KEY),
            "the secret key was printed: {}",
            String::from_utf8_lossy(stream)
        );
    }
}

/// A raw disk of `size` bytes with noise in a few places (`random_len` bytes of it
/// incompressible), written at `path`.
fn write_disk(path: &Path, size: u64, random_len: usize, seed: u64) {
    let file = fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    let mut rng = common::Rng::new(seed);
    let mut noise = vec![0u8; random_len];
    rng.fill(&mut noise);
    std::os::unix::fs::FileExt::write_all_at(&file, &noise, 1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"the end", size - 4096).unwrap();
}

/// `sha256sum` of `path` (coreutils, an oracle for `source_sha256`).
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn every_library_command_works_on_s3_byte_exact() {
    if !common::have_all(&["qemu-img", "gzip", "sha256sum"]) {
        return;
    }
    if let Some(lib) = Lib::start() {
        every_library_command(lib);
    }
}

/// The same commands on an `s3://` library with a PostgreSQL catalog: the set-up of many
/// registrar and builder hosts sharing one bucket and one catalog.
#[test]
fn every_library_command_works_on_s3_with_postgres() {
    if !common::have_all(&["qemu-img", "gzip", "sha256sum"]) {
        return;
    }
    if let Some(lib) = Lib::start_on_postgres() {
        every_library_command(lib);
    }
}

/// The same commands on the deduplicated store (`IMGPACK_DEDUP=on`): S3 with PostgreSQL.
#[test]
fn every_library_command_works_on_s3_with_postgres_deduplicated() {
    if !common::have_all(&["qemu-img", "gzip", "sha256sum"]) {
        return;
    }
    if let Some(lib) = Lib::start_on_postgres_deduplicated() {
        every_library_command(lib);
    }
}

fn every_library_command(lib: Lib) {
    let raw = lib.path("disk.raw");
    write_disk(&raw, 24 << 20, 3 << 20, 1);
    let qcow2 = lib.path("disk.qcow2");
    common::qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    let status = Command::new("gzip")
        .args(["-k", raw.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let gz = lib.path("disk.raw.gz");
    let expected = fs::read(&raw).unwrap();
    assert_eq!(common::qemu_raw("qcow2", &qcow2, lib.dir.path()), expected);

    let mut ids = Vec::new();
    for (file, name, format) in [
        (&raw, "disk.raw", "raw"),
        (&qcow2, "disk.qcow2", "qcow2"),
        (&gz, "disk.raw.gz", "gzip>raw"),
    ] {
        lib.upload(OWNER, file, name);
        assert!(lib.has_key(&upload_key(OWNER, name)));
        let image = lib.register(OWNER, name);
        assert_eq!(image["status"], "available", "{image}");
        assert_eq!(image["format"], format);
        assert_eq!(image["virtual_size"], 24 << 20);
        let id = image["id"].as_str().unwrap().to_string();
        // Registered: the archive (or index) is in images/, the upload gone, no multipart left.
        assert!(lib.has_key(&lib.image_key(&id)));
        assert!(!lib.has_key(&upload_key(OWNER, name)));
        assert!(!lib.has_key(&marker_key(&id)));
        // source_sha256: what sha256sum prints of the upload, hashed off the streaming GET.
        let shown = lib.json(OWNER, &["images", "show", &id]);
        assert_eq!(
            shown["source_sha256"].as_str(),
            Some(sha256sum(file).as_str()),
            "{name}"
        );
        ids.push(id);
    }
    assert!(lib.server.multipart_uploads().is_empty());

    // The qcow2 above was streamed into a temporary file that the conversion read as it grew
    // (the default); spilled whole first, as before, it is the same image.
    lib.upload(OWNER, &qcow2, "spilled.qcow2");
    let out = lib
        .imgpack(OWNER)
        .env("IMGPACK_S3_IMAGE_READ", "spill")
        .args([
            "images",
            "register",
            "-a",
            "x86_64",
            "-n",
            "s",
            "-s",
            "spilled.qcow2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spilled: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(spilled["format"], "qcow2");
    assert_eq!(
        spilled["source_sha256"].as_str(),
        Some(sha256sum(&qcow2).as_str())
    );
    assert_eq!(
        spilled["disk_size"],
        lib.json(OWNER, &["images", "show", &ids[1]])["disk_size"]
    );
    ids.push(spilled["id"].as_str().unwrap().to_string());

    let listed = lib.json(OWNER, &["images", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 4);
    let shown = lib.json(OWNER, &["images", "show", &ids[1]]);
    assert_eq!(shown["format"], "qcow2");
    // The same disk, whatever its upload's format: the same image digest.
    assert!(shown["digest"].as_str().unwrap().starts_with("sha256-tree:"));
    for id in &ids {
        assert_eq!(
            lib.json(OWNER, &["images", "show", id])["digest"],
            shown["digest"]
        );
    }
    let renamed = lib.json(OWNER, &["images", "update", &ids[1], "--name", "renamed"]);
    assert_eq!(renamed["name"], "renamed");

    for id in &ids {
        let disk = lib.path(&format!("{id}.raw"));
        let report = lib.json(
            OWNER,
            &[
                "images",
                "build",
                id,
                "--disk",
                disk.to_str().unwrap(),
                "--disk-size",
                "24M",
            ],
        );
        assert_eq!(report["data_size"], shown["disk_size"]);
        assert!(fs::read(&disk).unwrap() == expected, "build of {id} differs");
        // Sparse as from a local library: about the data, not the virtual size.
        assert!(common::allocated(&disk) < 8 << 20);
    }

    // `images download -O imgpack` writes the image's single-file archive (to a pipe too).
    let downloaded = lib.path("downloaded.imgpack");
    let report = lib.json(
        OWNER,
        &[
            "images",
            "download",
            &ids[0],
            "-O",
            "imgpack",
            "-o",
            downloaded.to_str().unwrap(),
        ],
    );
    assert_eq!(report["format"], "imgpack");
    let piped = lib
        .imgpack(OWNER)
        .args(["images", "download", &ids[0], "-O", "imgpack", "-o", "-"])
        .output()
        .unwrap();
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(piped.stdout == fs::read(&downloaded).unwrap());

    // That archive, uploaded and registered again: the same image (read by ranged GETs); on
    // the deduplicated store every chunk is the library's already.
    lib.upload(OWNER, &downloaded, "again.imgpack");
    let again = lib.register(OWNER, "again.imgpack");
    assert_eq!(again["status"], "available", "{again}");
    assert_eq!(again["format"], "imgpack");
    assert_eq!(again["digest"], shown["digest"]);
    if lib.dedup {
        assert_eq!(again["new_chunks"], 0, "{again}");
        assert_eq!(again["reused_chunks"], shown["chunks"], "{again}");
    }
    let again_id = again["id"].as_str().unwrap();
    let again_disk = lib.path("again.raw");
    lib.json(
        OWNER,
        &[
            "images",
            "build",
            again_id,
            "--disk",
            again_disk.to_str().unwrap(),
            "--disk-size",
            "24M",
        ],
    );
    assert!(fs::read(&again_disk).unwrap() == expected);
    lib.json(OWNER, &["images", "destroy", again_id]);

    // The engine's commands read an archive object in place; on the deduplicated store there
    // is none, and they read the downloaded archive instead.
    let object = if lib.dedup {
        downloaded.to_str().unwrap().to_string()
    } else {
        let object = format!("s3://{BUCKET}/{}", archive_key(&ids[0]));
        // The download is the stored archive, byte for byte (`export -O imgpack` copies it).
        let copied = lib.path("copied.imgpack");
        lib.json(
            OWNER,
            &["export", &object, "-O", "imgpack", "-o", copied.to_str().unwrap()],
        );
        assert!(fs::read(&copied).unwrap() == fs::read(&downloaded).unwrap());
        object
    };
    let info = lib.json(OWNER, &["info", &object]);
    assert_eq!(info["format"], "imgpack");
    assert_eq!(info["virtual_size"], 24 << 20);
    let verified = lib.json(OWNER, &["verify", &object]);
    assert_eq!(verified["ok"], true);
    let extracted = lib.path("extracted.raw");
    lib.json(OWNER, &["extract", &object, "-o", extracted.to_str().unwrap()]);
    assert!(fs::read(&extracted).unwrap() == expected);
    let missing = lib.fails(
        OWNER,
        &[
            "extract",
            &format!("s3://{BUCKET}/{PREFIX}/images/none.imgpack"),
            "-o",
            "x",
        ],
    );
    assert!(missing.contains("there is no object"), "{missing}");

    // Snapshots of a local server disk go into the bucket too.
    let snapshot = lib.json(
        OWNER,
        &[
            "images",
            "snapshot",
            "--disk",
            raw.to_str().unwrap(),
            "-n",
            "nightly",
        ],
    );
    assert_eq!(snapshot["status"], "available");
    assert!(lib.has_key(&lib.image_key(snapshot["id"].as_str().unwrap())));

    let destroyed = lib.json(OWNER, &["images", "destroy", &ids[0]]);
    assert_eq!(destroyed["status"], "deleted");
    assert!(!lib.has_key(&lib.image_key(&ids[0])));
}

#[test]
fn accounts_cannot_reach_each_others_uploads_or_images() {
    let Some(lib) = Lib::start() else { return };
    let raw = lib.path("mine.raw");
    write_disk(&raw, 4 << 20, 64 << 10, 2);
    lib.upload(OWNER, &raw, "mine.raw");

    // Another account names the owner's upload: exactly as if it did not exist.
    let theirs = lib.fails(
        OTHER,
        &["images", "register", "-a", "x86_64", "-n", "x", "-s", "mine.raw"],
    );
    let absent = lib.fails(
        OTHER,
        &[
            "images",
            "register",
            "-a",
            "x86_64",
            "-n",
            "x",
            "-s",
            "absent.raw",
        ],
    );
    assert_eq!(theirs.replace("mine.raw", "absent.raw"), absent);
    assert!(theirs.contains("there is no file"), "{theirs}");
    for name in ["../acc-xxxxx/mine.raw", "..", "a\nb", "/etc/passwd"] {
        let refused = lib.fails(
            OTHER,
            &["images", "register", "-a", "x86_64", "-n", "x", "-s", name],
        );
        assert!(refused.contains("source"), "{name:?}: {refused}");
        let refused = lib.fails(
            OTHER,
            &["images", "upload", raw.to_str().unwrap(), "--name", name],
        );
        assert!(refused.contains("source"), "{name:?}: {refused}");
    }

    let image = lib.register(OWNER, "mine.raw");
    let id = image["id"].as_str().unwrap();
    let unknown = lib.fails(OTHER, &["images", "show", "img-zzzzz"]);
    for args in [
        vec!["images", "show", id],
        vec!["images", "destroy", id],
        vec![
            "images",
            "build",
            id,
            "--disk",
            "/nonexistent/x.raw",
            "--disk-size",
            "4M",
        ],
    ] {
        let refused = lib.fails(OTHER, &args);
        assert_eq!(refused.replace(id, "img-zzzzz"), unknown, "{args:?}");
    }
    assert!(lib.has_key(&archive_key(id)));
    // Nothing was ever stored outside the two areas the owner used.
    for key in lib.server.keys() {
        assert!(key.starts_with(&format!("{PREFIX}/images/")), "{key}");
    }
}

/// Waits until `key` exists in the bucket (what the registration has reached).
fn wait_for_key(lib: &Lib, key: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lib.has_key(key) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the registration ended before {key} appeared"
        );
        assert!(Instant::now() < deadline, "{key} did not appear");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a registration of `source` in the background; returns it and the new image's id.
fn start_registration(lib: &Lib, source: &str) -> (Child, String) {
    let mut child = lib
        .imgpack(OWNER)
        .args([
            "images", "register", "-a", "x86_64", "-n", "big", "-s", source, "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let creating: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(creating["status"], "creating");
    (child, creating["id"].as_str().unwrap().to_string())
}

/// Registrar A's image is `available` but A has not yet deleted the upload (held there by a
/// test-only variable) when registrar B opens the same object and inserts its own
/// `creating` record: the object's identity (URL, ETag, size, last-modified) in the catalog
/// refuses B, so the upload is stored once.
#[test]
fn an_upload_opened_just_before_its_registration_deleted_it_is_refused() {
    let Some(lib) = Lib::start_on_postgres() else {
        return;
    };
    let raw = lib.path("twice.raw");
    write_disk(&raw, 4 << 20, 64 << 10, 10);
    lib.upload(OWNER, &raw, "twice.raw");
    let mut first = lib
        .imgpack(OWNER)
        .env("IMGPACK_TEST_HOLD_BEFORE_REMOVE_MS", "8000")
        .args([
            "images",
            "register",
            "-a",
            "x86_64",
            "-n",
            "t",
            "-s",
            "twice.raw",
            "--json",
        ])
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while lib.json(OWNER, &["images", "show", &id])["status"] != "available" {
        assert!(Instant::now() < deadline, "{id} never became available");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lib.has_key(&upload_key(OWNER, "twice.raw")));
    let why = lib.fails(
        OWNER,
        &["images", "register", "-a", "x86_64", "-n", "t", "-s", "twice.raw"],
    );
    assert!(
        why.contains(&format!("\"twice.raw\" was already registered as {id}")),
        "{why}"
    );
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let images = lib.json(OWNER, &["images", "list", "--show-all"]);
    assert_eq!(images.as_array().unwrap().len(), 1, "{images}");
    let archives = lib
        .server
        .keys()
        .iter()
        .filter(|k| k.ends_with(".imgpack"))
        .count();
    assert_eq!(archives, 1);
    assert!(!lib.has_key(&upload_key(OWNER, "twice.raw")));
    assert!(lib.server.multipart_uploads().is_empty());
}

#[test]
fn an_outage_mid_registration_fails_the_image_keeps_the_upload_and_is_cleaned_up() {
    let Some(mut lib) = Lib::start() else { return };
    let link = LinkCut::new(lib.server.port());
    lib.port = link.port();
    let raw = lib.path("big.raw");
    write_disk(&raw, 96 << 20, 80 << 20, 3);
    lib.upload(OWNER, &raw, "big.raw");

    let (mut child, id) = start_registration(&lib, "big.raw");
    // The archive's multipart upload has started: now the store goes away.
    wait_for_key(&lib, &marker_key(&id), &mut child);
    link.cut();
    let out = child.wait_with_output().unwrap();
    no_secret(&out);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{id} failed")) && stderr.contains("s3://"),
        "{stderr}"
    );

    // Back again: the next command finds the image failed, aborts the multipart upload the
    // registrar could not, and the upload is still there to register again.
    link.mend();
    let image = lib.json(OWNER, &["images", "show", &id]);
    assert_eq!(image["status"], "failed");
    assert!(image["reason"].as_str().unwrap().contains("s3://"), "{image}");
    assert!(!lib.has_key(&archive_key(&id)));
    assert!(!lib.has_key(&marker_key(&id)));
    assert!(
        lib.server.multipart_uploads().is_empty(),
        "{:?}",
        lib.server.multipart_uploads()
    );
    assert!(lib.has_key(&upload_key(OWNER, "big.raw")));
    let again = lib.register(OWNER, "big.raw");
    assert_eq!(again["status"], "available");
    // An archive of ten cache blocks: read-ahead and parallel chunk reads across blocks.
    let disk = lib.path("again.raw");
    let id = again["id"].as_str().unwrap();
    lib.json(
        OWNER,
        &[
            "images",
            "build",
            id,
            "--disk",
            disk.to_str().unwrap(),
            "--disk-size",
            "96M",
        ],
    );
    assert!(
        fs::read(&disk).unwrap() == fs::read(&raw).unwrap(),
        "the build differs"
    );
}

#[test]
fn the_size_limit_hit_mid_upload_aborts_the_multipart_upload() {
    let Some(lib) = Lib::start() else { return };
    let raw = lib.path("noise.raw");
    // Incompressible: the archive passes the limit after two 8 MiB parts were uploaded.
    write_disk(&raw, 40 << 20, 36 << 20, 4);
    lib.upload(OWNER, &raw, "noise.raw");
    let err = lib.fails(
        OWNER,
        &[
            "images",
            "register",
            "-a",
            "x86_64",
            "-n",
            "n",
            "-s",
            "noise.raw",
            "--max-compressed-size",
            "20M",
        ],
    );
    assert!(err.contains("limit"), "{err}");
    let images = lib.json(OWNER, &["images", "list"]);
    let image = &images[0];
    assert_eq!(image["status"], "failed");
    let id = image["id"].as_str().unwrap();
    assert!(!lib.has_key(&archive_key(id)));
    assert!(!lib.has_key(&marker_key(id)));
    assert!(lib.server.multipart_uploads().is_empty());
    assert!(lib.has_key(&upload_key(OWNER, "noise.raw")));
}

#[test]
fn a_registrar_killed_with_sigkill_leaves_a_multipart_upload_the_next_command_aborts() {
    let Some(lib) = Lib::start() else { return };
    let raw = lib.path("big.raw");
    write_disk(&raw, 96 << 20, 80 << 20, 5);
    lib.upload(OWNER, &raw, "big.raw");
    let (mut child, id) = start_registration(&lib, "big.raw");
    wait_for_key(&lib, &marker_key(&id), &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !lib.server.multipart_uploads().is_empty(),
        "the killed registrar left no multipart upload"
    );

    let image = lib.json(OWNER, &["images", "show", &id]);
    assert_eq!(image["status"], "failed");
    assert!(lib.server.multipart_uploads().is_empty());
    assert!(!lib.has_key(&marker_key(&id)));
    assert!(!lib.has_key(&archive_key(&id)));
    assert!(lib.has_key(&upload_key(OWNER, "big.raw")));
}

#[test]
fn sigterm_mid_registration_aborts_the_multipart_upload_and_keeps_the_upload() {
    let Some(lib) = Lib::start() else { return };
    let raw = lib.path("big.raw");
    write_disk(&raw, 96 << 20, 80 << 20, 8);
    lib.upload(OWNER, &raw, "big.raw");
    let (mut child, id) = start_registration(&lib, "big.raw");
    wait_for_key(&lib, &marker_key(&id), &mut child);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Aborted by the registrar itself, before it exited: nothing left for recovery.
    assert!(lib.server.multipart_uploads().is_empty());
    assert!(!lib.has_key(&marker_key(&id)));
    assert!(!lib.has_key(&archive_key(&id)));
    assert!(lib.has_key(&upload_key(OWNER, "big.raw")));
    assert_eq!(lib.json(OWNER, &["images", "show", &id])["status"], "failed");
}

#[test]
fn an_interrupted_upload_leaves_no_object_and_its_multipart_upload_is_aborted() {
    let Some(mut lib) = Lib::start() else { return };
    let link = LinkCut::new(lib.server.port());
    lib.port = link.port();
    let raw = lib.path("big.raw");
    write_disk(&raw, 64 << 20, 60 << 20, 6);
    let mut child = lib
        .imgpack(OWNER)
        .args(["images", "upload", raw.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lib.server.multipart_uploads().is_empty() {
        assert!(child.try_wait().unwrap().is_none(), "the upload ended too soon");
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: the process cannot abort its multipart upload
    child.wait().unwrap();
    assert!(!lib.has_key(&upload_key(OWNER, "big.raw")));
    assert_eq!(
        lib.server.multipart_uploads(),
        [upload_key(OWNER, "big.raw")],
        "the killed upload left its multipart upload"
    );
    assert!(lib
        .server
        .keys()
        .iter()
        .any(|k| k.starts_with(&format!("{PREFIX}/tmp/uploads/"))));
    // The next command that opens the library finds the marker's process gone and aborts
    // the upload (storage nobody could see, but billed), marker and all.
    lib.json(OWNER, &["images", "list"]);
    assert!(
        lib.server.multipart_uploads().is_empty(),
        "{:?}",
        lib.server.multipart_uploads()
    );
    assert!(
        !lib.server.keys().iter().any(|k| k.contains("/tmp/")),
        "{:?}",
        lib.server.keys()
    );

    // A live upload's multipart upload is left alone by the same recovery.
    let mut child = lib
        .imgpack(OWNER)
        .args(["images", "upload", raw.to_str().unwrap(), "--name", "live.raw"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while lib.server.multipart_uploads().is_empty() {
        assert!(child.try_wait().unwrap().is_none(), "the upload ended too soon");
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    lib.json(OWNER, &["images", "list"]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lib.has_key(&upload_key(OWNER, "live.raw")));
    assert!(
        !lib.server.keys().iter().any(|k| k.contains("/tmp/")),
        "{:?}",
        lib.server.keys()
    );

    // The store going away mid-upload: a clear failure, and no object.
    let child = lib
        .imgpack(OWNER)
        .args(["images", "upload", raw.to_str().unwrap(), "--name", "second.raw"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while link.relayed() == 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    link.cut();
    let out = child.wait_with_output().unwrap();
    no_secret(&out);
    assert!(!out.status.success());
    link.mend();
    assert!(!lib.has_key(&upload_key(OWNER, "second.raw")));
}

#[test]
fn credentials_never_appear_in_errors_or_json() {
    let Some(lib) = Lib::start() else { return };
    let raw = lib.path("d.raw");
    write_disk(&raw, 2 << 20, 4096, 7);
    // Every output of `Lib::run` is checked for the secret; these cover success and failure.
    lib.upload(OWNER, &raw, "d.raw");
    let image = lib.register(OWNER, "d.raw");
    lib.json(OWNER, &["images", "show", image["id"].as_str().unwrap()]);
    lib.json(OWNER, &["images", "list"]);
    lib.fails(
        OWNER,
        &["images", "register", "-a", "x86_64", "-n", "x", "-s", "absent"],
    );
    lib.fails(OWNER, &["info", &format!("s3://{BUCKET}/nothing/here")]);

    // A store that is not there, and a bucket that does not exist.
    let dead = Lib {
        port: free_port(),
        ..Lib::start().unwrap()
    };
    let err = dead.fails(OWNER, &["images", "list", "--json"]);
    assert!(err.contains("s3://"), "{err}");
    let out = lib
        .imgpack(OWNER)
        .env("IMGPACK_LIBRARY", "s3://no-such-bucket/lib")
        .args(["images", "upload", raw.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    no_secret(&out);
    assert!(!out.status.success());

    // Without a catalog an s3:// library is refused, saying what to do.
    let out = lib
        .imgpack(OWNER)
        .env_remove("IMGPACK_CATALOG")
        .args(["images", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a catalog: give --catalog"));
}

/// Frame objects of a deduplicated image damaged on the object store, where a build fetches
/// frames ahead of its reader (`chunks/prefetch.rs`): a missing frame and a short one are
/// refused as a direct read refuses them, naming the object, and leave no disk behind; put
/// back, the image builds byte-exact.
#[test]
fn a_missing_or_short_frame_object_on_s3_is_refused_by_name() {
    let Some(mut lib) = Lib::start() else { return };
    lib.dedup = true;
    // 40 chunks of distinct noise, so that the build reads most frames from the prefetcher,
    // and a last chunk holding a few bytes, whose frame is the smallest object.
    let raw = lib.path("disk.raw");
    let size = 48u64 << 20;
    let file = fs::File::create(&raw).unwrap();
    file.set_len(size).unwrap();
    let mut rng = common::Rng::new(7);
    for chunk in 0..40u64 {
        let mut noise = vec![0u8; 4096];
        rng.fill(&mut noise);
        std::os::unix::fs::FileExt::write_all_at(&file, &noise, chunk << 20).unwrap();
    }
    std::os::unix::fs::FileExt::write_all_at(&file, b"the end", size - 4096).unwrap();
    drop(file);
    lib.upload(OWNER, &raw, "disk.raw");
    let id = lib.register(OWNER, "disk.raw")["id"]
        .as_str()
        .unwrap()
        .to_string();

    let (key, frame) = lib
        .server
        .keys()
        .into_iter()
        .filter(|key| key.starts_with(&format!("{PREFIX}/chunks/")))
        .map(|key| {
            let bytes = lib.server.get(&key);
            (key, bytes)
        })
        .min_by_key(|(_, bytes)| bytes.len())
        .expect("no frame objects");
    let object = key.rsplit('/').next().unwrap().to_string();
    let disk = lib.path("built.raw");
    let size_arg = size.to_string();
    let build = [
        "images",
        "build",
        &id,
        "--disk",
        disk.to_str().unwrap(),
        "--disk-size",
        &size_arg,
    ];

    lib.server.delete(&key);
    let error = lib.fails(OWNER, &build);
    assert!(error.contains(&object) && error.contains("missing"), "{error}");
    assert!(!disk.exists(), "a failed build left its disk");

    lib.server.put(&key, &frame[..frame.len() - 1]);
    let error = lib.fails(OWNER, &build);
    assert!(error.contains(&object) && error.contains("bytes"), "{error}");
    assert!(!disk.exists(), "a failed build left its disk");

    lib.server.put(&key, &frame);
    lib.json(OWNER, &build);
    assert!(fs::read(&disk).unwrap() == fs::read(&raw).unwrap());
}

/// Two uploads of the same bytes under two names, stored within the same second (so with the
/// same ETag, size and Last-Modified), are two uploads: each registers. The upload identity
/// once left out the object's key, and the second registration was refused as "already
/// registered" (seen as an intermittent failure of `tests/dedup_race.rs`).
#[test]
fn the_same_bytes_uploaded_under_two_names_register_twice() {
    let Some(lib) = Lib::start() else { return };
    let raw = lib.path("same.raw");
    write_disk(&raw, 4 << 20, 4096, 11);
    lib.upload(OWNER, &raw, "first.raw");
    lib.upload(OWNER, &raw, "second.raw");
    let first = lib.register(OWNER, "first.raw");
    let second = lib.register(OWNER, "second.raw");
    assert_eq!(first["status"], "available");
    assert_eq!(second["status"], "available");
    assert_ne!(first["id"], second["id"]);
}
