//! Chunk-level deduplication through the library's calls, on every catalog backend: a second
//! registration of the same upload reuses every chunk and stores almost nothing, a snapshot
//! after new writes stores only the chunks written, builds are byte-exact (checked by
//! `qemu-img compare` too), and `gc` removes exactly what no image references.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::library_fixture::TestLibrary;
use common::oracle;
use imgpack::library::chunks::DedupStats;
use imgpack::library::{
    Arch, ImageRecord, ImageUpdate, Library, LibraryOptions, NewImage, RegisterRequest, SnapshotRequest,
};
use imgpack::Control;

const OWNER: &str = "acc-xxxxx";
const OPERATOR: &str = "brightbox";
const MIB: u64 = 1 << 20;

fn open(dir: &TestLibrary) -> Library {
    let options = LibraryOptions {
        dedup: Some(true),
        ..dir.options()
    };
    Library::open(dir.path(), &options).unwrap()
}

/// A 24 MiB disk holding compressible data in MiBs 1..=`data_mib` (distinct per `seed`).
fn disk_bytes(data_mib: u64, seed: u64) -> Vec<u8> {
    let mut rng = common::Rng::new(seed);
    let mut disk = vec![0u8; (24 * MIB) as usize];
    let data = common::texty(&mut rng, (data_mib * MIB) as usize);
    disk[MIB as usize..(MIB + data_mib * MIB) as usize].copy_from_slice(&data);
    disk
}

fn upload(library: &Library, name: &str, bytes: &[u8]) -> PathBuf {
    let path = library.incoming_dir(OWNER).unwrap().join(name);
    fs::write(&path, bytes).unwrap();
    path
}

fn register(library: &Library, source: &str) -> (ImageRecord, DedupStats) {
    let record = library
        .register(
            OWNER,
            &RegisterRequest::new(NewImage::new(source, Arch::X86_64), source),
            &mut |_| {},
        )
        .unwrap();
    (
        record,
        library.last_dedup().expect("a deduplicated registration reports"),
    )
}

/// The chunk objects in the library and their total size.
fn chunk_objects(root: &Path) -> (u64, u64) {
    let mut count = 0;
    let mut bytes = 0;
    let Ok(fans) = fs::read_dir(root.join("chunks")) else {
        return (0, 0);
    };
    for fan in fans {
        for object in fs::read_dir(fan.unwrap().path()).unwrap() {
            count += 1;
            bytes += object.unwrap().metadata().unwrap().len();
        }
    }
    (count, bytes)
}

/// Builds image `id` onto a new disk and checks it is `expected`, byte for byte and by
/// `qemu-img compare`.
fn assert_builds(library: &Library, dir: &TestLibrary, id: &str, expected: &[u8]) {
    let disk = dir.path().join(format!("{id}-built.raw"));
    library
        .build(OWNER, id, &disk, expected.len() as u64, &Control::default())
        .unwrap();
    assert!(fs::read(&disk).unwrap() == expected, "build of {id} differs");
    if oracle::have("qemu-img") {
        let reference = dir.path().join(format!("{id}-expected.raw"));
        fs::write(&reference, expected).unwrap();
        oracle::qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            reference.to_str().unwrap(),
            disk.to_str().unwrap(),
        ]);
        fs::remove_file(reference).unwrap();
    }
    fs::remove_file(disk).unwrap();
}

fn registering_the_same_upload_again_reuses_every_chunk(dir: &TestLibrary) {
    let library = open(dir);
    let original = disk_bytes(6, 1);
    upload(&library, "first.raw", &original);
    let (first, stats) = register(&library, "first.raw");
    assert_eq!(
        (stats.new_chunks, stats.reused_chunks, stats.new_bytes),
        (6, 0, 6 * MIB),
        "{stats:?}"
    );
    let (objects, stored) = chunk_objects(dir.path());
    assert_eq!(objects, 6);
    assert_eq!(stored, stats.new_stored_bytes);

    upload(&library, "again.raw", &original);
    let (second, stats) = register(&library, "again.raw");
    assert_eq!(
        (
            stats.new_chunks,
            stats.reused_chunks,
            stats.reused_bytes,
            stats.new_stored_bytes
        ),
        (0, 6, 6 * MIB, 0),
        "{stats:?}"
    );
    assert_eq!(chunk_objects(dir.path()), (objects, stored), "nothing new stored");
    let index = fs::metadata(dir.path().join(format!("images/{}.index", second.id))).unwrap();
    assert!(index.len() < MIB, "the index is {} bytes", index.len());
    // The records describe the same self-contained archive.
    assert_eq!(first.compressed_size, second.compressed_size);
    assert_eq!(first.digest, second.digest);
    assert_eq!(second.disk_size, 6 * MIB);
    for id in [&first.id, &second.id] {
        assert_builds(&library, dir, id, &original);
    }
}

