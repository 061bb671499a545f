//! Oracle tests for VHD, VHDX, VDI and VMDK: qemu-img makes every subformat it can write from
//! a patterned disk (data across grain and block boundaries, zero regions, an odd size), and
//! imgpack's convert + extract must give exactly what `qemu-img convert -O raw` gives.
//! Skipped with a notice when qemu-img is absent (a failure under `IMGPACK_REQUIRE_ORACLES=1`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use imgpack::{convert, extract, info, ConvertOptions, ExtractOptions};

fn have_qemu_img() -> bool {
    common::have("qemu-img")
}

/// A sparse disk of 33 MiB + 1536 bytes: data straddling 64 KiB grains, 1/2/8/32 MiB blocks
/// and the 32 MiB span of one VMDK grain table, with zeros everywhere else.
fn write_pattern(path: &Path) -> Vec<u8> {
    let size = (33 << 20) + 1536;
    let mut disk = vec![0u8; size];
    let mut rng = common::Rng::new(0x9e37_79b9_7f4a_7c15);
    let ranges: [(usize, usize); 9] = [
        (0, 4096),
        ((64 << 10) - 100, 300),
        ((1 << 20) - 7, 20),
        ((2 << 20) - 512, 1024),
        ((3 << 20) + 12345, 70000),
        ((8 << 20) - 1, 2),
        ((32 << 20) - 4096, 8192),
        ((32 << 20) + 65536, 65536),
        (size - 600, 600),
    ];
    for (offset, len) in ranges {
        for byte in &mut disk[offset..offset + len] {
            *byte = rng.byte() | 1;
        }
    }
    std::fs::write(path, &disk).unwrap();
    disk
}

struct Case {
    format: &'static str,
    options: &'static str,
    native_name: &'static str,
    /// What `info` reports as the subformat.
    subformat: &'static str,
}

const CASES: &[Case] = &[
    Case {
        format: "vpc",
        options: "subformat=dynamic",
        native_name: "vpc",
        subformat: "dynamic",
    },
    Case {
        format: "vpc",
        options: "subformat=fixed",
        native_name: "vpc",
        subformat: "fixed",
    },
    Case {
        format: "vdi",
        options: "static=off",
        native_name: "vdi",
        subformat: "dynamic",
    },
    Case {
        format: "vdi",
        options: "static=on",
        native_name: "vdi",
        subformat: "static",
    },
    Case {
        format: "vmdk",
        options: "subformat=monolithicSparse",
        native_name: "vmdk",
        subformat: "monolithicSparse",
    },
    Case {
        format: "vmdk",
        options: "subformat=monolithicSparse,zeroed_grain=on",
        native_name: "vmdk",
        subformat: "monolithicSparse",
    },
    Case {
        format: "vmdk",
        options: "subformat=streamOptimized",
        native_name: "vmdk",
        subformat: "streamOptimized",
    },
    Case {
        format: "vhdx",
        options: "subformat=dynamic",
        native_name: "vhdx",
        subformat: "dynamic",
    },
    Case {
        format: "vhdx",
        options: "subformat=dynamic,block_size=1M",
        native_name: "vhdx",
        subformat: "dynamic",
    },
    Case {
        format: "vhdx",
        options: "subformat=dynamic,block_size=8M,block_state_zero=off",
        native_name: "vhdx",
        subformat: "dynamic",
    },
    Case {
        format: "vhdx",
        options: "subformat=fixed",
        native_name: "vhdx",
        subformat: "fixed",
    },
    Case {
        format: "vhdx",
        options: "subformat=fixed,block_size=2M",
        native_name: "vhdx",
        subformat: "fixed",
    },
];

