//! What serving checks before a chunk goes out: its crc always (a damaged payload is never
//! served), its SHA-256 only when asked (`ChunkCheck::Full`, `imgpack serve --check-sha256`).
//!
//! Archives are made by `convert`; damage is made by hand in the bytes of the file, with the
//! index and footer crcs sealed again so only the check under test can tell.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{texty, Layout, Rng};
use imgpack::archive::chunk::ChunkDecoder;
use imgpack::archive::reader::{ArchiveReader, ChunkCheck};
use imgpack::fuzz_targets::reseal;
use imgpack::serve::cache::ChunkCache;
use imgpack::serve::ServeStats;
use imgpack::{convert, ConvertOptions, ErrorKind};

const M: u64 = 1 << 20;

fn archive_of(dir: &Path) -> PathBuf {
    let mut rng = Rng::new(7);
    let raw = dir.join("disk.raw");
    Layout::new("two chunks of data", 3 * M)
        .with(100, texty(&mut rng, 300_000))
        .with(2 * M + 10, texty(&mut rng, 70_000))
        .write_to(&raw);
    let archive = dir.join("disk.imgpack");
    convert(&raw, &archive, &ConvertOptions::default()).unwrap();
    archive
}

/// Flips a bit of the second stored chunk's recorded SHA-256 (its payload stays intact).
fn with_wrong_sha256(dir: &Path, archive: &Path) -> PathBuf {
    let mut bytes = std::fs::read(archive).unwrap();
    assert_eq!(&bytes[8..10], &2u16.to_le_bytes(), "a version 2 archive");
    let footer = &bytes[bytes.len() - 80..];
    let index_offset = u64::from_le_bytes(footer[8..16].try_into().unwrap()) as usize;
    let record_len = 56 + (M / 4096 / 8) as usize;
    bytes[index_offset + record_len + 24 + 5] ^= 0x40;
    reseal(&mut bytes);
    let damaged = dir.join("wrong-sha.imgpack");
    std::fs::write(&damaged, &bytes).unwrap();
    damaged
}

fn decode(
    reader: &ArchiveReader<imgpack::read_at::FileAt>,
    i: usize,
    check: ChunkCheck,
) -> imgpack::Result<()> {
    let (mut frame, mut payload) = (Vec::new(), Vec::new());
    let mut decoder = ChunkDecoder::new()?;
    reader.read_payload_checked(
        &reader.records()[i],
        check,
        &mut decoder,
        &mut frame,
        &mut payload,
    )
}

#[test]
fn the_sha256_is_checked_only_at_the_full_level_and_the_crc_always() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_of(dir.path());
    let wrong_sha = with_wrong_sha256(dir.path(), &archive);
    let reader = ArchiveReader::open_path(&wrong_sha).unwrap();
    assert_eq!(reader.records().len(), 2);
    decode(&reader, 0, ChunkCheck::Full).unwrap();
    let err = decode(&reader, 1, ChunkCheck::Full).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Checksum);
    assert!(err.to_string().contains("SHA-256"), "{err}");
    decode(&reader, 1, ChunkCheck::CrcOnly).expect("the payload itself is intact");

    // A damaged payload fails at either level: the crc catches it before the SHA-256 would.
    let mut bytes = std::fs::read(&archive).unwrap();
    let intact = ArchiveReader::open_path(&archive).unwrap();
    let record = &intact.records()[1];
    let at = (record.stored_offset + u64::from(record.stored_len) / 2) as usize;
    bytes[at] ^= 0x01;
    let damaged = dir.path().join("damaged.imgpack");
    std::fs::write(&damaged, &bytes).unwrap();
    let reader = ArchiveReader::open_path(&damaged).unwrap();
    for check in [ChunkCheck::CrcOnly, ChunkCheck::Full] {
        let err = decode(&reader, 1, check).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Checksum | ErrorKind::Corrupt),
            "{check:?}: {err}"
        );
        assert!(!err.to_string().contains("SHA-256"), "{check:?}: {err}");
    }
}

#[test]
fn the_serving_cache_checks_at_the_level_it_was_given() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_of(dir.path());
    let wrong_sha = with_wrong_sha256(dir.path(), &archive);
    let cache = |check| {
        let reader = ArchiveReader::open_path(&wrong_sha).unwrap();
        ChunkCache::new(reader, 8 * M, 1, check, Arc::new(ServeStats::default())).unwrap()
    };
    let full = cache(ChunkCheck::Full);
    assert!(full.get(0).unwrap().is_some());
    let Err(err) = full.get(2) else {
        panic!("a chunk whose SHA-256 is wrong was served at the full level")
    };
    assert_eq!(err.kind(), ErrorKind::Checksum);
    let crc_only = cache(ChunkCheck::CrcOnly);
    let served = crc_only.get(2).unwrap().expect("chunk 2 is stored");
    let original = std::fs::read(dir.path().join("disk.raw")).unwrap();
    assert_eq!(&served[..], &original[2 * M as usize..3 * M as usize]);
}
