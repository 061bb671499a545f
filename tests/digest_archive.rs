//! Digests inside archives: version 2 records a SHA-256 per chunk and the image digest, and
//! every reader checks them; version 1 archives (a fixture written before version 2) still
//! read, verify and extract, reported as having no digest; `extract` with `sha256` prints what
//! `sha256sum` prints of its output.

mod common;

use std::path::Path;

use common::{have, texty, Layout, Rng};
use imgpack::archive::reader::ArchiveReader;
use imgpack::digest::{digest, hash_while_reading, DigestOptions};
use imgpack::fuzz_targets::reseal;
use imgpack::{convert, extract, verify, ConvertOptions, ErrorKind, ExtractOptions, VerifyOptions};
use sha2::{Digest, Sha256};

const M: u64 = 1 << 20;
const V1_FIXTURE: &str = "tests/fixtures/v1-64k.imgpack";

/// The disk of the version 1 fixture, by the rule of `tests/fixtures/make-v1.sh`.
fn v1_disk() -> Vec<u8> {
    let size = (2 << 20) + 20992;
    let mut disk = vec![0u8; size];
    for (i, byte) in disk[..4096].iter_mut().enumerate() {
        *byte = ((i * 7 + 3) % 251) as u8;
    }
    // Each byte from its own offset `i`, as the script's Python loops write it.
    let by_offset = |disk: &mut [u8], range: std::ops::Range<usize>, f: fn(usize) -> u8| {
        for i in range {
            disk[i] = f(i);
        }
    };
    by_offset(&mut disk, (1 << 20) - 300..(1 << 20) + 5000, |i| {
        ((i / 3) % 256) as u8
    });
    disk[(1 << 20) + 70000] = 0x5A;
    by_offset(&mut disk, size - 700..size, |i| (i % 13 + 1) as u8);
    disk
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `sha256sum FILE` prints, first field.
fn sha256sum(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn disk_with_data() -> Layout {
    let mut rng = Rng::new(3);
    Layout::new("three chunks of data", 5 * M + 4096)
        .with(100, texty(&mut rng, 200_000))
        .with(2 * M + 10, texty(&mut rng, 70_000))
        .with(5 * M, texty(&mut rng, 4096))
}

fn archive_of(dir: &Path, layout: &Layout, chunk_size: u64) -> std::path::PathBuf {
    let raw = dir.join("disk.raw");
    layout.write_to(&raw);
    let archive = dir.join(format!("disk-{chunk_size}.imgpack"));
    let options = ConvertOptions {
        chunk_size,
        ..ConvertOptions::default()
    };
    convert(&raw, &archive, &options).unwrap();
    archive
}

#[test]
fn version_1_archives_still_read_verify_and_extract() {
    let fixture = Path::new(V1_FIXTURE);
    let disk = v1_disk();
    assert_eq!(
        hex(&Sha256::digest(&disk)),
        "9a2d91a0964ed8f99af457d9f4998ef0acffefbfea17717e1708ffffd33097bb",
        "the rule of make-v1.sh"
    );
    let reader = ArchiveReader::open_path(fixture).unwrap();
    assert_eq!(reader.version(), 1);
    assert_eq!(reader.image_digest(), None);
    assert!(reader.records().iter().all(|r| reader.chunk_sha256(r).is_none()));
    let mut back = vec![0u8; disk.len()];
    assert_eq!(reader.read_at(0, &mut back).unwrap(), disk.len());
    assert!(back == disk);

    let info = imgpack::info(fixture, &Default::default()).unwrap();
    assert_eq!(info.digest, None);
    assert_eq!(info.details["archive_version"], 1);
    let report = verify(fixture, &VerifyOptions::default()).unwrap();
    assert!(report.ok && report.digest.is_none() && report.digest_ok.is_none());

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v1.raw");
    let options = ExtractOptions {
        sha256: true,
        ..ExtractOptions::default()
    };
    let extracted = extract(fixture, &out, &options).unwrap();
    assert!(std::fs::read(&out).unwrap() == disk);
    assert_eq!(
        extracted.sha256.as_deref(),
        Some(hex(&Sha256::digest(&disk)).as_str())
    );

    // `digest` recomputes what version 1 does not store: the raw disk's digest.
    let raw = dir.path().join("v1-disk.raw");
    common::write_file(&raw, &disk);
    let from_archive = digest(fixture, &DigestOptions::default()).unwrap();
    assert_eq!(from_archive.digest_source, "computed");
    assert_eq!(
        from_archive.digest,
        digest(&raw, &DigestOptions::default()).unwrap().digest
    );
}

#[test]
fn mutated_version_1_archives_are_refused_or_read_never_a_panic() {
    let seed = std::fs::read(V1_FIXTURE).unwrap();
    let mut rng = Rng::new(1);
    for mutated in common::mutations(&seed, &mut rng, 600) {
        imgpack::fuzz_targets::archive(&mutated);
        imgpack::fuzz_targets::archive_sealed(&mutated);
    }
}

#[test]
fn extract_sha256_is_what_sha256sum_prints_of_the_output() {
    if !have("sha256sum") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut layouts = common::layouts();
    layouts.push(disk_with_data());
    for layout in layouts {
        for chunk_size in [64 << 10, M] {
            let archive = archive_of(dir.path(), &layout, chunk_size);
            let out = dir.path().join("out.raw");
            let options = ExtractOptions {
                sha256: true,
                ..ExtractOptions::default()
            };
            let report = extract(&archive, &out, &options).unwrap();
            let what = format!("{}, chunk {chunk_size}", layout.name);
            assert_eq!(report.sha256.unwrap(), sha256sum(&out), "{what}");
            let plain = extract(&archive, &out, &ExtractOptions::default()).unwrap();
            assert_eq!(plain.sha256, None, "{what}");
        }
    }
}

/// The offset of record `i`'s SHA-256 in a version 2 archive.
fn record_sha_at(archive: &[u8], chunk_size: u64, i: usize) -> usize {
    let footer = &archive[archive.len() - 80..];
    let index_offset = u64::from_le_bytes(footer[8..16].try_into().unwrap()) as usize;
    let record_len = 56 + (chunk_size / 4096 / 8) as usize;
    index_offset + i * record_len + 24
}

#[test]
fn a_chunk_that_passes_its_crc_but_not_its_sha256_is_caught_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    for chunk_size in [64 << 10, M] {
        let archive = archive_of(dir.path(), &disk_with_data(), chunk_size);
        let mut bytes = std::fs::read(&archive).unwrap();
        // The second stored chunk's recorded SHA-256 no longer matches its (intact) payload;
        // the index and footer crcs are made right again, so only the SHA-256 can tell.
        let at = record_sha_at(&bytes, chunk_size, 1);
        bytes[at + 5] ^= 0x40;
        reseal(&mut bytes);
        let damaged = dir.path().join("damaged.imgpack");
        common::write_file(&damaged, &bytes);

        let reader = ArchiveReader::open_path(&damaged).expect("the index itself is intact");
        let bad = &reader.records()[1];
        assert!(reader.with_payload(&reader.records()[0], |_| Ok(())).is_ok());
        let err = reader.with_payload(bad, |_| Ok(())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Checksum);
        assert!(err.to_string().contains("SHA-256"), "{err}");

        let report = verify(&damaged, &VerifyOptions::default()).unwrap();
        assert!(!report.ok);
        assert_eq!(report.bad_chunks.len(), 1, "{:?}", report.bad_chunks);
        assert_eq!(report.bad_chunks[0].chunk, bad.chunk);
        assert!(report.bad_chunks[0].error.contains("SHA-256"));
        assert_eq!(report.digest_ok, None, "content unknown: not compared");

        let out = dir.path().join("out.raw");
        let err = extract(&damaged, &out, &ExtractOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Checksum);
        assert!(!out.exists(), "a refused extraction leaves nothing");
        let recompute = DigestOptions {
            verify: true,
            ..DigestOptions::default()
        };
        assert_eq!(
            digest(&damaged, &recompute).unwrap_err().kind(),
            ErrorKind::Checksum
        );
    }
}

#[test]
fn a_stored_digest_that_is_not_the_contents_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    for chunk_size in [64 << 10, M, 4 * M] {
        let archive = archive_of(dir.path(), &disk_with_data(), chunk_size);
        let intact = verify(&archive, &VerifyOptions::default()).unwrap();
        assert!(intact.ok && intact.digest_ok == Some(true));
        let mut bytes = std::fs::read(&archive).unwrap();
        let digest_at = bytes.len() - 80 + 32;
        bytes[digest_at] ^= 1;
        reseal(&mut bytes);
        let damaged = dir.path().join("damaged.imgpack");
        common::write_file(&damaged, &bytes);
        let report = verify(&damaged, &VerifyOptions::default()).unwrap();
        assert!(report.bad_chunks.is_empty());
        assert_eq!(
            (report.ok, report.digest_ok),
            (false, Some(false)),
            "chunk {chunk_size}"
        );
        let recompute = DigestOptions {
            verify: true,
            ..DigestOptions::default()
        };
        let err = digest(&damaged, &recompute).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Checksum);
        assert!(err.to_string().contains("footer records"), "{err}");
    }
}

#[test]
fn an_upload_hashed_while_it_is_converted_is_what_sha256sum_prints() {
    if !have("sha256sum") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("upload.raw");
    disk_with_data().write_to(&raw);
    let (reader, handle) = hash_while_reading(std::fs::File::open(&raw).unwrap());
    let sink = imgpack::WriterSink::new(Vec::new(), "memory");
    imgpack::convert_reader(reader, sink, &ConvertOptions::default()).unwrap();
    let sum = handle.result();
    assert!(sum.complete);
    assert_eq!(sum.bytes, std::fs::metadata(&raw).unwrap().len());
    assert_eq!(sum.sha256, sha256sum(&raw));
}
