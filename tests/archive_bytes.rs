//! Speed work must not change a single byte of an archive: the same input at the same level
//! gives the same archive before and after. The expected SHA-256s below are those of the
//! archives the binary of commit c1d0971 (before the archive file was written with O_DIRECT)
//! wrote from these inputs with `imgpack convert INPUT -o OUT --level N`; regenerate them with
//! another binary by setting `ARCHIVE_BYTES_INPUT=PATH`, which leaves the generated input there.

mod common;

use std::path::Path;

use common::{random, texty, Layout, Rng};
use imgpack::{convert, convert_to, ConvertOptions, Input, WriterSink};
use sha2::{Digest, Sha256};

/// A disk whose archive is several of the output's 8 MiB direct-write pieces long, with an
/// unaligned end: incompressible and text-like data, zero blocks inside data, a hole, and a
/// size that is not a multiple of 4096 (a 1000-byte tail, rounded up to a sector).
fn layout() -> Layout {
    let mut rng = Rng::new(12);
    let mut dense = random(&mut rng, 20 << 20);
    for block in [3usize, 4, 700, 2049] {
        dense[block * 4096..(block + 1) * 4096].fill(0);
    }
    let len = (40 << 20) + 1000;
    Layout::new("archive-bytes", len)
        .with(0, dense)
        .with(24 << 20, texty(&mut rng, 6 << 20))
        .with(len - 3000, random(&mut rng, 3000))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn options(level: i32, threads: Option<usize>) -> ConvertOptions {
    ConvertOptions {
        level,
        threads,
        ..ConvertOptions::default()
    }
}

/// The archive of `input` at `level` as a file (through `FileSink`) and as a stream (through
/// `WriterSink`, which writes plainly): they must be identical.
fn both_ways(input: &Path, dir: &Path, level: i32, threads: Option<usize>) -> Vec<u8> {
    let out = dir.join(format!("out-{level}.imgpack"));
    convert(input, &out, &options(level, threads)).unwrap();
    let file_bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    let stream = std::fs::File::create(dir.join("stream.imgpack")).unwrap();
    convert_to(
        Input::path(input),
        WriterSink::new(stream, "stream"),
        &options(level, threads),
    )
    .unwrap();
    let stream_bytes = std::fs::read(dir.join("stream.imgpack")).unwrap();
    assert!(
        file_bytes == stream_bytes,
        "level {level}: the archive file differs from the streamed archive"
    );
    file_bytes
}

#[test]
fn archives_are_byte_identical_to_those_written_before() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let input = match std::env::var_os("ARCHIVE_BYTES_INPUT") {
        Some(path) => path.into(),
        None => dir.path().join("disk.raw"),
    };
    layout().write_to(&input);
    let expected = [
        (
            1,
            "667df8de2d7240ca2dbb9a6298d354f758dd1557907c34e769e65b337870ab6e",
        ),
        (
            3,
            "3079fc0392c54f7176abd3257ad2464e0df46c29a29a9e6a1263507f20a51e4b",
        ),
    ];
    for (level, want) in expected {
        for threads in [None, Some(1)] {
            let archive = both_ways(&input, dir.path(), level, threads);
            assert!(
                archive.len() > 2 * (8 << 20),
                "the archive spans several direct writes"
            );
            assert_eq!(sha256_hex(&archive), want, "level {level}, threads {threads:?}");
        }
    }
}

#[test]
fn the_demo_image_archives_as_before() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/demo.raw");
    for (level, want) in [
        (
            1,
            "0065d29c7613f8a2101fae9e298216c1f7bb61991308e8a7f1eb7ef36d1bf231",
        ),
        (
            3,
            "64ac842d81c68abeffe257a16d289ffec9093917c9fe8efbaf223a9a0d994ec3",
        ),
    ] {
        let archive = both_ways(&demo, dir.path(), level, None);
        assert_eq!(sha256_hex(&archive), want, "level {level}");
    }
}
