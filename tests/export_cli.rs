//! `imgpack export` and `imgpack images download` through the built binary: streaming to a
//! pipe (and the refusal of formats that must seek), the `--json` report and `--sha256`, a
//! file-size limit mid-export, and downloads with the library's visibility rules.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{have, names_in, random, texty, Layout, Rng};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn imgpack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn succeeded(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 9 MiB + 1 KiB disk with scattered data, and its archive, in `dir`.
fn disk_and_archive(dir: &Path) -> (String, String) {
    let mut rng = Rng::new(9);
    let len = (9 << 20) + 1024;
    let mut layout = Layout::new("disk", len);
    for i in 0..8u64 {
        let bytes = if i % 2 == 0 {
            random(&mut rng, 50_000)
        } else {
            texty(&mut rng, 300_000)
        };
        layout = layout.with(i * (len / 9), bytes);
    }
    let raw = dir.join("disk.raw");
    layout.write_to(&raw);
    let archive = dir.join("disk.imgpack");
    succeeded(
        &imgpack(&["convert", raw.to_str().unwrap(), "-o", archive.to_str().unwrap()]),
        "convert",
    );
    (raw.to_str().unwrap().into(), archive.to_str().unwrap().into())
}

#[test]
fn vmdk_and_raw_stream_to_a_pipe_and_seeking_formats_are_refused_there() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, archive) = disk_and_archive(dir.path());
    let out = imgpack(&["export", &archive, "-o", "-", "-O", "vmdk"]);
    succeeded(&out, "export -O vmdk -o -");
    let streamed = dir.path().join("streamed.vmdk");
    fs::write(&streamed, &out.stdout).unwrap();
    common::qemu_img(&[
        "compare",
        "-f",
        "vmdk",
        "-F",
        "raw",
        streamed.to_str().unwrap(),
        &raw,
    ]);

    let out = imgpack(&["export", &archive, "-o", "-"]);
    succeeded(&out, "export -O raw -o -");
    assert!(
        out.stdout == fs::read(&raw).unwrap(),
        "raw to standard output differs"
    );

    for format in ["qcow2", "vhd", "vhdx"] {
        let out = imgpack(&["export", &archive, "-o", "-", "-O", format]);
        assert!(!out.status.success(), "{format} to standard output succeeded");
        assert!(out.stdout.is_empty(), "{format}: wrote to standard output");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("to a file only"), "{format}: {err}");
    }
    let out = imgpack(&[
        "export",
        &archive,
        "-o",
        "-",
        "-O",
        "vmdk",
        "--subformat",
        "monolithicSparse",
    ]);
    assert!(!out.status.success() && out.stdout.is_empty());
}

#[test]
fn json_report_and_sha256_of_the_written_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, archive) = disk_and_archive(dir.path());
    let target = dir.path().join("out.qcow2");
    let out = imgpack(&[
        "export",
        &archive,
        "-o",
        target.to_str().unwrap(),
        "-O",
        "qcow2",
        "-c",
        "--cluster-size",
        "128K",
        "--sha256",
        "--json",
    ]);
    let report: Value = serde_json::from_str(&succeeded(&out, "export --json")).unwrap();
    let file = fs::read(&target).unwrap();
    assert_eq!(report["format"], "qcow2");
    assert_eq!(report["virtual_size"], (9 << 20) + 1024);
    assert_eq!(report["bytes_written"], file.len() as u64);
    assert_eq!(report["cluster_size"], 128 << 10);
    assert_eq!(report["compression_type"], "zstd");
    assert_eq!(report["compat"], "1.1");
    assert!(report["seconds"].as_f64().is_some());
    let expected: String = Sha256::digest(&file).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(report["sha256"], expected);

    // Without --json the digest is printed the way sha256sum prints it.
    let vhd = dir.path().join("out.vhd");
    let out = imgpack(&[
        "export",
        &archive,
        "-o",
        vhd.to_str().unwrap(),
        "-O",
        "vpc",
        "--sha256",
    ]);
    let text = succeeded(&out, "export --sha256");
    let expected: String = Sha256::digest(fs::read(&vhd).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(text.contains(&format!("{expected}  {}", vhd.display())), "{text}");
}

