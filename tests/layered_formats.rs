//! Random-access formats arriving as streams: qcow2 and VMDK/VHD/VHDX/VDI on standard input
//! and inside gzip are spilled to an unnamed file and read exactly as from a file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use imgpack::{convert, extract, ConvertOptions, ExtractOptions};

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(rel)
}

/// The raw disk imgpack reads from `input`, via convert and extract.
fn disk_of(input: &Path, dir: &Path) -> Vec<u8> {
    let archive = dir.join("x.imgpack");
    let raw = dir.join("x.raw");
    convert(input, &archive, &ConvertOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    extract(&archive, &raw, &ExtractOptions::default()).unwrap();
    std::fs::read(raw).unwrap()
}

/// The same through the binary, reading `bytes` on standard input.
fn disk_via_stdin(bytes: &[u8], dir: &Path) -> (String, Vec<u8>) {
    let archive = dir.join("stdin.imgpack");
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args([
            "convert",
            "-",
            "-o",
            archive.to_str().unwrap(),
            "--json",
            "--temp-dir",
            dir.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let raw = dir.join("stdin.raw");
    extract(&archive, &raw, &ExtractOptions::default()).unwrap();
    (
        json["format"].as_str().unwrap().to_string(),
        std::fs::read(raw).unwrap(),
    )
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn qcow2_on_standard_input_reads_as_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["zlib-4k.qcow2", "snapshot-4k.qcow2", "zstd-extl2.qcow2"] {
        let path = testdata(&format!("qcow2/{name}"));
        let want = disk_of(&path, dir.path());
        let (format, got) = disk_via_stdin(&std::fs::read(&path).unwrap(), dir.path());
        assert_eq!(format, "qcow2");
        assert!(got == want, "{name}: stdin and file disagree");
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 4, "spill files left behind: {names:?}");
}

#[test]
fn gzipped_and_piped_vm_formats_read_as_the_plain_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, inner) in [
        ("vmdk-stream.vmdk.gz", "vmdk"),
        ("vmdk-sparse.vmdk.gz", "vmdk"),
        ("vhdx-dynamic.vhdx.gz", "vhdx"),
        ("vhd-dynamic.vhd.gz", "vpc"),
        ("vdi-dynamic.vdi.gz", "vdi"),
    ] {
        let gz = testdata(&format!("formats/{name}"));
        let plain = dir.path().join(name.trim_end_matches(".gz"));
        std::fs::write(&plain, gunzip(&gz)).unwrap();
        let want = disk_of(&plain, dir.path());
        let report = convert(&gz, &dir.path().join("gz.imgpack"), &ConvertOptions::default()).unwrap();
        assert_eq!(report.format, format!("gzip>{inner}"));
        assert!(
            disk_of(&gz, dir.path()) == want,
            "{name}: gzip layer changed the disk"
        );
        let (format, got) = disk_via_stdin(&std::fs::read(&plain).unwrap(), dir.path());
        assert_eq!(format, inner);
        assert!(got == want, "{name}: stdin and file disagree");
    }
}
