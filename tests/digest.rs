//! The image digest (`sha256-tree`, docs/FORMAT.md): the same value for the same disk whatever
//! its format, chunk size or compression level, checked against an implementation of the
//! documented rule written here with the `sha2` crate alone; a one-byte change changes it; a
//! 1 TiB sparse disk costs what its data costs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{have, qemu_img, texty, Layout, Rng};
use imgpack::digest::{digest, DigestOptions, DigestReport};
use imgpack::{convert, convert_reader, ConvertOptions, WriterSink};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const M: u64 = 1 << 20;

/// The documented rule, independently: SHA-256 over the SHA-256 of every 1 MiB leaf (the last
/// one short), then the virtual size as 8 little-endian bytes. Written as `sha256-tree:<hex>`.
fn reference_digest(disk: &[u8]) -> String {
    let mut root = Sha256::new();
    for leaf in disk.chunks(M as usize) {
        root.update(Sha256::digest(leaf));
    }
    root.update((disk.len() as u64).to_le_bytes());
    let hex: String = root.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256-tree:{hex}")
}

/// A disk with data across leaf and chunk edges, a zero gap of whole leaves, a partly zero
/// block, and a short last leaf (its size a multiple of 512, so every format can hold it).
fn test_disk() -> Layout {
    let mut rng = Rng::new(14);
    let len = 6 * M + 12800;
    Layout::new("digest test disk", len)
        .with(0, texty(&mut rng, 300_000))
        .with(M - 700, texty(&mut rng, 5000))
        .with(4 * M + 3, vec![0xEE; 100])
        .with(len - 9000, texty(&mut rng, 9000))
}

fn digest_of(path: &Path) -> DigestReport {
    digest(path, &DigestOptions::default()).unwrap_or_else(|e| panic!("digest {}: {e}", path.display()))
}

fn run(tool: &str, args: &[&str], stdout_to: Option<&Path>) {
    let mut command = Command::new(tool);
    command.args(args);
    if let Some(out) = stdout_to {
        command.stdout(std::fs::File::create(out).unwrap());
    }
    let status = command.status().unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(status.success(), "{tool} {args:?} failed");
}

#[test]
fn raw_digest_follows_the_documented_rule() {
    let dir = tempfile::tempdir().unwrap();
    for layout in common::layouts() {
        if layout.len % 512 != 0 {
            continue; // imgpack reads such a raw file rounded up to a sector (README); not this test's point
        }
        let path = dir.path().join("disk.raw");
        layout.write_to(&path);
        let report = digest_of(&path);
        assert_eq!(
            report.digest,
            reference_digest(&layout.bytes()),
            "{}",
            layout.name
        );
        assert_eq!(report.virtual_size, layout.len, "{}", layout.name);
        assert_eq!(report.disk_size, layout.disk_size(), "{}", layout.name);
        assert_eq!(report.digest_source, "computed");
    }
    let layout = test_disk();
    let path = dir.path().join("disk.raw");
    layout.write_to(&path);
    assert_eq!(digest_of(&path).digest, reference_digest(&layout.bytes()));
}

#[test]
fn same_disk_same_digest_in_every_format_and_archive() {
    let dir = tempfile::tempdir().unwrap();
    let layout = test_disk();
    let raw = dir.path().join("disk.raw");
    layout.write_to(&raw);
    let want = reference_digest(&layout.bytes());
    let mut inputs: Vec<PathBuf> = vec![raw.clone()];
    if have("qemu-img") {
        for (format, options) in [
            ("qcow2", ""),
            ("vmdk", "subformat=monolithicSparse"),
            ("vmdk", "subformat=streamOptimized"),
            ("vhdx", ""),
        ] {
            let out = dir.path().join(format!("disk-{format}-{}.img", options.len()));
            let mut args = vec!["convert", "-f", "raw", "-O", format];
            if !options.is_empty() {
                args.extend(["-o", options]);
            }
            args.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
            qemu_img(&args);
            inputs.push(out);
        }
    }
    if have("gzip") {
        let gz = dir.path().join("disk.raw.gz");
        run("gzip", &["-c", raw.to_str().unwrap()], Some(&gz));
        inputs.push(gz);
    }
    if have("zstd") {
        let zst = dir.path().join("disk.raw.zst");
        run("zstd", &["-q", "-c", raw.to_str().unwrap()], Some(&zst));
        inputs.push(zst);
    }
    for chunk_size in [64 << 10, M, 4 * M] {
        for level in [1, 3] {
            let archive = dir.path().join(format!("disk-{chunk_size}-{level}.imgpack"));
            let options = ConvertOptions {
                chunk_size,
                level,
                ..ConvertOptions::default()
            };
            let report = convert(&raw, &archive, &options).unwrap();
            assert_eq!(
                report.digest, want,
                "convert at chunk {chunk_size}, level {level}"
            );
            let info = imgpack::info(&archive, &Default::default()).unwrap();
            assert_eq!(info.digest.as_deref(), Some(want.as_str()));
            inputs.push(archive);
        }
    }
    for input in &inputs {
        let report = digest_of(input);
        assert_eq!(report.digest, want, "{}", input.display());
        assert_eq!(report.virtual_size, layout.len, "{}", input.display());
    }
    // An archive's digest recomputed from its chunks agrees with the stored one.
    for archive in inputs
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "imgpack"))
    {
        let options = DigestOptions {
            verify: true,
            ..DigestOptions::default()
        };
        let report = digest(archive, &options).unwrap();
        assert_eq!(
            (report.digest.as_str(), report.digest_source),
            (want.as_str(), "computed")
        );
    }
    // A stream converted from standard input (here: a reader) records the same digest.
    let body = std::fs::File::open(&raw).unwrap();
    let report = convert_reader(
        body,
        WriterSink::new(Vec::new(), "memory"),
        &ConvertOptions::default(),
    )
    .unwrap();
    assert_eq!(report.digest, want);
}

