//! `imgpack serve` driven by NBD clients other people wrote: qemu-img, qemu-io (qemu-utils),
//! nbdinfo and nbdcopy (libnbd-bin). Test images are random sparse disks made into qcow2 by
//! qemu-img and converted by imgpack; every server is killed at the end of its test.

mod common;
mod serve_support;

use std::path::Path;

use common::{have_all, Layout, Rng};
use serve_support::{
    client, client_status, make_archive, parse_dump, parse_map, random_layout, ServerProcess,
};

const M: u64 = 1 << 20;
const TOOLS: [&str; 4] = ["qemu-img", "qemu-io", "nbdinfo", "nbdcopy"];

/// The block-status map nbdinfo prints must say hole,zero (3) exactly where the disk's 4 KiB
/// blocks are all zero, and data (0) elsewhere.
fn assert_map_matches(uri: &str, disk: &[u8]) {
    let map = parse_map(&client("nbdinfo", &["--map", uri]));
    let mut covered = 0;
    for (offset, len, kind) in map {
        assert_eq!(offset, covered, "extents are contiguous");
        assert!(kind == 0 || kind == 3, "type {kind} at {offset}");
        let mut block = offset;
        while block < offset + len {
            let end = (block + 4096).min(offset + len);
            let zero = disk[block as usize..end as usize].iter().all(|&b| b == 0);
            assert_eq!(
                zero,
                kind == 3,
                "block at {block} is zero={zero} but mapped as {kind}"
            );
            block = end;
        }
        covered = offset + len;
    }
    assert_eq!(covered, disk.len() as u64);
}

