//! `imgpack batch` end to end through the binary: statuses, naming, failure policy, JSON.

mod common;

use std::path::Path;
use std::process::Command;

use common::{texty, Layout, Rng};

fn imgpack(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn image(path: &Path, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let layout = Layout::new("img", 3 << 20).with(seed * 1000, texty(&mut rng, 200_000));
    layout.write_to(path);
    layout.bytes()
}

/// A qcow version 1 image: recognised, and refused as unsupported.
fn refused(path: &Path) {
    let mut bytes = b"QFI\xfb\0\0\0\x01".to_vec();
    bytes.resize(4096, 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn continue_on_error_converts_the_rest_and_reports_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    let a = image(&inputs.join("a.raw"), 1);
    refused(&inputs.join("b.img"));
    let c = image(&inputs.join("c.img.raw"), 2);
    let out = dir.path().join("out");
    let (code, json, stderr) = imgpack(&[
        "batch",
        inputs.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--continue-on-error",
        "--json",
    ]);
    assert_eq!(code, 1, "{stderr}");
    let files = json["files"].as_array().unwrap();
    let statuses: Vec<&str> = files.iter().map(|f| f["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["ok", "failed", "ok"]);
    assert!(
        files[1]["error"].as_str().unwrap().contains("qcow"),
        "{}",
        files[1]["error"]
    );
    assert_eq!(files[0]["format"], "raw");
    assert_eq!(files[0]["virtual_size"], 3 << 20);
    assert!(files[0]["compressed_size"].as_u64().unwrap() > 0);
    assert_eq!(json["ok"], 2);
    assert_eq!(json["failed"], 1);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    names.sort();
    assert_eq!(names, ["a.imgpack", "c.imgpack"]);
    for (name, want) in [("a", a), ("c", c)] {
        let back = dir.path().join(format!("{name}.back"));
        let archive = out.join(format!("{name}.imgpack"));
        let (code, _, stderr) =
            imgpack(&["extract", archive.to_str().unwrap(), "-o", back.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        assert!(std::fs::read(back).unwrap() == want);
    }
}

#[test]
fn by_default_a_failure_stops_new_files_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    let b = dir.path().join("b.raw");
    let c = dir.path().join("c.raw");
    image(&a, 1);
    refused(&b);
    image(&c, 2);
    let out = dir.path().join("out");
    let (code, json, _) = imgpack(&[
        "batch",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        c.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--jobs",
        "1",
        "--json",
    ]);
    assert_eq!(code, 1);
    let statuses: Vec<&str> = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ok", "failed", "skipped"]);
    assert!(!out.join("c.imgpack").exists());
}

#[test]
fn colliding_names_are_numbered_and_reported_in_the_table() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["x", "y"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        image(&dir.path().join(sub).join("disk.raw"), 3);
    }
    let out = dir.path().join("out");
    let x = dir.path().join("x/disk.raw");
    let y = dir.path().join("y/disk.raw");
    let output = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args([
            "batch",
            x.to_str().unwrap(),
            y.to_str().unwrap(),
            "--out-dir",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("disk-2.imgpack"), "{table}");
    assert!(table.contains("2 converted, 0 failed, 0 skipped"), "{table}");
    assert!(out.join("disk.imgpack").exists() && out.join("disk-2.imgpack").exists());
}
