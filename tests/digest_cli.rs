//! The command line's digests: `imgpack digest FILE [--json] [--verify]`, `info`'s `digest`,
//! `extract --sha256` to a file and to standard output.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{have, texty, Layout, Rng};

const M: u64 = 1 << 20;

fn imgpack(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(args)
        .output()
        .expect("run imgpack");
    assert!(
        out.status.success(),
        "imgpack {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn digest_info_and_extract_sha256_on_the_command_line() {
    if !have("sha256sum") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let mut rng = Rng::new(5);
    Layout::new("cli", 3 * M + 512)
        .with(10, texty(&mut rng, 50_000))
        .with(3 * M, texty(&mut rng, 512))
        .write_to(&raw);
    let archive = dir.path().join("disk.imgpack");
    let (raw_s, archive_s) = (raw.to_str().unwrap(), archive.to_str().unwrap());

    let digest = json(&imgpack(&["digest", raw_s, "--json"]))["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        digest.starts_with("sha256-tree:") && digest.len() == 12 + 64,
        "{digest}"
    );
    let human = String::from_utf8(imgpack(&["digest", raw_s]).stdout).unwrap();
    assert_eq!(human, format!("{digest}  {raw_s}\n"), "sha256sum's layout");

    let converted = json(&imgpack(&[
        "convert", raw_s, "-o", archive_s, "--json", "--quiet",
    ]));
    assert_eq!(converted["digest"], digest.as_str());
    assert_eq!(
        json(&imgpack(&["info", archive_s, "--json"]))["digest"],
        digest.as_str()
    );
    let stored = json(&imgpack(&["digest", archive_s, "--json"]));
    assert_eq!(
        (stored["digest"].as_str(), stored["digest_source"].as_str()),
        (Some(digest.as_str()), Some("stored"))
    );
    let recomputed = json(&imgpack(&["digest", archive_s, "--verify", "--json"]));
    assert_eq!(recomputed["digest_source"], "computed");
    assert_eq!(recomputed["digest"], digest.as_str());
    let checked = json(&imgpack(&["verify", archive_s, "--json"]));
    assert_eq!(
        (checked["ok"].as_bool(), checked["digest_ok"].as_bool()),
        (Some(true), Some(true))
    );

    let want = sha256sum(&raw);
    let out = dir.path().join("out.raw");
    let out_s = out.to_str().unwrap();
    let extracted = json(&imgpack(&[
        "extract", archive_s, "-o", out_s, "--sha256", "--json",
    ]));
    assert_eq!(extracted["sha256"], want.as_str());
    assert_eq!(sha256sum(&out), want);
    let human = String::from_utf8(imgpack(&["extract", archive_s, "-o", out_s, "--sha256"]).stdout).unwrap();
    assert!(human.ends_with(&format!("\n{want}  {out_s}\n")), "{human}");
    let plain = json(&imgpack(&["extract", archive_s, "-o", out_s, "--json"]));
    assert!(plain.get("sha256").is_none(), "only when asked for");

    // To standard output the disk goes to stdout and the sum, sha256sum-style, to stderr.
    let streamed = imgpack(&["extract", archive_s, "-o", "-", "--sha256"]);
    assert!(streamed.stdout == std::fs::read(&raw).unwrap());
    assert_eq!(
        String::from_utf8(streamed.stderr).unwrap(),
        format!("{want}  -\n")
    );
}
