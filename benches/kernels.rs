//! Micro-benchmarks of the hot kernels: zero scan, chunk compress and decompress, crc32,
//! archive index lookup and random `read_at`, and an end-to-end raw conversion.
//!
//! Run: `cargo bench --bench kernels` (or `-- zero_scan` for one group).

use std::hint::black_box;
use std::io::Cursor;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use imgpack::archive::chunk::{ChunkDecoder, ChunkEncoder};
use imgpack::archive::format::{ChunkRecord, Geometry};
use imgpack::archive::reader::ArchiveReader;
use imgpack::convert::encode;
use imgpack::input::{Body, Opened};
use imgpack::zero::{is_zero, is_zero_naive};
use imgpack::ConvertOptions;

/// Text-like, compressible data resembling a file system's contents.
fn sample_data(len: usize) -> Vec<u8> {
    let words = [
        &b"usr/lib "[..],
        b"libc.so.6 ",
        b"\x7fELF\x02\x01",
        b"0000",
        b"\n#include ",
        b"\x00\x00\x10",
    ];
    let mut state = 0x1234_5678u64;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if state.is_multiple_of(5) {
            out.extend_from_slice(&state.to_le_bytes());
        } else {
            out.extend_from_slice(words[(state % words.len() as u64) as usize]);
        }
    }
    out.truncate(len);
    out
}

fn zero_scan(c: &mut Criterion) {
    let zeros = vec![0u8; 16 << 20];
    let mut group = c.benchmark_group("zero_scan");
    group.throughput(Throughput::Bytes(zeros.len() as u64));
    group.bench_function("or_fold_4k_blocks", |b| {
        b.iter(|| black_box(&zeros).chunks(4096).filter(|blk| is_zero(blk)).count())
    });
    group.bench_function("naive_4k_blocks", |b| {
        b.iter(|| {
            black_box(&zeros)
                .chunks(4096)
                .filter(|blk| is_zero_naive(blk))
                .count()
        })
    });
    group.finish();
}

fn chunk_codec(c: &mut Criterion) {
    let geometry = Geometry::for_chunk_size(1 << 20).unwrap();
    let data = sample_data(1 << 20);
    let mut group = c.benchmark_group("chunk");
    group.throughput(Throughput::Bytes(data.len() as u64));
    for level in [1, 3] {
        let mut encoder = ChunkEncoder::new(level).unwrap();
        group.bench_with_input(BenchmarkId::new("compress_1m", level), &data, |b, data| {
            b.iter(|| encoder.encode(geometry, 0, black_box(data)).unwrap())
        });
    }
    let mut encoder = ChunkEncoder::new(3).unwrap();
    let encoded = encoder.encode(geometry, 0, &data).unwrap().unwrap();
    let record = ChunkRecord {
        chunk: 0,
        stored_offset: 64,
        stored_len: encoded.frame.len() as u32,
        payload_crc: encoded.payload_crc,
        zero_blocks: encoded.zero_blocks.clone(),
    };
    let mut decoder = ChunkDecoder::new().unwrap();
    let mut payload = Vec::new();
    group.bench_function("decompress_1m", |b| {
        b.iter(|| {
            decoder
                .decode_payload(&record, black_box(&encoded.frame), data.len(), &mut payload)
                .unwrap()
        })
    });
    group.bench_function("crc32_1m", |b| b.iter(|| crc32fast::hash(black_box(&data))));
    group.finish();
}

fn archive_access(c: &mut Criterion) {
    // A 256 MiB disk with data in every fourth MiB, archived in memory.
    let mut disk = vec![0u8; 256 << 20];
    let data = sample_data(1 << 20);
    for mib in (0..256).step_by(4) {
        disk[mib << 20..(mib + 1) << 20].copy_from_slice(&data);
    }
    let opened = Opened {
        layers: Vec::new(),
        inner: "raw",
        body: Body::Stream(Box::new(Cursor::new(disk.clone()))),
    };
    let (archive, _) = encode(opened, Vec::new(), &ConvertOptions::default()).unwrap();
    let reader = ArchiveReader::open(archive.clone()).unwrap();
    let mut group = c.benchmark_group("archive");
    group.bench_function("index_lookup", |b| {
        let mut chunk = 0u64;
        b.iter(|| {
            chunk = (chunk + 37) % 256;
            black_box(reader.record_of(chunk).is_some())
        })
    });
    group.bench_function("open_and_validate", |b| {
        b.iter(|| ArchiveReader::open(black_box(archive.clone())).unwrap())
    });
    group.throughput(Throughput::Bytes(64 << 10));
    group.bench_function("read_at_64k_random", |b| {
        let mut buf = vec![0u8; 64 << 10];
        let mut offset = 0u64;
        b.iter(|| {
            offset = (offset + 7_777_777) % (255 << 20);
            reader.read_at(offset, &mut buf).unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("convert");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(disk.len() as u64));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("disk.raw");
    std::fs::write(&input, &disk).unwrap();
    let output = dir.path().join("disk.imgpack");
    group.bench_function("raw_file_256m_quarter_full", |b| {
        b.iter(|| imgpack::convert(&input, &output, &ConvertOptions::default()).unwrap())
    });
    group.finish();
}

/// qcow2 table walk (`next_data` over the whole disk) and full reads with cluster decoding,
/// on the committed fixtures (zlib- and zstd-compressed clusters, subclusters, 512 B clusters).
fn qcow2_reading(c: &mut Criterion) {
    use imgpack::input::qcow2::Qcow2Source;
    use imgpack::input::DiskSource;
    let mut group = c.benchmark_group("qcow2");
    for name in ["zlib-4k.qcow2", "zstd-extl2.qcow2", "v2-512.qcow2"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/qcow2")
            .join(name);
        let source = Qcow2Source::from_file(std::fs::File::open(&path).unwrap(), &path).unwrap();
        let size = source.virtual_size();
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("table_walk", name), |b| {
            b.iter(|| {
                let (mut pos, mut found) = (0u64, 0u32);
                while let Some(next) = source.next_data(pos).unwrap() {
                    found += 1;
                    pos = (next / 65536 + 1) * 65536;
                    if pos >= size {
                        break;
                    }
                }
                found
            })
        });
        group.throughput(Throughput::Bytes(size));
        group.bench_function(BenchmarkId::new("read_all", name), |b| {
            let mut scratch = Vec::new();
            b.iter(|| {
                let mut pos = 0u64;
                while pos < size {
                    let len = (size - pos).min(1 << 20) as usize;
                    black_box(source.read(pos, len, &mut scratch).unwrap());
                    pos += len as u64;
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, zero_scan, chunk_codec, archive_access, qcow2_reading);
criterion_main!(benches);
