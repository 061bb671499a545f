//! `export` checked by the tools that read these formats every day: for every format and
//! option, on random sparse layouts, odd sizes and the small real disk in `testdata/`,
//! `qemu-img compare` says the output is identical to the original, `qemu-img check` finds no
//! error and no leak (qcow2, VMDK, VHDX), and `qemu-img info` shows the expected virtual size,
//! format and options. The same outputs are then read back by imgpack's own readers (convert,
//! then extract), so every writer meets every reader in one test. Then the refusals: a damaged
//! archive, sizes a format cannot hold, options that do not apply; each leaves nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{have, layouts, names_in, random, texty, Layout, Rng};
use imgpack::export::{CompressionType, ExportFormat, Preallocation, Qcow2Compat, Subformat};
use imgpack::{convert, export, extract, ConvertOptions, ErrorKind, ExportOptions, ExtractOptions};
use serde_json::Value;

/// One export to check: its options, qemu-img's name of the format, and what `qemu-img info`
/// must show (JSON pointer, value).
struct Case {
    name: &'static str,
    options: ExportOptions,
    qemu_format: &'static str,
    info: Vec<(&'static str, Value)>,
    /// Whether `qemu-img check` supports the format.
    checkable: bool,
}

fn options(format: ExportFormat) -> ExportOptions {
    ExportOptions {
        format,
        ..ExportOptions::default()
    }
}

fn cases() -> Vec<Case> {
    use serde_json::json;
    let qcow2 = |name, options: ExportOptions, info: Vec<(&'static str, Value)>| Case {
        name,
        options,
        qemu_format: "qcow2",
        info,
        checkable: true,
    };
    let base = options(ExportFormat::Qcow2);
    vec![
        Case {
            name: "raw",
            options: options(ExportFormat::Raw),
            qemu_format: "raw",
            info: vec![],
            checkable: false,
        },
        qcow2(
            "qcow2",
            base.clone(),
            vec![
                ("/cluster-size", json!(65536)),
                ("/format-specific/data/compat", json!("1.1")),
            ],
        ),
        qcow2(
            "qcow2 -c (zstd)",
            ExportOptions {
                compress: true,
                ..base.clone()
            },
            vec![("/format-specific/data/compression-type", json!("zstd"))],
        ),
        qcow2(
            "qcow2 -c --compression-type zlib",
            ExportOptions {
                compress: true,
                compression_type: Some(CompressionType::Zlib),
                ..base.clone()
            },
            vec![("/format-specific/data/compression-type", json!("zlib"))],
        ),
        qcow2(
            "qcow2 --compat 0.10 -c",
            ExportOptions {
                compat: Qcow2Compat::V2,
                compress: true,
                ..base.clone()
            },
            vec![("/format-specific/data/compat", json!("0.10"))],
        ),
        qcow2(
            "qcow2 --compat 0.10",
            ExportOptions {
                compat: Qcow2Compat::V2,
                ..base.clone()
            },
            vec![("/format-specific/data/compat", json!("0.10"))],
        ),
        qcow2(
            "qcow2 --cluster-size 512",
            ExportOptions {
                cluster_size: 512,
                ..base.clone()
            },
            vec![("/cluster-size", json!(512))],
        ),
        qcow2(
            "qcow2 --cluster-size 2M -c",
            ExportOptions {
                cluster_size: 2 << 20,
                compress: true,
                ..base.clone()
            },
            vec![("/cluster-size", json!(2 << 20))],
        ),
        qcow2(
            "qcow2 --cluster-size 4K -c",
            ExportOptions {
                cluster_size: 4096,
                compress: true,
                ..base.clone()
            },
            vec![("/cluster-size", json!(4096))],
        ),
        qcow2(
            "qcow2 --preallocation metadata",
            ExportOptions {
                preallocation: Preallocation::Metadata,
                ..base.clone()
            },
            vec![("/cluster-size", json!(65536))],
        ),
        Case {
            name: "vmdk (streamOptimized)",
            options: options(ExportFormat::Vmdk),
            qemu_format: "vmdk",
            info: vec![("/format-specific/data/create-type", json!("streamOptimized"))],
            checkable: true,
        },
        Case {
            name: "vmdk monolithicSparse",
            options: ExportOptions {
                subformat: Some(Subformat::MonolithicSparse),
                ..options(ExportFormat::Vmdk)
            },
            qemu_format: "vmdk",
            info: vec![("/format-specific/data/create-type", json!("monolithicSparse"))],
            checkable: true,
        },
        Case {
            name: "vhd (dynamic)",
            options: options(ExportFormat::Vhd),
            qemu_format: "vpc",
            info: vec![],
            checkable: false,
        },
        Case {
            name: "vhd fixed",
            options: ExportOptions {
                subformat: Some(Subformat::Fixed),
                ..options(ExportFormat::Vhd)
            },
            qemu_format: "vpc",
            info: vec![],
            checkable: false,
        },
        Case {
            name: "vhdx (dynamic)",
            options: options(ExportFormat::Vhdx),
            qemu_format: "vhdx",
            info: vec![("/cluster-size", json!(8 << 20))],
            checkable: true,
        },
        Case {
            name: "vhdx fixed",
            options: ExportOptions {
                subformat: Some(Subformat::Fixed),
                ..options(ExportFormat::Vhdx)
            },
            qemu_format: "vhdx",
            info: vec![("/cluster-size", json!(8 << 20))],
            checkable: true,
        },
    ]
}

fn qemu_json(args: &[&str]) -> Value {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The layouts: the shared random sparse ones, the real disk, and one larger that spans
/// several of export's 32 MiB windows with data scattered over it.
fn all_layouts() -> Vec<Layout> {
    let mut all = layouts();
    let demo = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/demo.raw")).unwrap();
    all.push(Layout::new("testdata/demo.raw (ext4 disk)", demo.len() as u64).with(0, demo));
    let mut rng = Rng::new(14);
    let len = 40 * (1 << 20) + 3 * 512;
    let mut larger = Layout::new("larger, scattered over two windows", len);
    for _ in 0..24 {
        let n = 1 + rng.below(300_000) as usize;
        let at = rng.below(len - n as u64);
        let bytes = if rng.below(3) == 0 {
            random(&mut rng, n)
        } else {
            texty(&mut rng, n)
        };
        larger = larger.with(at, bytes);
    }
    all.push(larger);
    all
}

/// Exports `archive` as `case` into `dir`, and checks the output with qemu-img and with
/// imgpack's readers against `original` (the raw disk of `len` bytes).
fn check_case(case: &Case, archive: &Path, original: &Path, len: u64, dir: &Path) {
    let out = dir.join(format!("out.{}", case.qemu_format));
    let vm_format = !matches!(case.options.format, ExportFormat::Raw | ExportFormat::Qcow2);
    if len == 0 && vm_format {
        let err = export(archive, &out, &case.options).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(!out.exists());
        return;
    }
    let report = export(archive, &out, &case.options).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    // imgpack reads a raw file as a disk of whole sectors, as qemu-img does.
    let expected_size = len.next_multiple_of(512);
    assert_eq!(report.virtual_size, expected_size, "{}", case.name);
    assert_eq!(
        report.bytes_written,
        std::fs::metadata(&out).unwrap().len(),
        "{}",
        case.name
    );
    let (o, r) = (out.to_str().unwrap(), original.to_str().unwrap());
    let compare = Command::new("qemu-img")
        .args(["compare", "-f", case.qemu_format, "-F", "raw", o, r])
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "{}: qemu-img compare: {}{}",
        case.name,
        String::from_utf8_lossy(&compare.stdout),
        String::from_utf8_lossy(&compare.stderr)
    );
    if case.checkable {
        let check = qemu_json(&["check", "--output=json", "-f", case.qemu_format, o]);
        assert_eq!(check["check-errors"], 0, "{}: {check}", case.name);
        for field in ["leaks", "corruptions", "leaks-fixed"] {
            assert!(
                check.get(field).is_none_or(|v| v == 0),
                "{}: {field} in {check}",
                case.name
            );
        }
    }
    let info = qemu_json(&["info", "--output=json", "-f", case.qemu_format, o]);
    assert_eq!(info["format"], case.qemu_format, "{}", case.name);
    assert_eq!(info["virtual-size"], expected_size, "{}: {info}", case.name);
    for (pointer, value) in &case.info {
        assert_eq!(
            info.pointer(pointer),
            Some(value),
            "{}: {pointer} in {info}",
            case.name
        );
    }

    // imgpack's own reader of the format, then its raw writer.
    let back = dir.join("back.imgpack");
    convert(&out, &back, &ConvertOptions::default())
        .unwrap_or_else(|e| panic!("{}: reading back: {e}", case.name));
    let raw = dir.join("back.raw");
    extract(&back, &raw, &ExtractOptions::default()).unwrap();
    let mut expected = std::fs::read(original).unwrap();
    expected.resize(expected_size as usize, 0);
    assert!(
        std::fs::read(&raw).unwrap() == expected,
        "{}: imgpack read back other bytes",
        case.name
    );
    let details = imgpack::info(&out, &imgpack::InfoOptions::default()).unwrap();
    if let Some(sub) = case.options.subformat {
        let shown = details.details.values().any(|v| v.as_str() == Some(sub.name()));
        assert!(shown, "{}: imgpack info {:?}", case.name, details.details);
    }
    for f in [out, back, raw] {
        std::fs::remove_file(f).unwrap();
    }
}

#[test]
fn every_qcow2_option_is_identical_for_qemu_img_and_reads_back_in_imgpack() {
    check_cases(|case| case.options.format == ExportFormat::Qcow2);
}

#[test]
fn every_other_format_is_identical_for_qemu_img_and_reads_back_in_imgpack() {
    check_cases(|case| case.options.format != ExportFormat::Qcow2);
}

/// Runs the cases `select` picks on every layout (two tests, so they run side by side).
fn check_cases(select: impl Fn(&Case) -> bool) {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<Case> = cases().into_iter().filter(|c| select(c)).collect();
    for layout in all_layouts() {
        let original = dir.path().join("original.raw");
        layout.write_to(&original);
        let archive = dir.path().join("disk.imgpack");
        convert(&original, &archive, &ConvertOptions::default()).unwrap();
        for case in &cases {
            check_case(case, &archive, &original, layout.len, dir.path());
        }
        println!("{}: {} cases", layout.name, cases.len());
    }
}

#[test]
fn a_vhd_for_azure_is_rounded_up_to_a_whole_mib_and_says_so() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let len = (5 << 20) + 512;
    let original = dir.path().join("original.raw");
    Layout::new("odd", len)
        .with(4096, vec![1; 9000])
        .write_to(&original);
    let archive = dir.path().join("disk.imgpack");
    convert(&original, &archive, &ConvertOptions::default()).unwrap();
    let out = dir.path().join("azure.vhd");
    let report = export(
        &archive,
        &out,
        &ExportOptions {
            subformat: Some(Subformat::Fixed),
            force_size: true,
            ..options(ExportFormat::Vhd)
        },
    )
    .unwrap();
    assert_eq!(report.virtual_size, 6 << 20);
    assert!(
        report.note.as_deref().unwrap_or("").contains("whole MiB"),
        "{report:?}"
    );
    let info = qemu_json(&["info", "--output=json", "-f", "vpc", out.to_str().unwrap()]);
    assert_eq!(info["virtual-size"], 6 << 20);
    // A fixed VHD is the disk followed by its 512-byte footer.
    assert_eq!(std::fs::metadata(&out).unwrap().len(), (6 << 20) + 512);
    common::qemu_img(&[
        "compare",
        "-f",
        "vpc",
        "-F",
        "raw",
        out.to_str().unwrap(),
        original.to_str().unwrap(),
    ]);
}