fn a_snapshot_stores_only_the_chunks_written_since(dir: &TestLibrary) {
    let library = open(dir);
    let original = disk_bytes(8, 2);
    upload(&library, "base.raw", &original);
    let (base, _) = register(&library, "base.raw");
    let server = dir.path().join("server.raw");
    library
        .build(OWNER, &base.id, &server, 24 * MIB, &Control::default())
        .unwrap();
    // Two MiB of new data: one over old data (MiB 3), one where there were zeros (MiB 20).
    let mut changed = fs::read(&server).unwrap();
    let mut rng = common::Rng::new(99);
    for at in [3 * MIB, 20 * MIB] {
        let new = common::texty(&mut rng, MIB as usize);
        changed[at as usize..(at + MIB) as usize].copy_from_slice(&new);
    }
    fs::write(&server, &changed).unwrap();
    let snapshot = library
        .snapshot(
            OWNER,
            &SnapshotRequest {
                image: NewImage::new("nightly", Arch::X86_64),
                disk: server.clone(),
                max_compressed_size: None,
                control: Control::default(),
            },
            &mut |_| {},
        )
        .unwrap();
    let stats = library.last_dedup().unwrap();
    assert_eq!((stats.new_chunks, stats.reused_chunks), (2, 7), "{stats:?}");
    assert_eq!(stats.new_bytes, 2 * MIB);
    assert_builds(&library, dir, &snapshot.id, &changed);
    assert_builds(&library, dir, &base.id, &original);
}

fn gc_removes_exactly_the_chunks_no_image_references(dir: &TestLibrary) {
    let library = open(dir);
    // A and B share MiBs 1-4; A has 2 of its own, B 1.
    let a = disk_bytes(6, 3);
    let mut b = a.clone();
    b[(5 * MIB) as usize..(7 * MIB) as usize].fill(0);
    let mut rng = common::Rng::new(4);
    b[(10 * MIB) as usize..(11 * MIB) as usize].copy_from_slice(&common::texty(&mut rng, MIB as usize));
    upload(&library, "a.raw", &a);
    upload(&library, "b.raw", &b);
    let (image_a, _) = register(&library, "a.raw");
    let (image_b, stats) = register(&library, "b.raw");
    assert_eq!((stats.new_chunks, stats.reused_chunks), (1, 4), "{stats:?}");
    assert_eq!(chunk_objects(dir.path()).0, 7);

    // Nothing is garbage yet.
    let report = library.gc(OPERATOR).unwrap();
    assert_eq!((report.removed_chunks, report.kept_chunks), (0, 7), "{report:?}");
    assert!(library.gc(OWNER).is_err(), "gc is the operator's");

    // Destroyed, A releases its two own chunks; an object left without a row (by a gc killed
    // between its two steps) goes too, and one not named like a chunk stays.
    library.destroy(OWNER, &image_a.id).unwrap();
    assert!(!dir.path().join(format!("images/{}.index", image_a.id)).exists());
    let orphan = format!("chunks/ab/{}-0000000000000001", "ab".repeat(32));
    fs::create_dir_all(dir.path().join("chunks/ab")).unwrap();
    fs::write(dir.path().join(&orphan), b"left by a killed gc").unwrap();
    fs::write(dir.path().join("chunks/ab/README"), b"not a chunk").unwrap();
    let report = library.gc(OPERATOR).unwrap();
    assert_eq!((report.removed_chunks, report.kept_chunks), (3, 5), "{report:?}");
    assert!(!dir.path().join(&orphan).exists());
    assert!(dir.path().join("chunks/ab/README").exists());
    fs::remove_file(dir.path().join("chunks/ab/README")).unwrap();
    assert_eq!(chunk_objects(dir.path()).0, 5);
    assert_builds(&library, dir, &image_b.id, &b);

    // A new upload of A's content stores A's two chunks again, and builds.
    upload(&library, "a-again.raw", &a);
    let (again, stats) = register(&library, "a-again.raw");
    assert_eq!((stats.new_chunks, stats.reused_chunks), (2, 4), "{stats:?}");
    assert_builds(&library, dir, &again.id, &a);
    let report = library.gc(OPERATOR).unwrap();
    assert_eq!((report.removed_chunks, report.kept_chunks), (0, 7), "{report:?}");
}

