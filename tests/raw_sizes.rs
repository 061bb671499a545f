//! A raw file whose size is not a multiple of 512 is, to qemu-img, a disk rounded up to the next
//! sector with zeros (`qemu-img info` shows the rounded virtual size and `qemu-img convert -O raw`
//! writes the zeros). imgpack reads it the same way on every path (file, gzip stream, standard
//! input) and reports the rounded size consistently in `convert`, `info` and the archive.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use imgpack::{convert, extract, info, ConvertOptions, ExtractOptions};

fn odd_disk(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    common::Rng::new(len as u64).fill(&mut bytes);
    bytes
}

/// What `qemu-img convert -O raw` makes of a raw file of `bytes`, if qemu-img is here.
fn qemu_reference(bytes: &[u8], dir: &Path) -> Option<Vec<u8>> {
    if !common::have("qemu-img") {
        return None;
    }
    let input = dir.join("qemu-in.raw");
    let output = dir.join("qemu-out.raw");
    std::fs::write(&input, bytes).unwrap();
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(&input)
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success());
    Some(std::fs::read(output).unwrap())
}

fn rounded(bytes: &[u8]) -> Vec<u8> {
    let mut disk = bytes.to_vec();
    disk.resize(bytes.len().next_multiple_of(512), 0);
    disk
}

#[test]
fn odd_raw_files_are_rounded_up_to_a_sector_like_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    for len in [1, 511, 1000, 512 * 3, (1 << 20) + 7] {
        let bytes = odd_disk(len);
        let want = rounded(&bytes);
        if let Some(reference) = qemu_reference(&bytes, dir.path()) {
            assert!(reference == want, "{len}: qemu-img does not round as expected");
        }
        let input = dir.path().join("odd.raw");
        std::fs::write(&input, &bytes).unwrap();
        let described = info(&input, &Default::default()).unwrap();
        assert_eq!(described.file_size, len as u64);
        assert_eq!(described.virtual_size, Some(want.len() as u64), "{len}");

        let archive = dir.path().join("odd.imgpack");
        let back = dir.path().join("back.raw");
        let _ = std::fs::remove_file(&archive);
        let _ = std::fs::remove_file(&back);
        let report = convert(&input, &archive, &ConvertOptions::default()).unwrap();
        assert_eq!(report.virtual_size, want.len() as u64, "{len}");
        assert_eq!(
            info(&archive, &Default::default()).unwrap().virtual_size,
            Some(want.len() as u64)
        );
        extract(&archive, &back, &ExtractOptions::default()).unwrap();
        assert!(std::fs::read(&back).unwrap() == want, "{len}: file path");

        // The same disk inside gzip (the stream path).
        let gz = dir.path().join("odd.raw.gz");
        let mut encoder =
            flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
        encoder.write_all(&bytes).unwrap();
        encoder.finish().unwrap();
        std::fs::remove_file(&archive).unwrap();
        let report = convert(&gz, &archive, &ConvertOptions::default()).unwrap();
        assert_eq!(report.virtual_size, want.len() as u64, "{len}: gzip");
        std::fs::remove_file(&back).unwrap();
        extract(&archive, &back, &ExtractOptions::default()).unwrap();
        assert!(std::fs::read(&back).unwrap() == want, "{len}: gzip path");
    }
}

#[test]
fn standard_input_is_rounded_too() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = odd_disk(70_001);
    let archive = dir.path().join("stdin.imgpack");
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(["convert", "-", "-o"])
        .arg(&archive)
        .args(["--json", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["virtual_size"], 70_144);
    let back = dir.path().join("back.raw");
    extract(&archive, &back, &ExtractOptions::default()).unwrap();
    assert!(std::fs::read(&back).unwrap() == rounded(&bytes));
}