#[test]
fn a_file_size_limit_mid_export_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, archive) = disk_and_archive(dir.path());
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    for format in ["raw", "qcow2", "vhdx"] {
        // ulimit -f counts 1 KiB blocks: 1 MiB, far less than the data.
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -f 1024 && exec {} export {archive} -o {}/x -O {format} --quiet",
                env!("CARGO_BIN_EXE_imgpack"),
                out_dir.display()
            ))
            .status()
            .unwrap();
        assert!(
            !status.success(),
            "{format}: export past the file-size limit succeeded"
        );
        assert!(
            names_in(&out_dir).is_empty(),
            "{format}: left {:?}",
            names_in(&out_dir)
        );
    }
}

const OWNER: &str = "acc-xxxxx";
const OTHER: &str = "acc-yyyyy";

fn images(library: &Path, account: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .env("IMGPACK_LIBRARY", library)
        .env("IMGPACK_ACCOUNT", account)
        .env_remove("IMGPACK_OPERATOR")
        .arg("images")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn images_download_exports_what_the_account_may_build_from() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("library");
    let incoming = library.join("incoming").join(OWNER);
    fs::create_dir_all(&incoming).unwrap();
    let (raw, _) = disk_and_archive(dir.path());
    fs::copy(&raw, incoming.join("disk.img")).unwrap();
    let out = images(
        &library,
        OWNER,
        &[
            "register", "-a", "x86_64", "-n", "Disk", "-s", "disk.img", "--json",
        ],
    );
    let text = succeeded(&out, "register");
    let record: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let id = record["id"].as_str().unwrap().to_string();

    let vhdx = dir.path().join("download.vhdx");
    let out = images(
        &library,
        OWNER,
        &[
            "download",
            &id,
            "-o",
            vhdx.to_str().unwrap(),
            "-O",
            "vhdx",
            "--json",
        ],
    );
    let report: Value = serde_json::from_str(&succeeded(&out, "download")).unwrap();
    assert_eq!(report["format"], "vhdx");
    common::qemu_img(&["compare", "-f", "vhdx", "-F", "raw", vhdx.to_str().unwrap(), &raw]);

    let out = images(&library, OWNER, &["download", &id, "-o", "-", "-O", "vmdk"]);
    succeeded(&out, "download -o -");
    let streamed = dir.path().join("streamed.vmdk");
    fs::write(&streamed, &out.stdout).unwrap();
    common::qemu_img(&[
        "compare",
        "-f",
        "vmdk",
        "-F",
        "raw",
        streamed.to_str().unwrap(),
        &raw,
    ]);

    // Another account cannot download a private image, and is told it does not exist.
    let elsewhere = dir.path().join("other.qcow2");
    let out = images(
        &library,
        OTHER,
        &["download", &id, "-o", elsewhere.to_str().unwrap(), "-O", "qcow2"],
    );
    assert!(!out.status.success());
    let unknown = images(&library, OTHER, &["show", &id]);
    assert_eq!(
        out.stderr, unknown.stderr,
        "the refusal differs from an unknown id's"
    );
    assert!(!elsewhere.exists());

    // Made public, it can.
    succeeded(
        &images(&library, OWNER, &["update", &id, "--public", "true"]),
        "update",
    );
    let out = images(
        &library,
        OTHER,
        &["download", &id, "-o", elsewhere.to_str().unwrap(), "-O", "qcow2"],
    );
    succeeded(&out, "download by another account of a public image");
    common::qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        elsewhere.to_str().unwrap(),
        &raw,
    ]);

    // Destroyed, it cannot.
    succeeded(&images(&library, OWNER, &["destroy", &id]), "destroy");
    let gone = dir.path().join("gone.raw");
    let out = images(&library, OWNER, &["download", &id, "-o", gone.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!gone.exists());
}