every_catalog!(
    registering_the_same_upload_again_reuses_every_chunk,
    a_snapshot_stores_only_the_chunks_written_since,
    gc_removes_exactly_the_chunks_no_image_references,
);

/// Private frames are reused within their account only: another account registering the
/// same content stores it all again, so neither the counts nor the time tell it what others
/// hold privately.
fn accounts_never_reuse_each_others_chunks(dir: &TestLibrary) {
    let library = open(dir);
    let content = disk_bytes(3, 5);
    upload(&library, "mine.raw", &content);
    register(&library, "mine.raw");
    let other = "acc-yyyyy";
    let path = library.incoming_dir(other).unwrap().join("same.raw");
    fs::write(&path, &content).unwrap();
    let image = library
        .register(
            other,
            &RegisterRequest::new(NewImage::new("same", Arch::X86_64), "same.raw"),
            &mut |_| {},
        )
        .unwrap();
    let stats = library.last_dedup().unwrap();
    assert_eq!((stats.new_chunks, stats.reused_chunks), (3, 0), "{stats:?}");
    assert_eq!(chunk_objects(dir.path()).0, 6);
    let built = dir.path().join("other.raw");
    library
        .build(other, &image.id, &built, 24 * MIB, &Control::default())
        .unwrap();
    assert!(fs::read(&built).unwrap() == content);
}

every_catalog!(
    accounts_never_reuse_each_others_chunks,
    public_images_chunks_are_reused_by_every_account_private_ones_never,
);

/// The content of one 1 MiB chunk, distinct per `seed`.
fn chunk_content(seed: u64) -> Vec<u8> {
    common::texty(&mut common::Rng::new(seed), MIB as usize)
}

/// A 24 MiB disk with `chunks[i]` at MiB `i + 1`.
fn disk_of(chunks: &[&[u8]]) -> Vec<u8> {
    let mut disk = vec![0u8; (24 * MIB) as usize];
    for (i, chunk) in chunks.iter().enumerate() {
        let at = (i as u64 + 1) * MIB;
        disk[at as usize..(at + MIB) as usize].copy_from_slice(chunk);
    }
    disk
}