#[test]
fn one_changed_byte_changes_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let layout = test_disk();
    let path = dir.path().join("disk.raw");
    layout.write_to(&path);
    let before = digest_of(&path).digest;
    for offset in [0, M - 1, M, 3 * M + 77, layout.len - 1] {
        let mut disk = layout.bytes();
        disk[offset as usize] ^= 0x01;
        common::write_file(&path, &disk);
        let after = digest_of(&path).digest;
        assert_ne!(after, before, "a flip at {offset}");
        assert_eq!(after, reference_digest(&disk));
    }
    // Appending a zero sector changes the size, and so the digest, though no data changed.
    let mut longer = layout.bytes();
    longer.extend([0u8; 512]);
    common::write_file(&path, &longer);
    assert_ne!(digest_of(&path).digest, before);
}

#[test]
fn a_sparse_terabyte_costs_what_its_data_costs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.raw");
    let size = 1u64 << 40;
    let data_at = [0u64, 123 * M + 5, size - 4096];
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(size).unwrap();
    for at in data_at {
        std::os::unix::fs::FileExt::write_all_at(&file, b"sparse but not empty", at).unwrap();
    }
    let start = Instant::now();
    let report = digest_of(&path);
    let seconds = start.elapsed().as_secs_f64();
    assert!(seconds < 30.0, "1 TiB sparse took {seconds:.1} s");
    // The rule with the zero leaves' hash written out: the data leaves hashed, 2^20 leaves in all.
    let zero_leaf = Sha256::digest(vec![0u8; M as usize]);
    let data_leaf = |at: u64| {
        let mut leaf = vec![0u8; M as usize];
        let inside = (at % M) as usize;
        leaf[inside..inside + 20].copy_from_slice(b"sparse but not empty");
        Sha256::digest(&leaf)
    };
    let mut root = Sha256::new();
    for leaf in 0..size / M {
        match data_at.iter().find(|&&at| at / M == leaf) {
            Some(&at) => root.update(data_leaf(at)),
            None => root.update(zero_leaf),
        }
    }
    root.update(size.to_le_bytes());
    let hex: String = root.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(report.digest, format!("sha256-tree:{hex}"));
    assert_eq!(report.disk_size, 3 * 4096);
    // The archive of it stores the same digest.
    let archive = dir.path().join("sparse.imgpack");
    assert_eq!(
        convert(&path, &archive, &ConvertOptions::default())
            .unwrap()
            .digest,
        report.digest
    );
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A random sparse disk of up to 5 MiB: a few runs of data at random places.
fn sparse_disk() -> impl Strategy<Value = Vec<u8>> {
    (1u64..5 * M).prop_flat_map(|len| {
        let runs = proptest::collection::vec((0..len, 1usize..70_000, any::<u8>()), 0..6);
        (Just(len), runs).prop_map(|(len, runs)| {
            let mut disk = vec![0u8; len as usize];
            for (at, run, seed) in runs {
                let end = (at as usize + run).min(disk.len());
                for (i, byte) in disk[at as usize..end].iter_mut().enumerate() {
                    *byte = seed.wrapping_add((i / 7) as u8) | 1;
                }
            }
            disk
        })
    })
}

proptest! {
    #![proptest_config(config(12))]

    /// The digest an archive records does not depend on its chunk size, and is the rule's.
    #[test]
    fn digest_is_independent_of_the_chunk_size(disk in sparse_disk(), shift in 16u32..=23) {
        let options = ConvertOptions { chunk_size: 1 << shift, level: 1, ..ConvertOptions::default() };
        let body = std::io::Cursor::new(disk.clone());
        let report = convert_reader(body, WriterSink::new(Vec::new(), "memory"), &options).unwrap();
        // A stream is a disk rounded up to a whole sector, as for a raw file.
        let mut padded = disk;
        padded.resize(padded.len().div_ceil(512) * 512, 0);
        prop_assert_eq!(report.digest, reference_digest(&padded));
    }
}
