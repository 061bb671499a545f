//! Round trips: every layout through every read path gives back the same bytes, sparse.

mod common;

use std::io::Cursor;
use std::path::Path;

use common::{allocated, layouts, Layout, Rng};
use imgpack::archive::reader::ArchiveReader;
use imgpack::convert::encode;
use imgpack::extract::stream_disk;
use imgpack::input::{Body, Opened, ReadMode};
use imgpack::{convert, extract, verify, Control, ConvertOptions, ExtractOptions, VerifyOptions};

/// One way of reading the input.
#[derive(Debug, Clone, Copy)]
struct Path_ {
    read_mode: ReadMode,
    threads: usize,
    chunk_size: u64,
}

fn paths() -> Vec<Path_> {
    let mut v = Vec::new();
    for read_mode in [ReadMode::Mmap, ReadMode::Pread] {
        for threads in [1, 3] {
            for chunk_size in [64 << 10, 1 << 20] {
                v.push(Path_ {
                    read_mode,
                    threads,
                    chunk_size,
                });
            }
        }
    }
    v
}

fn options(p: Path_) -> ConvertOptions {
    ConvertOptions {
        read_mode: p.read_mode,
        threads: Some(p.threads),
        chunk_size: p.chunk_size,
        ..ConvertOptions::default()
    }
}

/// The disk a raw file of `layout` holds: its length rounded up to a whole 512-byte sector,
/// as qemu-img reads raw files (the README's "Input formats").
fn as_disk(layout: &Layout) -> Layout {
    let mut disk = Layout::new(&layout.name, layout.len.next_multiple_of(512));
    for region in &layout.regions {
        disk = disk.with(region.offset, region.bytes.clone());
    }
    disk
}

fn check_file_round_trip(file: &Layout, dir: &Path, p: Path_) {
    let input = dir.join("disk.raw");
    let archive = dir.join("disk.imgpack");
    let back = dir.join("back.raw");
    file.write_to(&input);
    let layout = &as_disk(file);
    let what = format!("{} via {p:?}", layout.name);
    let report = convert(&input, &archive, &options(p)).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(report.virtual_size, layout.len, "{what}");
    assert_eq!(report.disk_size, layout.disk_size(), "{what}");
    assert_eq!(
        report.compressed_size,
        std::fs::metadata(&archive).unwrap().len(),
        "{what}"
    );
    assert_eq!(report.format, "raw");
    let ex = extract(
        &archive,
        &back,
        &ExtractOptions {
            threads: Some(p.threads),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(ex.disk_size, layout.disk_size());
    assert!(
        std::fs::read(&back).unwrap() == layout.bytes(),
        "{what}: extracted bytes differ"
    );
    assert!(
        allocated(&back) <= layout.disk_size() + 4096,
        "{what}: extract is not sparse ({} allocated for {} of data)",
        allocated(&back),
        layout.disk_size()
    );
    let v = verify(
        &archive,
        &VerifyOptions {
            threads: Some(p.threads),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(v.ok, "{what}: verify failed");
}

#[test]
fn every_layout_round_trips_through_every_file_read_path() {
    let dir = tempfile::tempdir().unwrap();
    for layout in layouts() {
        for p in paths() {
            check_file_round_trip(&layout, dir.path(), p);
        }
    }
}

#[test]
fn every_layout_round_trips_through_the_stream_path_and_random_reads() {
    for layout in layouts() {
        for chunk_size in [64 << 10, 1 << 20] {
            let opened = Opened {
                layers: Vec::new(),
                inner: "raw",
                body: Body::Stream(Box::new(Cursor::new(layout.bytes()))),
            };
            let opts = ConvertOptions {
                chunk_size,
                ..ConvertOptions::default()
            };
            let (archive, summary) = encode(opened, Vec::new(), &opts).unwrap();
            assert_eq!(summary.virtual_size, layout.len, "{}", layout.name);
            assert_eq!(summary.disk_size, layout.disk_size(), "{}", layout.name);
            assert_eq!(summary.compressed_size, archive.len() as u64);
            let reader = ArchiveReader::open(archive).unwrap();
            let mut streamed = Vec::new();
            stream_disk(&reader, &mut streamed, &Control::default()).unwrap();
            assert!(
                streamed == layout.bytes(),
                "{}: streamed extract differs",
                layout.name
            );

            let whole = layout.bytes();
            let mut rng = Rng::new(layout.len);
            for _ in 0..20 {
                let offset = rng.below(layout.len + 10);
                let len = rng.below(300_000) as usize;
                let mut buf = vec![0xEEu8; len];
                let n = reader.read_at(offset, &mut buf).unwrap();
                let want_end = (offset + len as u64).min(layout.len);
                let want = &whole[offset.min(layout.len) as usize..want_end as usize];
                assert_eq!(&buf[..n], want, "{}: read_at({offset}, {len})", layout.name);
            }
        }
    }
}

#[test]
fn file_and_stream_paths_write_identical_chunk_data() {
    let dir = tempfile::tempdir().unwrap();
    let layout = layouts().pop().unwrap();
    let input = dir.path().join("disk.raw");
    layout.write_to(&input);
    let from_file = dir.path().join("a.imgpack");
    convert(&input, &from_file, &ConvertOptions::default()).unwrap();
    let opened = Opened {
        layers: Vec::new(),
        inner: "raw",
        body: Body::Stream(Box::new(imgpack::input::raw::PadToSector::new(Cursor::new(
            layout.bytes(),
        )))),
    };
    let (from_stream, _) = encode(opened, Vec::new(), &ConvertOptions::default()).unwrap();
    let from_file = std::fs::read(from_file).unwrap();
    // Only the header's virtual size differs: a stream's size is unknown when writing starts.
    assert_eq!(from_file.len(), from_stream.len());
    assert_eq!(from_file[64..], from_stream[64..]);
}