/// Another account reuses the frames of public images (available or deprecated), whose
/// content anyone may read anyway, and never those only private images hold: its counts for
/// a disk mixing both count exactly the public chunks. Making the image private again ends it.
fn public_images_chunks_are_reused_by_every_account_private_ones_never(dir: &TestLibrary) {
    let library = open(dir);
    let private = [chunk_content(21), chunk_content(22)];
    let public = [chunk_content(23), chunk_content(24), chunk_content(25)];
    upload(&library, "private.raw", &disk_of(&[&private[0], &private[1]]));
    register(&library, "private.raw");
    upload(
        &library,
        "public.raw",
        &disk_of(&[&public[0], &public[1], &public[2]]),
    );
    let (distribution, _) = register(&library, "public.raw");
    let make_public = |public: bool, deprecated: bool| {
        let update = ImageUpdate {
            public: Some(public),
            deprecated: Some(deprecated),
            ..ImageUpdate::default()
        };
        library.update(OWNER, &distribution.id, &update).unwrap();
    };
    make_public(true, false);

    let other = "acc-yyyyy";
    let register_other = |name: &str, content: &[u8]| {
        fs::write(library.incoming_dir(other).unwrap().join(name), content).unwrap();
        let image = library
            .register(
                other,
                &RegisterRequest::new(NewImage::new(name, Arch::X86_64), name),
                &mut |_| {},
            )
            .unwrap();
        let built = dir.path().join(format!("{name}.built"));
        library
            .build(other, &image.id, &built, 24 * MIB, &Control::default())
            .unwrap();
        assert!(fs::read(&built).unwrap() == content, "build of {name} differs");
        fs::remove_file(built).unwrap();
        let stats = library.last_dedup().unwrap();
        (stats.new_chunks, stats.reused_chunks, stats.reused_bytes)
    };
    // The public distribution image again: every chunk reused.
    let same = disk_of(&[&public[0], &public[1], &public[2]]);
    assert_eq!(register_other("same.raw", &same), (0, 3, 3 * MIB));
    // Two private chunks, two public ones and a new one: only the public ones are reused.
    let mixed = disk_of(&[
        &private[0],
        &public[1],
        &private[1],
        &public[2],
        &chunk_content(26),
    ]);
    assert_eq!(register_other("mixed.raw", &mixed), (3, 2, 2 * MIB));
    // Deprecated public images are still readable by everyone, so still reused.
    make_public(true, true);
    let again = disk_of(&[&public[0]]);
    assert_eq!(register_other("again.raw", &again), (0, 1, MIB));

    // Private again: a third account finds nothing of it (the second account's own copies
    // of the private chunks are private too).
    make_public(false, false);
    let third = "acc-zzzzz";
    fs::write(library.incoming_dir(third).unwrap().join("late.raw"), &mixed).unwrap();
    library
        .register(
            third,
            &RegisterRequest::new(NewImage::new("late", Arch::X86_64), "late.raw"),
            &mut |_| {},
        )
        .unwrap();
    let stats = library.last_dedup().unwrap();
    assert_eq!((stats.new_chunks, stats.reused_chunks), (5, 0), "{stats:?}");
}

/// A damaged store is refused with the object named: a missing frame, a frame of the wrong
/// length, a frame whose bytes changed, and an index that does not parse.
fn damaged_chunk_objects_and_indexes_are_refused(dir: &TestLibrary) {
    let library = open(dir);
    let content = disk_bytes(3, 6);
    upload(&library, "disk.raw", &content);
    let (image, _) = register(&library, "disk.raw");
    let build = |library: &Library| {
        let disk = dir.path().join("damaged-build.raw");
        let result = library.build(OWNER, &image.id, &disk, 24 * MIB, &Control::default());
        let _ = fs::remove_file(&disk);
        // The whole cause chain, as the command line prints it.
        let error = result.map(|_| ()).unwrap_err();
        let mut text = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        text
    };
    let mut objects: Vec<PathBuf> = fs::read_dir(dir.path().join("chunks"))
        .unwrap()
        .flat_map(|fan| fs::read_dir(fan.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .collect();
    objects.sort();
    let frame = fs::read(&objects[0]).unwrap();
    let name = objects[0].file_name().unwrap().to_string_lossy().to_string();

    fs::remove_file(&objects[0]).unwrap();
    let error = build(&library);
    assert!(error.contains(&name) && error.contains("missing"), "{error}");

    fs::write(&objects[0], &frame[..frame.len() - 1]).unwrap();
    let error = build(&library);
    assert!(error.contains(&name) && error.contains("bytes"), "{error}");

    let mut changed = frame.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0xff;
    fs::write(&objects[0], &changed).unwrap();
    build(&library); // refused by the frame's checks (zstd, crc or SHA-256), whichever trips

    fs::write(&objects[0], &frame).unwrap();
    let index = dir.path().join(format!("images/{}.index", image.id));
    let mut bytes = fs::read(&index).unwrap();
    bytes[40] ^= 1;
    fs::write(&index, &bytes).unwrap();
    let error = build(&library);
    assert!(error.contains(".index") && error.contains("SHA-256"), "{error}");
}

every_catalog!(damaged_chunk_objects_and_indexes_are_refused);
