//! `imgpack images ...` driven through the built binary: the seeds' walkthrough, JSON output,
//! eight processes registering and updating at once, and a registration killed with SIGKILL.

mod common;

use common::library_fixture::TestLibrary;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const OWNER: &str = "acc-xxxxx";
const OTHER: &str = "acc-yyyyy";

fn imgpack(lib: &TestLibrary, account: &str) -> Command {
    imgpack_in(lib.path(), lib, account)
}

/// `imgpack images` on the library directory `root` with `lib`'s catalog.
fn imgpack_in(root: &Path, lib: &TestLibrary, account: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imgpack"));
    match lib.catalog_env() {
        Some(catalog) => command.env("IMGPACK_CATALOG", catalog),
        None => command.env_remove("IMGPACK_CATALOG"),
    };
    command
        .env("IMGPACK_LIBRARY", root)
        .env("IMGPACK_ACCOUNT", account)
        .env("IMGPACK_DEDUP", lib.dedup_env())
        .env_remove("IMGPACK_OPERATOR")
        .env_remove("IMGPACK_TEST_HOLD_CREATING_MS")
        .arg("images");
    command
}

/// `--catalog CATALOG` where the library's catalog is not the default one.
fn catalog_flag(lib: &TestLibrary) -> Vec<String> {
    lib.catalog_env()
        .map(|catalog| vec!["--catalog".to_string(), catalog])
        .unwrap_or_default()
}

fn run(library: &TestLibrary, account: &str, args: &[&str]) -> Output {
    imgpack(library, account).args(args).output().unwrap()
}

fn ok(library: &TestLibrary, account: &str, args: &[&str]) -> String {
    let out = run(library, account, args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(library: &TestLibrary, account: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let text = ok(library, account, &args);
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// A raw disk in the account's incoming directory: `size` bytes, 256 KiB of noise at 1 MiB.
fn upload(library: &TestLibrary, account: &str, name: &str, size: u64, seed: u64) -> PathBuf {
    let dir = library.path().join("incoming").join(account);
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let file = fs::File::create(&path).unwrap();
    file.set_len(size).unwrap();
    let mut rng = common::Rng::new(seed);
    let mut bytes = vec![0u8; 256 << 10];
    rng.fill(&mut bytes);
    std::os::unix::fs::FileExt::write_all_at(&file, &bytes, 1 << 20).unwrap();
    path
}

fn seeds_walkthrough_through_the_cli(lib: &TestLibrary) {
    let source = upload(lib, OWNER, "slackware.img", 3 << 20, 1);
    let original = fs::read(&source).unwrap();

    // --library and --account after the subcommand override the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args([
            "images",
            "register",
            "-a",
            "i686",
            "-n",
            "Slackware",
            "-d",
            "Fresh slackware install",
        ])
        .args(["-s", "slackware.img", "--library"])
        .arg(lib.path())
        .args(["--account", OWNER])
        .args(catalog_flag(lib))
        .env_remove("IMGPACK_CATALOG")
        .env_remove("IMGPACK_LIBRARY")
        .env_remove("IMGPACK_ACCOUNT")
        .env("IMGPACK_DEDUP", lib.dedup_env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["id", "owner", "type", "created_on", "status", "size", "name"]
    );
    let creating: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&creating[1..3], [OWNER, "upload"]);
    assert_eq!(&creating[4..], ["creating", "0", "Slackware", "(i686)"]);
    let id = creating[0].to_string();
    assert!(!source.exists());

    // --library and --account before the subcommand work too.
    let listed = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .arg("images")
        .arg("--library")
        .arg(lib.path())
        .args(catalog_flag(lib))
        .env_remove("IMGPACK_CATALOG")
        .env("IMGPACK_DEDUP", lib.dedup_env())
        .args(["--account", OWNER, "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    let row: Vec<&str> = listed.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        [
            id.as_str(),
            OWNER,
            "upload",
            creating[3],
            "private",
            "3",
            "Slackware",
            "(i686)"
        ]
    );

    ok(lib, OWNER, &["update", "--mode=compatibility", &id]);
    assert!(
        ok(lib, OTHER, &["list"]).lines().count() == 1,
        "private: only the header"
    );
    let shown = run(lib, OTHER, &["show", &id]);
    let unknown = run(lib, OTHER, &["show", "img-zzzzz"]);
    assert!(!shown.status.success());
    assert_eq!(
        String::from_utf8_lossy(&shown.stderr).replace(&id, "img-zzzzz"),
        String::from_utf8_lossy(&unknown.stderr)
    );
    let updated = ok(lib, OWNER, &["update", "--public=true", &id]);
    assert!(updated.starts_with(&format!("Updating image {id}")), "{updated}");
    assert!(ok(lib, OTHER, &["list"]).contains(" public "));

    let deprecated = ok(lib, OWNER, &["update", "--deprecated=true", &id]);
    assert!(deprecated.contains(" deprecated "), "{deprecated}");
    assert_eq!(ok(lib, OTHER, &["list"]).lines().count(), 1);
    assert!(ok(lib, OTHER, &["list", "--show-all"]).contains(&id));
    assert!(ok(lib, OWNER, &["list"]).contains(" deprecated "));

    let disk = lib.path().join("server.raw");
    let small = run(
        lib,
        OTHER,
        &[
            "build",
            &id,
            "--disk",
            disk.to_str().unwrap(),
            "--disk-size",
            "2M",
        ],
    );
    assert!(String::from_utf8_lossy(&small.stderr).contains("will not fit"));
    let report = json(
        lib,
        OTHER,
        &[
            "build",
            &id,
            "--disk",
            disk.to_str().unwrap(),
            "--disk-size",
            "8M",
        ],
    );
    assert_eq!(report["mode"], "compatibility");
    assert_eq!(report["arch"], "i686");
    assert_eq!(report["virtual_size"], 3 << 20);
    let built = fs::read(&disk).unwrap();
    assert_eq!(built.len(), 8 << 20);
    assert_eq!(&built[..original.len()], &original[..]);

    let record = json(lib, OWNER, &["show", &id]);
    for field in [
        "id",
        "owner",
        "source_type",
        "created_on",
        "status",
        "name",
        "description",
        "arch",
        "mode",
        "public",
        "official",
        "username",
        "source",
        "virtual_size",
        "disk_size",
        "compressed_size",
        "format",
        "chunks",
        "reason",
    ] {
        assert!(record.get(field).is_some(), "missing {field}: {record}");
    }
    assert_eq!(record["status"], "deprecated");
    assert_eq!(record["disk_size"], 256 << 10);
    assert_eq!(record["description"], "Fresh slackware install");

    assert!(!run(lib, OTHER, &["destroy", &id]).status.success());
    assert_eq!(json(lib, OWNER, &["destroy", &id])["status"], "deleted");
    assert!(!lib.stored_image(&id).exists());
    assert_eq!(ok(lib, OWNER, &["list", "--show-all"]).lines().count(), 1);
}

