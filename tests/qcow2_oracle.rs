//! Oracle tests: images made by qemu-img and qemu-io with every option imgpack must read; for
//! each, `convert` then `extract` must give exactly the bytes of `qemu-img convert -O raw`.
//! Skipped (with a message) where qemu-img or qemu-io is absent, failed instead under
//! `IMGPACK_REQUIRE_ORACLES=1` (see `tests/common/oracle.rs`).

mod common;
#[path = "qcow2_common/mod.rs"]
mod qcow2;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imgpack::input::qcow2::Qcow2Source;
use imgpack::input::DiskSource;

fn have_qemu() -> bool {
    common::have_all(&["qemu-img", "qemu-io"])
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("running qemu tool");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_io(image: &Path, commands: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    let image = image.to_str().unwrap();
    args.push(image);
    run("qemu-io", &args);
}

/// Writes that straddle cluster and subcluster boundaries, zero writes (with and without
/// unmapping) and discards, for a disk of 8 MiB.
const WRITES: &[&str] = &[
    "write -P 0x5a 0 3k",
    "write -P 0xa5 15872 1k",
    "write -P 0x11 65000 70000",
    "write -P 0x22 1m 300k",
    "write -z 1100k 8k",
    "write -z -u 1200k 64k",
    "discard 1300k 4k",
    "write -P 0x3c 2047k 1536",
    "write -P 0x6b 4m 2m",
    "discard 5m 512k",
    "write -P 0xe7 8387584 512",
];

/// Checks that imgpack reads `image` as qemu-img does, through convert+extract and directly.
fn check(image: &Path, dir: &Path) {
    let reference = dir.join("reference.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            reference.to_str().unwrap(),
        ],
    );
    let want = std::fs::read(&reference).unwrap();
    std::fs::remove_file(&reference).unwrap();
    for chunk_size in [64 << 10, 1 << 20] {
        let (got, disk_size) = qcow2::round_trip(image, dir, chunk_size, None)
            .unwrap_or_else(|e| panic!("{}: {e}", image.display()));
        assert!(
            got == want,
            "{} (chunk {chunk_size}) differs from qemu-img",
            image.display()
        );
        assert_eq!(disk_size, qcow2::nonzero_blocks(&want), "{}", image.display());
    }
    let source = Qcow2Source::new(std::fs::read(image).unwrap(), image).unwrap();
    assert!(
        qcow2::read_every_piece(&source, 1536).unwrap() == want,
        "{}",
        image.display()
    );
    assert!(
        qcow2::read_disk(&source, 4096).unwrap() == want,
        "{}",
        image.display()
    );
}

fn create(dir: &Path, name: &str, options: &str, size: &str) -> PathBuf {
    let image = dir.join(name);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            options,
            image.to_str().unwrap(),
            size,
        ],
    );
    image
}

#[test]
fn versions_cluster_sizes_and_refcount_widths() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        "compat=0.10,cluster_size=512",
        "compat=0.10,cluster_size=64k",
        "compat=1.1,cluster_size=512",
        "compat=1.1,cluster_size=1k",
        "compat=1.1,cluster_size=4k",
        "compat=1.1,cluster_size=64k",
        "compat=1.1,cluster_size=2M",
        "refcount_bits=1",
        "refcount_bits=2",
        "refcount_bits=4",
        "refcount_bits=8",
        "refcount_bits=32",
        "refcount_bits=64,cluster_size=4k",
        "lazy_refcounts=on",
        "extended_l2=on,cluster_size=16k",
        "extended_l2=on,cluster_size=64k",
        "extended_l2=on,cluster_size=2M",
        "preallocation=metadata",
        "preallocation=metadata,extended_l2=on",
        "preallocation=falloc,cluster_size=16k",
        "preallocation=full,cluster_size=16k",
    ];
    for (i, options) in cases.iter().enumerate() {
        let image = create(tmp.path(), &format!("case{i}.qcow2"), options, "8M");
        qemu_io(&image, WRITES);
        check(&image, tmp.path());
    }
}