/// Random reads through qemu-io (hex dumps) return the disk's bytes.
fn assert_random_reads(uri: &str, disk: &[u8], seed: u64, count: usize) {
    let mut rng = Rng::new(seed);
    let mut args = vec!["-r".to_string(), "-f".into(), "raw".into()];
    let mut expected = Vec::new();
    for _ in 0..count {
        let len = 1 + rng.below(3000);
        let offset = rng.below(disk.len() as u64 - len);
        args.push("-c".into());
        args.push(format!("read -v {offset} {len}"));
        expected.extend((offset..offset + len).map(|o| (o, disk[o as usize])));
    }
    args.push(uri.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = parse_dump(&client("qemu-io", &args));
    assert_eq!(got.len(), expected.len(), "bytes dumped");
    assert!(got == expected, "random reads differ from the disk");
}

#[test]
fn served_archives_read_back_exactly_with_real_clients() {
    if !have_all(&TOOLS) {
        return;
    }
    for (seed, len, chunk) in [(1u64, 24 * M + 1536, "1M"), (2, 9 * M + 512, "64K")] {
        let dir = tempfile::tempdir().unwrap();
        let layout = random_layout(seed, len, 30);
        let (raw, archive) = make_archive(dir.path(), &layout, chunk);
        let disk = layout.bytes();
        let server = ServerProcess::start(&archive, &dir.path().join("nbd.sock"), &[]);
        assert!(server.uri.starts_with("nbd+unix:///?socket="), "{}", server.uri);
        let out = client(
            "qemu-img",
            &["compare", "-f", "raw", raw.to_str().unwrap(), &server.uri],
        );
        assert!(out.contains("identical"), "{out}");
        assert_map_matches(&server.uri, &disk);
        assert_random_reads(&server.uri, &disk, seed, 40);
        client("nbdcopy", &[&server.uri, "null:"]);
        let copy = dir.path().join("copy.raw");
        client("nbdcopy", &[&server.uri, copy.to_str().unwrap()]);
        assert!(std::fs::read(&copy).unwrap() == disk, "nbdcopy's copy differs");
        let (status, _) = server.stop_with("INT");
        assert!(status.success(), "a clean stop exits 0: {status}");
        assert!(!dir.path().join("nbd.sock").exists(), "the socket is removed");
    }
}

#[test]
fn named_exports_tcp_and_the_exit_summary() {
    if !have_all(&TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = random_layout(3, 5 * M, 10);
    let (raw, archive) = make_archive(dir.path(), &layout, "1M");
    let socket = dir.path().join("named.sock");
    let server = ServerProcess::start(&archive, &socket, &["--export-name", "disk one"]);
    assert!(
        server.uri.starts_with("nbd+unix:///disk%20one?socket="),
        "{}",
        server.uri
    );
    client(
        "qemu-img",
        &["compare", "-f", "raw", raw.to_str().unwrap(), &server.uri],
    );
    let wrong = format!("nbd+unix:///other?socket={}", socket.display());
    assert!(
        !client_status("nbdinfo", &[&wrong]).0,
        "an unknown export name is refused"
    );
    let list = client("nbdinfo", &["--list", &server.uri]);
    assert!(list.contains("disk one"), "{list}");
    let info = client("nbdinfo", &["--json", &server.uri]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], 5 * M);
    assert_eq!(export["is_read_only"], true);
    assert_eq!(export["can_multi_conn"], true);
    assert_eq!(export["can_flush"], true);

    // TCP: on loopback by default; here on a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut tcp = std::process::Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args([
            "serve",
            archive.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(tcp.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let uri = event["uri"].as_str().unwrap().to_string();
    assert_eq!(uri, format!("nbd://127.0.0.1:{port}/"));
    let compared = client_status("qemu-img", &["compare", "-f", "raw", raw.to_str().unwrap(), &uri]);
    let _ = tcp.kill();
    let _ = tcp.wait();
    assert!(compared.0, "{}", compared.1);

    // The summary at exit counts what was served and decoded.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(["serve", archive.to_str().unwrap(), "--socket"])
        .arg(dir.path().join("summary.sock"))
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let uri: serde_json::Value = serde_json::from_str(&line).unwrap();
    client(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read 1M 64k",
            uri["uri"].as_str().unwrap(),
        ],
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    drop(server);
    let stopped: serde_json::Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(stopped["event"], "stopped");
    assert!(stopped["bytes_served"].as_u64().unwrap() >= 64 << 10, "{stopped}");
    assert!(stopped["chunks_decoded"].as_u64().unwrap() >= 1, "{stopped}");
    assert!(stopped["bytes_fetched"].as_u64().unwrap() > 0, "{stopped}");
    assert!(stopped["connections"].as_u64().unwrap() >= 1, "{stopped}");
}

/// Applies the same qemu-io commands to a raw copy: the expected disk.
fn expected_after(raw: &Path, dir: &Path, name: &str, commands: &[&str]) -> std::path::PathBuf {
    let expected = dir.join(name);
    std::fs::copy(raw, &expected).unwrap();
    let mut args = vec!["-f", "raw"];
    for c in commands {
        args.extend(["-c", c]);
    }
    let path = expected.to_str().unwrap().to_string();
    args.push(&path);
    client("qemu-io", &args);
    expected
}

#[test]
fn overlay_writes_survive_restart_and_kill_and_commit_to_a_new_archive() {
    if !have_all(&TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = random_layout(4, 12 * M + 2048, 20);
    let (raw, archive) = make_archive(dir.path(), &layout, "1M");
    let socket = dir.path().join("rw.sock");
    let overlay = dir.path().join("disk.overlay");
    let overlay_arg = overlay.to_str().unwrap();
    let first = [
        "write -P 0xab 1000 5000",
        "write -P 0x5c 3M 1M",
        "write -z 5M 300k",
        "discard 8M 1M",
        "write -P 0x11 12M 2048",
    ];
    let second = ["write -P 0xcd 2M 12345", "write -z 100 200"];
    let server = ServerProcess::start(&archive, &socket, &["--overlay", overlay_arg]);
    let info: serde_json::Value = serde_json::from_str(&client("nbdinfo", &["--json", &server.uri])).unwrap();
    assert_eq!(info["exports"][0]["is_read_only"], false);
    let mut args = vec!["-f", "raw"];
    for c in first {
        args.extend(["-c", c]);
    }
    args.push(&server.uri);
    client("qemu-io", &args);
    let expected = expected_after(&raw, dir.path(), "expected1.raw", &first);
    let compare = |uri: &str, expected: &Path| {
        let out = client(
            "qemu-img",
            &["compare", "-f", "raw", expected.to_str().unwrap(), uri],
        );
        assert!(out.contains("identical"), "{out}");
    };
    compare(&server.uri, &expected);
    // A clean restart keeps the writes.
    let (status, _) = server.stop_with("TERM");
    assert!(status.success());
    let server = ServerProcess::start(&archive, &socket, &["--overlay", overlay_arg]);
    compare(&server.uri, &expected);
    // Writes acknowledged before a FLUSH survive kill -9.
    let mut args = vec!["-f", "raw"];
    for c in second {
        args.extend(["-c", c]);
    }
    args.extend(["-c", "flush", &server.uri]);
    client("qemu-io", &args);
    let (status, _) = server.stop_with("KILL");
    assert!(!status.success());
    let expected = expected_after(&expected, dir.path(), "expected2.raw", &second);
    let server = ServerProcess::start(&archive, &socket, &["--overlay", overlay_arg]);
    compare(&server.uri, &expected);
    let disk = std::fs::read(&expected).unwrap();
    assert_map_matches(&server.uri, &disk);
    // A second server on the same overlay is refused while the first runs.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(["serve", archive.to_str().unwrap(), "--socket"])
        .arg(dir.path().join("second.sock"))
        .args(["--overlay", overlay_arg])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use"));
    drop(server);

    // overlay commit: base + overlay -> a new archive that extracts to the written disk.
    let committed = dir.path().join("committed.imgpack");
    let out = client(
        env!("CARGO_BIN_EXE_imgpack"),
        &[
            "overlay",
            "commit",
            overlay_arg,
            "--base",
            archive.to_str().unwrap(),
            "-o",
            committed.to_str().unwrap(),
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["virtual_size"], 12 * M + 2048);
    let extracted = dir.path().join("extracted.raw");
    client(
        env!("CARGO_BIN_EXE_imgpack"),
        &[
            "extract",
            committed.to_str().unwrap(),
            "-o",
            extracted.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&extracted).unwrap() == disk,
        "the committed archive differs from the written disk"
    );
    let data: u64 = disk
        .chunks(4096)
        .filter(|b| b.iter().any(|&x| x != 0))
        .map(|b| b.len() as u64)
        .sum();
    assert_eq!(report["disk_size"], data);
}

#[test]
fn an_overlay_refuses_another_base_archive() {
    if !have_all(&TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, archive) = make_archive(dir.path(), &random_layout(5, 4 * M, 5), "1M");
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other) = make_archive(other_dir.path(), &random_layout(6, 4 * M, 5), "1M");
    let overlay = dir.path().join("o.overlay");
    let server = ServerProcess::start(
        &archive,
        &dir.path().join("a.sock"),
        &["--overlay", overlay.to_str().unwrap()],
    );
    drop(server);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(["serve", other.to_str().unwrap(), "--socket"])
        .arg(dir.path().join("b.sock"))
        .args(["--overlay", overlay.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another base archive"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args([
            "overlay",
            "commit",
            overlay.to_str().unwrap(),
            "--base",
            other.to_str().unwrap(),
            "-o",
        ])
        .arg(dir.path().join("x.imgpack"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!dir.path().join("x.imgpack").exists());
}

#[test]
fn a_damaged_chunk_fails_only_its_requests() {
    if !have_all(&TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new("two chunks of data", 4 * M)
        .with(0, common::texty(&mut Rng::new(9), M as usize))
        .with(2 * M, vec![0x77; M as usize]);
    let (_, archive) = make_archive(dir.path(), &layout, "1M");
    // Damage the first chunk's frame (it starts right after the 64-byte header).
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes[64 + 200] ^= 0xff;
    std::fs::write(&archive, &bytes).unwrap();
    let server = ServerProcess::start(&archive, &dir.path().join("bad.sock"), &[]);
    let (ok, out) = client_status(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read 4096 4096", &server.uri],
    );
    assert!(
        !ok || out.contains("error"),
        "reading the damaged chunk must fail: {out}"
    );
    client(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0x77 2M 1M",
            "-c",
            "read -P 0 1M 1M",
            &server.uri,
        ],
    );
    let (ok, out) = client_status("qemu-io", &["-r", "-f", "raw", "-c", "read 0 512", &server.uri]);
    assert!(
        !ok || out.contains("error"),
        "still failing, still serving: {out}"
    );
    client(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0x77 2M 4k", &server.uri],
    );
}

#[cfg(feature = "library")]
#[test]
fn library_images_are_served_to_accounts_that_may_build_from_them() {
    if !have_all(&TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("lib");
    let layout = random_layout(8, 3 * M, 6);
    let incoming = library.join("incoming/acc-own01");
    std::fs::create_dir_all(&incoming).unwrap();
    layout.write_to(&incoming.join("disk.raw"));
    let out = client(
        env!("CARGO_BIN_EXE_imgpack"),
        &[
            "images",
            "--library",
            library.to_str().unwrap(),
            "--account",
            "acc-own01",
            "--json",
            "register",
            "-a",
            "x86_64",
            "-n",
            "served",
            "-s",
            "disk.raw",
        ],
    );
    let record: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let id = record["id"].as_str().unwrap().to_string();
    let lib_args = ["--library", library.to_str().unwrap()];
    let mut extra: Vec<&str> = lib_args.to_vec();
    extra.extend(["--account", "acc-own01"]);
    let server = ServerProcess::start(Path::new(&id), &dir.path().join("lib.sock"), &extra);
    let raw = dir.path().join("expected.raw");
    layout.write_to(&raw);
    client(
        "qemu-img",
        &["compare", "-f", "raw", raw.to_str().unwrap(), &server.uri],
    );
    drop(server);
    // Another account may not serve a private image, and learns nothing about it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(["serve", &id, "--socket"])
        .arg(dir.path().join("other.sock"))
        .args(lib_args)
        .args(["--account", "acc-oth01"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("no image {id} found")), "{err}");
}