fn limit_turns_a_registration_into_failed(lib: &TestLibrary) {
    let source = upload(lib, OWNER, "big.img", 2 << 20, 2);
    let out = run(
        lib,
        OWNER,
        &[
            "register",
            "-a",
            "x86_64",
            "-n",
            "Big",
            "-s",
            "big.img",
            "--max-compressed-size",
            "64K",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed") && stderr.contains("limit"), "{stderr}");
    let creating: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(creating["status"], "creating");
    let id = creating["id"].as_str().unwrap();
    let record = json(lib, OWNER, &["show", id]);
    assert_eq!(record["status"], "failed");
    assert!(record["reason"].as_str().unwrap().contains("limit"));
    assert!(source.exists());
    assert!(!lib.stored_image(id).exists());
}

fn wait_all(children: Vec<Child>) -> Vec<Output> {
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn eight_processes_register_update_and_list_at_once(lib: &TestLibrary) {
    let accounts = [OWNER, OTHER];
    for n in 0..8 {
        upload(lib, accounts[n % 2], &format!("disk{n}.img"), 2 << 20, n as u64);
    }
    // One image everybody updates at once, registered beforehand.
    upload(lib, OWNER, "shared.img", 1 << 20, 99);
    let shared = json(
        lib,
        OWNER,
        &["register", "-a", "x86_64", "-n", "Shared", "-s", "shared.img"],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut children = Vec::new();
    for n in 0..8 {
        let name = format!("Image {n}");
        let source = format!("disk{n}.img");
        children.push(
            imgpack(lib, accounts[n % 2])
                .args(["register", "-a", "x86_64", "-n", &name, "-s", &source, "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let field_updates: [&[&str]; 8] = [
        &["-n", "Renamed"],
        &["-d", "described"],
        &["--mode", "compatibility"],
        &["--public", "true"],
        &["-u", "ubuntu"],
        &["-a", "i686"],
        &["--deprecated", "true"],
        &["--deprecated", "true"],
    ];
    let mut updaters = Vec::new();
    for args in field_updates {
        updaters.push(
            imgpack(lib, OWNER)
                .arg("update")
                .arg(&shared)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        updaters.push(
            imgpack(lib, OTHER)
                .args(["list", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let registered = wait_all(children);
    for out in wait_all(updaters) {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut ids = std::collections::HashSet::new();
    for out in &registered {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let last: Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
        assert_eq!(last["status"], "available");
        assert!(
            ids.insert(last["id"].as_str().unwrap().to_string()),
            "duplicate id"
        );
    }
    assert_eq!(ids.len(), 8);
    for n in 0..8 {
        assert!(!lib
            .path()
            .join("incoming")
            .join(accounts[n % 2])
            .join(format!("disk{n}.img"))
            .exists());
    }
    let archives = fs::read_dir(lib.path().join("images")).unwrap().count();
    assert_eq!(archives, 9);
    let mine = json(lib, OWNER, &["list"]);
    assert_eq!(
        mine.as_array().unwrap().len(),
        5,
        "four registrations and the shared image"
    );
    // No update was lost.
    let record = json(lib, OWNER, &["show", &shared]);
    assert_eq!(record["name"], "Renamed");
    assert_eq!(record["description"], "described");
    assert_eq!(record["mode"], "compatibility");
    assert_eq!(record["public"], true);
    assert_eq!(record["username"], "ubuntu");
    assert_eq!(record["arch"], "i686");
    assert_eq!(record["status"], "deprecated");

    // Eight processes destroy the same image: the compare-and-swap lets exactly one through.
    let destroyers: Vec<Child> = (0..8)
        .map(|_| {
            imgpack(lib, OWNER)
                .args(["destroy", &shared])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let succeeded = wait_all(destroyers).iter().filter(|o| o.status.success()).count();
    assert_eq!(succeeded, 1);
    assert_eq!(json(lib, OWNER, &["show", &shared])["status"], "deleted");
}

fn a_registration_killed_with_sigkill_is_marked_failed_by_the_next_command(lib: &TestLibrary) {
    let source = upload(lib, OWNER, "victim.img", 2 << 20, 5);
    let before = fs::read(&source).unwrap();
    let mut child = imgpack(lib, OWNER)
        .env("IMGPACK_TEST_HOLD_CREATING_MS", "60000")
        .args([
            "register",
            "-a",
            "x86_64",
            "-n",
            "Victim",
            "-s",
            "victim.img",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let creating: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(creating["status"], "creating");
    let id = creating["id"].as_str().unwrap().to_string();
    assert!(
        lib.path().join("tmp").join(&id).exists(),
        "scratch space exists while creating"
    );

    // While the process lives, other commands leave the registration alone.
    assert_eq!(json(lib, OWNER, &["show", &id])["status"], "creating");

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let record = json(lib, OWNER, &["show", &id]);
    assert_eq!(record["status"], "failed");
    assert!(
        record["reason"].as_str().unwrap().contains("interrupted"),
        "{record}"
    );
    assert!(!lib.path().join("tmp").join(&id).exists());
    assert!(!lib.stored_image(&id).exists());
    assert_eq!(fs::read(&source).unwrap(), before, "the upload is kept");
    assert!(ok(lib, OWNER, &["list"]).contains(" failed "));

    // The kept upload registers fine afterwards.
    let again = json(
        lib,
        OWNER,
        &["register", "-a", "x86_64", "-n", "Victim", "-s", "victim.img"],
    );
    assert_eq!(again["status"], "available");
    assert!(!source.exists());
}

fn eight_processes_open_a_new_library_at_once(lib: &TestLibrary) {
    let fresh = lib.path().join("fresh");
    let children: Vec<Child> = (0..8)
        .map(|n| {
            imgpack_in(&fresh, lib, if n % 2 == 0 { OWNER } else { OTHER })
                .args(["list", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for out in wait_all(children) {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    }
    let settings = imgpack_in(&fresh, lib, OWNER)
        .args(["settings", "--json"])
        .output()
        .unwrap();
    assert!(settings.status.success());
    let settings: Value = serde_json::from_slice(&settings.stdout).unwrap();
    assert_eq!(settings["operator"], "brightbox");
    assert_eq!(settings["max_compressed_size"], 50u64 << 30);
}

crate::every_backend!(
    seeds_walkthrough_through_the_cli,
    limit_turns_a_registration_into_failed,
    eight_processes_register_update_and_list_at_once,
    a_registration_killed_with_sigkill_is_marked_failed_by_the_next_command,
    eight_processes_open_a_new_library_at_once,
);