/// An archive of `len` bytes with a few scattered data regions, in `dir`.
fn small_archive(dir: &Path, len: u64) -> PathBuf {
    let original = dir.join("original.raw");
    let mut rng = Rng::new(3);
    let mut layout = Layout::new("small", len);
    for i in 0..6 {
        layout = layout.with(i * (len / 6), random(&mut rng, 70_000));
    }
    layout.write_to(&original);
    let archive = dir.join("disk.imgpack");
    convert(&original, &archive, &ConvertOptions::default()).unwrap();
    archive
}

#[test]
fn a_damaged_chunk_fails_every_format_naming_chunk_and_offset_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let archive = small_archive(dir.path(), 6 << 20);
    let reader = imgpack::archive::reader::ArchiveReader::open_path(&archive).unwrap();
    let record = reader.records()[3].clone();
    drop(reader);
    let mut bytes = std::fs::read(&archive).unwrap();
    let poke = (record.stored_offset + u64::from(record.stored_len) / 2) as usize;
    bytes[poke] ^= 0x55;
    std::fs::write(&archive, &bytes).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    for case in cases() {
        let err = export(&archive, &out_dir.join("disk.out"), &case.options)
            .expect_err(&format!("{}: exported a damaged archive", case.name));
        let text = err.to_string();
        assert!(
            matches!(err.kind(), ErrorKind::Checksum | ErrorKind::Corrupt),
            "{}: {text}",
            case.name
        );
        assert!(
            text.contains(&format!("chunk {}", record.chunk)),
            "{}: {text}",
            case.name
        );
        assert_eq!(err.path(), Some(archive.as_path()), "{}: {text}", case.name);
        assert!(err.offset().is_some(), "{}: {text}", case.name);
        assert!(
            names_in(&out_dir).is_empty(),
            "{}: left {:?}",
            case.name,
            names_in(&out_dir)
        );
    }
}