#[test]
fn compressed_clusters_zlib_and_zstd() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Varied, partly compressible data so compressed clusters have different sizes.
    let raw = tmp.path().join("source.raw");
    let mut data = vec![0u8; 4 << 20];
    let mut rng = common::Rng::new(0x1234_5678_9abc_def0);
    for (i, byte) in data.iter_mut().enumerate() {
        if (i / 40_000) % 3 == 1 {
            continue; // zero stretches
        }
        *byte = if (i / 100_000) % 2 == 0 {
            rng.below(16) as u8
        } else {
            (i % 251) as u8
        };
    }
    std::fs::write(&raw, &data).unwrap();
    for options in [
        "compression_type=zlib,cluster_size=512",
        "compression_type=zlib,cluster_size=4k",
        "compression_type=zlib,cluster_size=64k",
        "compression_type=zlib,cluster_size=2M",
        "compression_type=zstd,cluster_size=512",
        "compression_type=zstd,cluster_size=64k",
        "compression_type=zstd,cluster_size=2M",
        "compression_type=zstd,extended_l2=on,cluster_size=32k",
        "compat=0.10,cluster_size=4k",
    ] {
        let image = tmp.path().join("compressed.qcow2");
        run(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                options,
                raw.to_str().unwrap(),
                image.to_str().unwrap(),
            ],
        );
        check(&image, tmp.path());
        // Overwrite parts of compressed clusters, zero and discard some.
        qemu_io(
            &image,
            &["write -P 0x77 100k 5k", "write -z 2m 70k", "discard 3m 512k"],
        );
        check(&image, tmp.path());
    }
}

#[test]
fn snapshots_and_changes_after_them() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for options in ["compat=1.1", "compat=0.10", "extended_l2=on", "cluster_size=4k"] {
        let image = create(tmp.path(), "snap.qcow2", options, "8M");
        qemu_io(&image, WRITES);
        run("qemu-img", &["snapshot", "-c", "one", image.to_str().unwrap()]);
        qemu_io(
            &image,
            &["write -P 0x99 60k 10k", "write -z 1m 64k", "discard 4m 1m"],
        );
        run("qemu-img", &["snapshot", "-c", "two", image.to_str().unwrap()]);
        qemu_io(&image, &["write -P 0x98 7m 600k", "discard 0 4k"]);
        check(&image, tmp.path());
        let info = imgpack::info(&image, &Default::default()).unwrap();
        assert_eq!(info.details["snapshots"], 2);
    }
}

#[test]
fn dirty_image_and_odd_sizes() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = create(tmp.path(), "dirty.qcow2", "lazy_refcounts=on", "8M");
    // abort leaves the dirty bit set with lazy refcounts.
    let _ = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x42 1m 1m", "-c", "abort"])
        .arg(&image)
        .output();
    let info = imgpack::info(&image, &Default::default()).unwrap();
    assert_eq!(info.details["incompatible_features"]["bits"], 1, "dirty bit set");
    check(&image, tmp.path());

    // A persistent dirty bitmap (bitmaps extension, autoclear bit 0).
    let image = create(tmp.path(), "bitmap.qcow2", "cluster_size=64k", "8M");
    qemu_io(&image, &["write -P 0x61 0 100k"]);
    run("qemu-img", &["bitmap", "--add", image.to_str().unwrap(), "b0"]);
    qemu_io(&image, &["write -P 0x62 1m 100k"]);
    let info = imgpack::info(&image, &Default::default()).unwrap();
    assert_eq!(info.details["autoclear_features"]["bits"], 1);
    check(&image, tmp.path());

    // A virtual size that is not a multiple of the cluster size, compressed and not.
    let image = create(tmp.path(), "odd.qcow2", "cluster_size=64k", "8389120");
    qemu_io(&image, &["write -P 0x31 8m 512", "write -P 0x32 0 512"]);
    check(&image, tmp.path());
    let compressed = tmp.path().join("odd-c.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            image.to_str().unwrap(),
            compressed.to_str().unwrap(),
        ],
    );
    check(&compressed, tmp.path());
}

