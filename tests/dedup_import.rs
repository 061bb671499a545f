//! `images register` of an uploaded `.imgpack` archive (what `images download -O imgpack`
//! gives), on every catalog backend: on the deduplicated store the chunks the library holds
//! are reused (exact counts), new frames are stored as they are, and the image is byte-exact;
//! without deduplication the archive is stored as it is. A tampered archive (a record claiming
//! another chunk's content, a wrong crc32) is refused naming the chunk, and nothing is stored.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::library_fixture::TestLibrary;
use imgpack::export::{ExportFormat, ExportOptions};
use imgpack::library::chunks::DedupStats;
use imgpack::library::{Arch, ImageRecord, Library, LibraryOptions, NewImage, RegisterRequest, Status};
use imgpack::{Control, ErrorKind};

const OWNER: &str = "acc-xxxxx";
const OTHER: &str = "acc-yyyyy";
const MIB: u64 = 1 << 20;
/// Chunks of data in the test disk (1 MiB chunks).
const DATA_CHUNKS: u64 = 6;

fn open(dir: &TestLibrary, dedup: bool) -> Library {
    let options = LibraryOptions {
        dedup: Some(dedup),
        ..dir.options()
    };
    Library::open(dir.path(), &options).unwrap()
}

/// A 16 MiB disk with compressible data in MiBs 1..=DATA_CHUNKS.
fn disk_bytes(seed: u64) -> Vec<u8> {
    let mut rng = common::Rng::new(seed);
    let mut disk = vec![0u8; (16 * MIB) as usize];
    let data = common::texty(&mut rng, (DATA_CHUNKS * MIB) as usize);
    disk[MIB as usize..(MIB + DATA_CHUNKS * MIB) as usize].copy_from_slice(&data);
    disk
}

fn register(library: &Library, account: &str, name: &str, bytes: &[u8]) -> imgpack::Result<ImageRecord> {
    fs::write(library.incoming_dir(account).unwrap().join(name), bytes).unwrap();
    library.register(
        account,
        &RegisterRequest::new(NewImage::new(name, Arch::X86_64), name),
        &mut |_| {},
    )
}

fn stats(library: &Library) -> (u64, u64, u64, u64) {
    let DedupStats {
        new_chunks,
        reused_chunks,
        new_bytes,
        reused_bytes,
        ..
    } = library.last_dedup().expect("a deduplicated registration reports");
    (new_chunks, reused_chunks, new_bytes, reused_bytes)
}

fn download_archive(library: &Library, account: &str, id: &str, out: &Path) -> Vec<u8> {
    let options = ExportOptions {
        format: ExportFormat::Imgpack,
        ..ExportOptions::default()
    };
    let _ = fs::remove_file(out);
    library.download(account, id, out, &options).unwrap();
    fs::read(out).unwrap()
}

fn built(library: &Library, account: &str, id: &str, dir: &Path) -> Vec<u8> {
    let disk = dir.join(format!("{id}.raw"));
    library
        .build(account, id, &disk, 16 * MIB, &Control::default())
        .unwrap();
    let bytes = fs::read(&disk).unwrap();
    fs::remove_file(disk).unwrap();
    bytes
}

/// The chunk objects of a library, by name.
fn chunk_objects(root: &Path) -> Vec<PathBuf> {
    let mut objects = Vec::new();
    if let Ok(fans) = fs::read_dir(root.join("chunks")) {
        for fan in fans {
            for object in fs::read_dir(fan.unwrap().path()).unwrap() {
                objects.push(object.unwrap().path());
            }
        }
    }
    objects.sort();
    objects
}

fn an_uploaded_archive_reuses_the_chunks_the_library_holds(dir: &TestLibrary) {
    let library = open(dir, true);
    let content = disk_bytes(11);
    let first = register(&library, OWNER, "disk.raw", &content).unwrap();
    assert_eq!(stats(&library), (DATA_CHUNKS, 0, DATA_CHUNKS * MIB, 0));
    let archive = download_archive(&library, OWNER, &first.id, &dir.path().join("a.imgpack"));

    // The same account: every chunk is pinned, nothing new is stored.
    let again = register(&library, OWNER, "again.imgpack", &archive).unwrap();
    assert_eq!(again.status, Status::Available);
    assert_eq!(again.format.as_deref(), Some("imgpack"));
    assert_eq!(again.digest, first.digest);
    assert_eq!(
        (again.virtual_size, again.disk_size, again.compressed_size),
        (first.virtual_size, first.disk_size, first.compressed_size)
    );
    assert_eq!(stats(&library), (0, DATA_CHUNKS, 0, DATA_CHUNKS * MIB));
    assert_eq!(chunk_objects(dir.path()).len() as u64, DATA_CHUNKS);
    assert!(built(&library, OWNER, &again.id, dir.path()) == content);
    let copy = download_archive(&library, OWNER, &again.id, &dir.path().join("b.imgpack"));
    assert!(copy == archive, "the re-registered image's archive differs");

    // Another account: the owner's image is private, so nothing of it is reused.
    let other = register(&library, OTHER, "theirs.imgpack", &archive).unwrap();
    assert_eq!(stats(&library), (DATA_CHUNKS, 0, DATA_CHUNKS * MIB, 0));
    assert_eq!(chunk_objects(dir.path()).len() as u64, 2 * DATA_CHUNKS);
    assert!(built(&library, OTHER, &other.id, dir.path()) == content);

    // A fresh deduplicated library stores every frame, as it is.
    let fresh = TestLibrary::new(dir.backend).unwrap();
    let fresh_library = open(&fresh, true);
    let image = register(&fresh_library, OWNER, "disk.imgpack", &archive).unwrap();
    assert_eq!(stats(&fresh_library), (DATA_CHUNKS, 0, DATA_CHUNKS * MIB, 0));
    assert!(built(&fresh_library, OWNER, &image.id, fresh.path()) == content);
    let copy = download_archive(&fresh_library, OWNER, &image.id, &fresh.path().join("c.imgpack"));
    assert!(copy == archive);

    // Without deduplication the archive is stored as it is.
    let plain = TestLibrary::new(dir.backend).unwrap();
    let plain_library = open(&plain, false);
    let image = register(&plain_library, OWNER, "disk.imgpack", &archive).unwrap();
    assert_eq!(image.format.as_deref(), Some("imgpack"));
    assert_eq!(image.digest, first.digest);
    let stored = plain.path().join("images").join(format!("{}.imgpack", image.id));
    assert!(fs::read(stored).unwrap() == archive);
    assert!(built(&plain_library, OWNER, &image.id, plain.path()) == content);
}

