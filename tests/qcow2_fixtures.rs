//! The committed qcow2 fixtures (testdata/qcow2, made by make.sh there) read to exactly the
//! bytes `qemu-img convert -O raw` gave when they were made (SHA256SUMS), through the library's
//! convert and extract and through the source directly with several read sizes.

#[path = "qcow2_common/mod.rs"]
mod qcow2;

use std::path::PathBuf;

use imgpack::input::qcow2::Qcow2Source;
use imgpack::input::DiskSource;

fn fixtures() -> Vec<(PathBuf, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/qcow2");
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).expect("SHA256SUMS");
    let list: Vec<(PathBuf, String)> = sums
        .lines()
        .filter_map(|line| line.split_once("  "))
        .map(|(sum, name)| (dir.join(name), sum.to_string()))
        .collect();
    assert!(list.len() >= 5, "fixtures missing");
    list
}

#[test]
fn fixtures_convert_and_extract_to_qemu_img_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    for (image, sum) in fixtures() {
        for chunk_size in [64 << 10, 1 << 20] {
            let (disk, disk_size) = qcow2::round_trip(&image, tmp.path(), chunk_size, None).unwrap();
            assert_eq!(
                qcow2::sha256(&disk),
                sum,
                "{} (chunk {chunk_size})",
                image.display()
            );
            assert_eq!(disk_size, qcow2::nonzero_blocks(&disk), "{}", image.display());
        }
    }
}

#[test]
fn fixtures_read_alike_in_every_piece_size() {
    for (image, sum) in fixtures() {
        let bytes = std::fs::read(&image).unwrap();
        let source = Qcow2Source::new(bytes, &image).unwrap();
        assert_eq!(source.format(), "qcow2");
        let whole = qcow2::read_every_piece(&source, 3 << 20).unwrap();
        assert_eq!(qcow2::sha256(&whole), sum, "{}", image.display());
        for piece in [1536, 65536] {
            let disk = qcow2::read_every_piece(&source, piece).unwrap();
            assert!(disk == whole, "{} piece {piece}", image.display());
        }
        for piece in [512, 4096, 1 << 20] {
            let disk = qcow2::read_disk(&source, piece).unwrap();
            assert!(disk == whole, "{} sparse piece {piece}", image.display());
        }
    }
}

#[test]
fn fixture_headers_are_reported_by_info() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/qcow2");
    let options = imgpack::InfoOptions::default();
    let v2 = imgpack::info(&dir.join("v2-512.qcow2"), &options).unwrap();
    assert_eq!(v2.format, "qcow2");
    assert_eq!(v2.details["version"], 2);
    assert_eq!(v2.details["cluster_size"], 512);
    assert_eq!(v2.details["header_length"], 72);
    assert_eq!(v2.refusal, None);
    assert_eq!(v2.virtual_size, Some(4 << 20));
    let zstd = imgpack::info(&dir.join("zstd-extl2.qcow2"), &options).unwrap();
    assert_eq!(zstd.details["compression_type"], "zstd");
    assert_eq!(zstd.details["extended_l2"], true);
    let snap = imgpack::info(&dir.join("snapshot-4k.qcow2"), &options).unwrap();
    assert_eq!(snap.details["snapshots"], 1);
    let dirty = imgpack::info(&dir.join("dirty-lazy.qcow2"), &options).unwrap();
    assert_eq!(dirty.details["incompatible_features"]["names"][0], "dirty");
    assert_eq!(dirty.details["compatible_features"]["names"][0], "lazy refcounts");
    assert_eq!(dirty.details["refcount_bits"], 1);
}