#[test]
fn header_lengths_104_and_120() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = create(tmp.path(), "h.qcow2", "cluster_size=64k", "8M");
    qemu_io(&image, WRITES);
    let original = std::fs::read(&image).unwrap();
    assert_eq!(&original[100..104], &112u32.to_be_bytes());
    // 104: the extensions at 112 are no longer found (8 zero bytes end the list at 104).
    let mut short = original.clone();
    short[100..104].copy_from_slice(&104u32.to_be_bytes());
    let path = tmp.path().join("h104.qcow2");
    std::fs::write(&path, &short).unwrap();
    check(&path, tmp.path());
    // 120: an unknown 8-byte field, extensions moved along.
    let mut long = original.clone();
    long.copy_within(112..65536 - 8, 120);
    long[112..120].fill(0);
    long[100..104].copy_from_slice(&120u32.to_be_bytes());
    let path = tmp.path().join("h120.qcow2");
    std::fs::write(&path, &long).unwrap();
    check(&path, tmp.path());
    let info = imgpack::info(&path, &Default::default()).unwrap();
    assert_eq!(info.details["header_length"], 120);
}

#[test]
fn refused_images_are_refused_with_the_reason_and_nothing_written() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = create(tmp.path(), "base.qcow2", "cluster_size=64k", "8M");
    let overlay = tmp.path().join("overlay.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            "-F",
            "qcow2",
            overlay.to_str().unwrap(),
        ],
    );
    let data_file = create(
        tmp.path(),
        "external.qcow2",
        &format!("data_file={}", tmp.path().join("external.data").display()),
        "8M",
    );
    let luks = tmp.path().join("luks.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=sec0,data=123456",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            luks.to_str().unwrap(),
            "8M",
        ],
    );
    let cases = [
        (&overlay, "backing file", imgpack::ErrorKind::Unsupported),
        (&data_file, "external data file", imgpack::ErrorKind::Unsupported),
        (&luks, "LUKS", imgpack::ErrorKind::Unsupported),
    ];
    for (image, reason, kind) in cases {
        let out = tmp.path().join("refused.imgpack");
        let err = imgpack::convert(image, &out, &Default::default()).unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().contains(reason), "{err}");
        assert!(!out.exists(), "nothing written for {}", image.display());
        let info = imgpack::info(image, &Default::default()).unwrap();
        assert_eq!(info.format, "qcow2");
        assert!(
            info.refusal.as_deref().unwrap_or("").contains(reason),
            "{:?}",
            info.refusal
        );
    }
    // The virtual-size limit applies to qcow2 too.
    let big = create(tmp.path(), "big.qcow2", "cluster_size=64k", "2T");
    let options = imgpack::ConvertOptions {
        limits: imgpack::InputLimits {
            max_virtual_size: 1 << 40,
        },
        ..Default::default()
    };
    let out = tmp.path().join("big.imgpack");
    let err = imgpack::convert(&big, &out, &options).unwrap_err();
    assert_eq!(err.kind(), imgpack::ErrorKind::LimitExceeded);
    assert!(!out.exists());
}

#[test]
fn huge_sparse_disk_costs_nothing() {
    if !have_qemu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = create(tmp.path(), "huge.qcow2", "cluster_size=64k", "64T");
    let end = (64u64 << 40) - 4096;
    qemu_io(
        &image,
        &[
            "write -P 0x51 0 4k",
            &format!("write -P 0x52 {} 4k", 37u64 << 40),
            &format!("write -P 0x53 {end} 4k"),
        ],
    );
    let started = Instant::now();
    let out = tmp.path().join("huge.imgpack");
    let report = imgpack::convert(&image, &out, &Default::default()).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(report.virtual_size, 64 << 40);
    assert_eq!(report.disk_size, 3 * 4096);
    let source = Qcow2Source::new(std::fs::read(&image).unwrap(), &image).unwrap();
    assert_eq!(
        source.next_data(4096).unwrap(),
        Some(4096),
        "inside the first cluster"
    );
    assert_eq!(source.next_data(65536).unwrap(), Some(37 << 40));
    assert_eq!(
        source.next_data((37 << 40) + 65536).unwrap(),
        Some(end - end % 65536)
    );
    let mut scratch = Vec::new();
    assert!(source
        .read(end, 4096, &mut scratch)
        .unwrap()
        .iter()
        .all(|&b| b == 0x53));
    let archive = imgpack::archive::reader::ArchiveReader::open(
        imgpack::read_at::FileAt::new(std::fs::File::open(&out).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(archive.records().len(), 3);
}