/// `archive` with its index records changed by `edit(records, record_len)`, and the index
/// and footer crcs made right again, so only the chunk checks can tell.
fn tampered(archive: &[u8], edit: impl FnOnce(&mut [u8], usize)) -> Vec<u8> {
    let mut bytes = archive.to_vec();
    let footer_at = bytes.len() - 80;
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
    let index_at = word(&bytes, footer_at + 8);
    let count = word(&bytes, footer_at + 16);
    let record_len = (footer_at - index_at) / count;
    edit(&mut bytes[index_at..footer_at], record_len);
    let index_crc = crc32fast::hash(&bytes[index_at..footer_at]);
    bytes[footer_at + 64..footer_at + 68].copy_from_slice(&index_crc.to_le_bytes());
    let footer_crc = crc32fast::hash(&bytes[footer_at..footer_at + 68]);
    bytes[footer_at + 68..footer_at + 72].copy_from_slice(&footer_crc.to_le_bytes());
    bytes
}

/// Registers `bytes` and checks it is refused saying `says`, and that no frame was stored;
/// returns the error's text.
fn refused(library: &Library, root: &Path, name: &str, bytes: &[u8], says: &[&str]) -> String {
    let before = chunk_objects(root);
    let error = register(library, OWNER, name, bytes).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error.kind(), ErrorKind::Checksum | ErrorKind::Corrupt),
        "{message}"
    );
    for word in says {
        assert!(message.contains(word), "{message:?} does not say {word:?}");
    }
    let failed = library.list(OWNER, false).unwrap();
    assert!(failed
        .iter()
        .any(|r| r.source == name && r.status == Status::Failed));
    assert_eq!(chunk_objects(root), before, "a refused archive stored frames");
    message
}

fn a_tampered_archive_is_refused_naming_the_chunk(dir: &TestLibrary) {
    let library = open(dir, true);
    let first = register(&library, OWNER, "disk.raw", &disk_bytes(12)).unwrap();
    let archive = download_archive(&library, OWNER, &first.id, &dir.path().join("a.imgpack"));
    // Record 0 (chunk 1) claims chunk 2's content, which this account holds: its frame is
    // still chunk 1's, so it must neither be reused as chunk 2's nor stored under its key.
    let swapped = tampered(&archive, |index, record_len| {
        let (first, rest) = index.split_at_mut(record_len);
        first[24..56].swap_with_slice(&mut rest[24..56]);
    });
    // Both swapped records lie; the chunks are checked in parallel, so either may be named.
    let message = refused(&library, dir.path(), "swapped.imgpack", &swapped, &["SHA-256"]);
    assert!(
        message.contains("chunk 1") || message.contains("chunk 2"),
        "{message:?} names neither swapped chunk"
    );
    // The same archive in a library that holds none of it.
    let fresh = TestLibrary::new(dir.backend).unwrap();
    let fresh_library = open(&fresh, true);
    let message = refused(
        &fresh_library,
        fresh.path(),
        "swapped.imgpack",
        &swapped,
        &["SHA-256"],
    );
    assert!(
        message.contains("chunk 1") || message.contains("chunk 2"),
        "{message:?} names neither swapped chunk"
    );
    // A wrong crc32 for chunk 3's payload.
    let bad_crc = tampered(&archive, |index, record_len| {
        index[2 * record_len + 20] ^= 1;
    });
    refused(
        &fresh_library,
        fresh.path(),
        "crc.imgpack",
        &bad_crc,
        &["chunk 3", "crc32"],
    );
    // Without deduplication too.
    let plain = TestLibrary::new(dir.backend).unwrap();
    let plain_library = open(&plain, false);
    refused(
        &plain_library,
        plain.path(),
        "crc.imgpack",
        &bad_crc,
        &["chunk 3", "crc32"],
    );
    assert_eq!(fs::read_dir(plain.path().join("images")).unwrap().count(), 0);
}

every_catalog!(
    an_uploaded_archive_reuses_the_chunks_the_library_holds,
    a_tampered_archive_is_refused_naming_the_chunk,
);