#[test]
fn sizes_a_format_cannot_hold_are_refused_before_writing_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("big.raw");
    // 2041 GiB: past VHD's 2040 GiB and VMDK's; a sparse file holding one block.
    Layout::new("big", 2041 << 30)
        .with(5 << 30, vec![7; 4096])
        .write_to(&original);
    let archive = dir.path().join("big.imgpack");
    convert(&original, &archive, &ConvertOptions::default()).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    for (format, limit) in [(ExportFormat::Vhd, "2040 GiB"), (ExportFormat::Vmdk, "2 TiB")] {
        let err = export(&archive, &out_dir.join("x"), &options(format)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
        assert!(err.to_string().contains(limit), "{err}");
        assert!(names_in(&out_dir).is_empty());
    }
    // qcow2 with 512-byte clusters would need a 64 GiB L1 table for this disk.
    let err = export(
        &archive,
        &out_dir.join("x"),
        &ExportOptions {
            cluster_size: 512,
            ..options(ExportFormat::Qcow2)
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    assert!(err.to_string().contains("32 MiB"), "{err}");
    assert!(names_in(&out_dir).is_empty());
}

#[test]
fn options_that_do_not_apply_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let archive = small_archive(dir.path(), 1 << 20);
    let out = dir.path().join("x");
    let refused = [
        ExportOptions {
            compress: true,
            ..options(ExportFormat::Vhdx)
        },
        ExportOptions {
            subformat: Some(Subformat::Fixed),
            ..options(ExportFormat::Vmdk)
        },
        ExportOptions {
            compat: Qcow2Compat::V2,
            compress: true,
            compression_type: Some(CompressionType::Zstd),
            ..options(ExportFormat::Qcow2)
        },
        ExportOptions {
            cluster_size: 3000,
            ..options(ExportFormat::Qcow2)
        },
        ExportOptions {
            compress: true,
            preallocation: Preallocation::Metadata,
            ..options(ExportFormat::Qcow2)
        },
        ExportOptions {
            force_size: true,
            ..options(ExportFormat::Vhdx)
        },
    ];
    for options in refused {
        let err = export(&archive, &out, &options).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{options:?}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn a_damaged_index_fails_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let archive = small_archive(dir.path(), 6 << 20);
    let mut bytes = std::fs::read(&archive).unwrap();
    // The index sits between the last frame and the 48-byte footer: poke its last record.
    let at = bytes.len() - 48 - 5;
    bytes[at] ^= 0x5a;
    std::fs::write(&archive, &bytes).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    for format in [ExportFormat::Qcow2, ExportFormat::Vmdk, ExportFormat::Vhdx] {
        let err = export(&archive, &out_dir.join("x"), &options(format)).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Checksum | ErrorKind::Corrupt),
            "{err}"
        );
        assert_eq!(err.path(), Some(archive.as_path()), "{err}");
        assert!(err.offset().is_some(), "{err}");
        assert!(names_in(&out_dir).is_empty());
    }
}