fn convert_and_extract(image: &Path, dir: &Path, threads: Option<usize>) -> (Vec<u8>, String) {
    let archive = dir.join("out.imgpack");
    let raw = dir.join("out.raw");
    let _ = std::fs::remove_file(&archive);
    let _ = std::fs::remove_file(&raw);
    let options = ConvertOptions {
        threads,
        ..ConvertOptions::default()
    };
    let report = convert(image, &archive, &options).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    extract(&archive, &raw, &ExtractOptions::default()).unwrap();
    (std::fs::read(&raw).unwrap(), report.format)
}

#[test]
fn every_subformat_matches_qemu_img() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("pattern.raw");
    write_pattern(&source);
    for case in CASES {
        let image: PathBuf = dir.path().join(format!("image.{}", case.format));
        let reference = dir.path().join("reference.raw");
        common::qemu_img(
            &["convert", "-f", "raw", "-O", case.format, "-o", case.options]
                .iter()
                .chain(&[source.to_str().unwrap(), image.to_str().unwrap()])
                .copied()
                .collect::<Vec<_>>(),
        );
        common::qemu_img(&[
            "convert",
            "-f",
            case.format,
            "-O",
            "raw",
            image.to_str().unwrap(),
            reference.to_str().unwrap(),
        ]);
        let want = std::fs::read(&reference).unwrap();
        let (got, format) = convert_and_extract(&image, dir.path(), None);
        assert_eq!(format, case.native_name, "{} {}", case.format, case.options);
        assert_eq!(
            got.len(),
            want.len(),
            "{} {}: virtual size",
            case.format,
            case.options
        );
        assert!(
            got == want,
            "{} {}: extracted bytes differ from qemu-img's",
            case.format,
            case.options
        );
        let described = info(&image, &Default::default()).unwrap();
        assert_eq!(described.virtual_size, Some(want.len() as u64));
        assert_eq!(described.refusal, None, "{} {}", case.format, case.options);
        let key = format!(
            "{}_subformat",
            if case.format == "vpc" { "vhd" } else { case.format }
        );
        assert_eq!(
            described.details.get(&key).and_then(|v| v.as_str()),
            Some(case.subformat),
            "{key}"
        );
        std::fs::remove_file(&image).unwrap();
    }
}

#[test]
fn one_thread_gives_the_same_bytes() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("pattern.raw");
    let pattern = write_pattern(&source);
    let image = dir.path().join("image.vmdk");
    common::qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        source.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let (got, _) = convert_and_extract(&image, dir.path(), Some(1));
    assert!(
        got == pattern,
        "streamOptimized VMDK read on one thread differs from the disk"
    );
}

#[test]
fn a_disk_written_by_qemu_io_in_place_matches() {
    // Writes through qemu-io into an existing dynamic image exercise allocation orders that
    // convert does not (blocks stored out of virtual order).
    if !common::have_all(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (format, options) in [
        ("vpc", "subformat=dynamic"),
        ("vdi", "static=off"),
        ("vmdk", "subformat=monolithicSparse"),
        ("vmdk", "subformat=monolithicSparse,zeroed_grain=on"),
        ("vhdx", "subformat=dynamic,block_size=1M"),
    ] {
        let image = dir.path().join(format!("written.{format}"));
        common::qemu_img(&[
            "create",
            "-f",
            format,
            "-o",
            options,
            image.to_str().unwrap(),
            "20M",
        ]);
        // The last write zeroes grains already written: with zeroed_grain=on a VMDK marks
        // them as zeroed grains (entry 1) instead of storing zeros.
        for command in [
            "write -P 0x11 15M 1M",
            "write -P 0x22 300k 70k",
            "write -P 0x33 1M 4k",
            "write -P 0x44 8190k 8k",
            "write -z 15M 256k",
        ] {
            let out = Command::new("qemu-io")
                .args(["-f", format, "-c", command])
                .arg(&image)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "qemu-io: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let want = common::qemu_raw(format, &image, dir.path());
        let (got, _) = convert_and_extract(&image, dir.path(), None);
        assert!(got == want, "{format}: extracted bytes differ from qemu-img's");
    }
}
