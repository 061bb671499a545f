//! Hostile qcow2 images, in the manner of QEMU's iotest 080: every header field poked to huge,
//! misaligned and overflowing values, table entries pointed outside the file or at metadata,
//! truncations at every structure boundary and random damage. Each must give an error (or
//! read correctly), quickly and in bounded memory, never a panic. Built from the committed
//! fixtures, so no qemu tool is needed.

mod common;
#[path = "qcow2_common/mod.rs"]
mod qcow2;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{damage, Rng};
use imgpack::input::qcow2::Qcow2Source;
use imgpack::input::DiskSource;
use imgpack::ErrorKind;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/qcow2")
        .join(name);
    std::fs::read(path).unwrap()
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn put32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

fn put64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

/// Opens `bytes` and reads (a bounded part of) the disk; the first error, if any.
fn attempt(bytes: Vec<u8>) -> imgpack::Result<()> {
    let started = Instant::now();
    let result = (|| {
        let source = Qcow2Source::new(bytes, Path::new("hostile.qcow2"))?;
        let mut scratch = Vec::new();
        let mut position = 0;
        for _ in 0..64 {
            let Some(next) = source.next_data(position)? else {
                break;
            };
            if next >= source.virtual_size() {
                break;
            }
            let len = (1u64 << 20).min(source.virtual_size() - next) as usize;
            source.read(next, len, &mut scratch)?;
            position = next + len as u64;
        }
        Ok(())
    })();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    result
}

fn refused(bytes: Vec<u8>, kind: ErrorKind, words: &str) {
    match attempt(bytes) {
        Ok(()) => panic!("accepted; expected {kind:?} mentioning {words:?}"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.to_string().contains(words), "{e:?} should mention {words:?}");
        }
    }
}

#[test]
fn fixtures_are_accepted() {
    for name in [
        "snapshot-4k.qcow2",
        "v2-512.qcow2",
        "zstd-extl2.qcow2",
        "zlib-4k.qcow2",
    ] {
        attempt(fixture(name)).unwrap();
    }
}

#[test]
fn poked_header_fields_are_refused() {
    let base = fixture("snapshot-4k.qcow2");
    type Poke = (&'static str, fn(&mut Vec<u8>), ErrorKind, &'static str);
    let cases: Vec<Poke> = vec![
        ("magic", |b| b[3] = 0xfa, ErrorKind::InvalidFormat, "magic"),
        (
            "version 1",
            |b| put32(b, 4, 1),
            ErrorKind::Unsupported,
            "version 1",
        ),
        (
            "version 4",
            |b| put32(b, 4, 4),
            ErrorKind::Unsupported,
            "version 4",
        ),
        (
            "version max",
            |b| put32(b, 4, u32::MAX),
            ErrorKind::Unsupported,
            "version",
        ),
        (
            "backing file",
            |b| {
                put64(b, 8, 0x200);
                put32(b, 16, 8)
            },
            ErrorKind::Unsupported,
            "backing file",
        ),
        (
            "backing file huge",
            |b| {
                put64(b, 8, u64::MAX);
                put32(b, 16, u32::MAX)
            },
            ErrorKind::Unsupported,
            "backing file",
        ),
        (
            "cluster_bits 8",
            |b| put32(b, 20, 8),
            ErrorKind::Corrupt,
            "cluster_bits",
        ),
        (
            "cluster_bits 22",
            |b| put32(b, 20, 22),
            ErrorKind::Corrupt,
            "cluster_bits",
        ),
        (
            "cluster_bits max",
            |b| put32(b, 20, u32::MAX),
            ErrorKind::Corrupt,
            "cluster_bits",
        ),
        (
            "size max",
            |b| put64(b, 24, u64::MAX),
            ErrorKind::Corrupt,
            "virtual size",
        ),
        ("size 2^62", |b| put64(b, 24, 1 << 62), ErrorKind::Corrupt, "L1"),
        (
            "size beyond L1",
            |b| put64(b, 24, 1 << 40),
            ErrorKind::Corrupt,
            "too small",
        ),
        ("AES", |b| put32(b, 32, 1), ErrorKind::Unsupported, "AES"),
        ("LUKS", |b| put32(b, 32, 2), ErrorKind::Unsupported, "LUKS"),
        (
            "crypt 9",
            |b| put32(b, 32, 9),
            ErrorKind::Unsupported,
            "encryption",
        ),
        (
            "l1_size max",
            |b| put32(b, 36, u32::MAX),
            ErrorKind::Corrupt,
            "32 MiB",
        ),
        ("l1_size 0", |b| put32(b, 36, 0), ErrorKind::Corrupt, "too small"),
        (
            "l1_size past file",
            |b| put32(b, 36, 1 << 20),
            ErrorKind::Corrupt,
            "L1 table",
        ),
        (
            "l1 misaligned",
            |b| {
                let v = be64(b, 40) + 512;
                put64(b, 40, v)
            },
            ErrorKind::Corrupt,
            "aligned",
        ),
        (
            "l1 beyond file",
            |b| put64(b, 40, 1 << 40),
            ErrorKind::Corrupt,
            "beyond the end",
        ),
        (
            "l1 at u64 max",
            |b| put64(b, 40, !4095),
            ErrorKind::Corrupt,
            "L1 table",
        ),
        ("l1 at header", |b| put64(b, 40, 0), ErrorKind::Corrupt, "header"),
        (
            "l1 on refcount table",
            |b| {
                let v = be64(b, 48);
                put64(b, 40, v)
            },
            ErrorKind::Corrupt,
            "refcount table",
        ),
        (
            "refcount misaligned",
            |b| {
                let v = be64(b, 48) + 8;
                put64(b, 48, v)
            },
            ErrorKind::Corrupt,
            "aligned",
        ),
        (
            "refcount beyond file",
            |b| put64(b, 48, 1 << 50),
            ErrorKind::Corrupt,
            "refcount table",
        ),
        (
            "refcount at header",
            |b| put64(b, 48, 0),
            ErrorKind::Corrupt,
            "header",
        ),
        (
            "refcount clusters 0",
            |b| put32(b, 56, 0),
            ErrorKind::Corrupt,
            "refcount",
        ),
        (
            "refcount clusters max",
            |b| put32(b, 56, u32::MAX),
            ErrorKind::Corrupt,
            "8 MiB",
        ),
        (
            "refcount clusters past file",
            |b| put32(b, 56, 1000),
            ErrorKind::Corrupt,
            "past the end",
        ),
        (
            "snapshots max",
            |b| put32(b, 60, u32::MAX),
            ErrorKind::Corrupt,
            "snapshots",
        ),
        (
            "snapshots past file",
            |b| put32(b, 60, 60000),
            ErrorKind::Corrupt,
            "snapshot",
        ),
        (
            "snapshots misaligned",
            |b| {
                let v = be64(b, 64) + 8;
                put64(b, 64, v)
            },
            ErrorKind::Corrupt,
            "aligned",
        ),
        (
            "snapshots beyond file",
            |b| put64(b, 64, 1 << 52),
            ErrorKind::Corrupt,
            "snapshot table",
        ),
        (
            "corrupt bit",
            |b| b[79] |= 2,
            ErrorKind::Corrupt,
            "marked corrupt",
        ),
        (
            "data file bit",
            |b| b[79] |= 4,
            ErrorKind::Unsupported,
            "external data file",
        ),
        (
            "unknown bit 5",
            |b| b[79] |= 0x20,
            ErrorKind::Unsupported,
            "unknown incompatible",
        ),
        (
            "unknown bit 63",
            |b| b[72] |= 0x80,
            ErrorKind::Unsupported,
            "unknown incompatible",
        ),
        (
            "compression bit, zlib",
            |b| b[79] |= 8,
            ErrorKind::Corrupt,
            "compression",
        ),
        (
            "zstd without bit",
            |b| b[104] = 1,
            ErrorKind::Corrupt,
            "compression",
        ),
        (
            "compression type 2",
            |b| {
                b[79] |= 8;
                b[104] = 2
            },
            ErrorKind::Unsupported,
            "compression_type",
        ),
        (
            "extended L2, 4k clusters",
            |b| b[79] |= 0x10,
            ErrorKind::Corrupt,
            "16 KiB",
        ),
        (
            "refcount_order 7",
            |b| put32(b, 96, 7),
            ErrorKind::Corrupt,
            "refcount_order",
        ),
        (
            "header_length 0",
            |b| put32(b, 100, 0),
            ErrorKind::Corrupt,
            "header_length",
        ),
        (
            "header_length 103",
            |b| put32(b, 100, 103),
            ErrorKind::Corrupt,
            "header_length",
        ),
        (
            "header_length max",
            |b| put32(b, 100, u32::MAX),
            ErrorKind::Corrupt,
            "header_length",
        ),
        (
            "extension too long",
            |b| {
                put32(b, 112, 0x1234_5678);
                put32(b, 116, 0xffff_fff0)
            },
            ErrorKind::Corrupt,
            "extension",
        ),
    ];
    for (name, poke, kind, words) in cases {
        let mut bytes = base.clone();
        poke(&mut bytes);
        match attempt(bytes) {
            Ok(()) => panic!("{name}: accepted"),
            Err(e) => {
                assert_eq!(e.kind(), kind, "{name}: {e}");
                assert!(
                    e.to_string().contains(words),
                    "{name}: {e} should mention {words:?}"
                );
            }
        }
    }
}

/// The offset of the first L2 table and of its first entry that maps data, in `bytes`.
fn first_l2(bytes: &[u8], entry_bytes: usize) -> (usize, usize) {
    let l1 = be64(bytes, 40) as usize;
    let l2 = (be64(bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    assert_ne!(l2, 0);
    let entry = (0..)
        .map(|i| l2 + i * entry_bytes)
        .find(|&at| be64(bytes, at) != 0)
        .unwrap();
    (l2, entry)
}

#[test]
fn poked_table_entries_are_refused() {
    let v3 = fixture("snapshot-4k.qcow2");
    let l1 = be64(&v3, 40) as usize;
    let refcount = be64(&v3, 48);
    let (l2, entry) = first_l2(&v3, 8);
    let l1_cases: [(u64, &str); 5] = [
        (0x1000 + 512, "aligned"),
        (1 << 40, "beyond the end"),
        (0x8000_0000_0000_0000 | (1 << 50), "beyond the end"),
        (l1 as u64, "the L1 table"),
        (refcount, "refcount table"),
    ];
    for (value, words) in l1_cases {
        let mut bytes = v3.clone();
        put64(&mut bytes, l1, value);
        refused(bytes, ErrorKind::Corrupt, words);
    }
    let mut bytes = v3.clone();
    put64(&mut bytes, l1, 0x8000_0000_0000_0000); // offset 0: unallocated, reads as zeros
    attempt(bytes).unwrap();

    let l2_cases: [(u64, &str); 7] = [
        (0x8000_0000_0000_0000 | 0x1200, "aligned"),
        (1 << 44, "beyond the end"),
        (0x8000_0000_0000_0000 | refcount, "refcount table"),
        (0x8000_0000_0000_0000 | l1 as u64, "the L1 table"),
        (1 << 62 | (1 << 40), "compressed cluster data"),
        (1 << 62 | 8, "header cluster"),
        (1 << 62 | ((l1 as u64) + 16), "the L1 table"),
    ];
    for (value, words) in l2_cases {
        let mut bytes = v3.clone();
        put64(&mut bytes, entry, value);
        refused(bytes, ErrorKind::Corrupt, words);
    }
    // A compressed cluster whose data does not decode.
    let mut bytes = v3.clone();
    put64(&mut bytes, entry, 1 << 62 | (l2 as u64 + 64));
    refused(bytes, ErrorKind::Corrupt, "compressed cluster");

    // Version 2 has no zero flag.
    let v2 = fixture("v2-512.qcow2");
    let (_, entry) = first_l2(&v2, 8);
    let mut bytes = v2.clone();
    bytes[entry + 7] |= 1;
    refused(bytes, ErrorKind::Corrupt, "version 2");

    // Extended L2: allocated and zero at once; allocated in an unallocated cluster.
    let ext = fixture("zstd-extl2.qcow2");
    let (l2, entry) = first_l2(&ext, 16);
    let mut bytes = ext.clone();
    let bitmap = be64(&bytes, entry + 8);
    put64(&mut bytes, entry + 8, bitmap | (bitmap << 32));
    refused(bytes, ErrorKind::Corrupt, "both allocated and reading as zeros");
    let mut bytes = ext.clone();
    let unallocated = (l2..).step_by(16).find(|&at| be64(&ext, at) == 0).unwrap();
    put64(&mut bytes, unallocated + 8, 1);
    refused(bytes, ErrorKind::Corrupt, "unallocated cluster");
}

#[test]
fn truncation_at_every_boundary_errs_or_reads() {
    for name in [
        "snapshot-4k.qcow2",
        "v2-512.qcow2",
        "zstd-extl2.qcow2",
        "zlib-4k.qcow2",
    ] {
        let whole = fixture(name);
        let l1 = be64(&whole, 40) as usize;
        let mut cuts: Vec<usize> = (0..whole.len()).step_by(512).collect();
        cuts.extend([
            1,
            4,
            8,
            71,
            72,
            73,
            103,
            104,
            105,
            111,
            112,
            113,
            l1,
            l1 + 1,
            l1 + 8,
            whole.len() - 1,
        ]);
        for cut in cuts {
            let bytes = whole[..cut.min(whole.len())].to_vec();
            if let Err(e) = attempt(bytes) {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::Corrupt | ErrorKind::InvalidFormat | ErrorKind::Io
                    ),
                    "{name} cut at {cut}: {e}"
                );
            }
        }
        // Header structures cut away are always refused.
        for cut in [0, 71, 103, l1] {
            assert!(attempt(whole[..cut].to_vec()).is_err(), "{name} cut at {cut}");
        }
    }
}

#[test]
fn random_damage_never_panics_nor_hangs() {
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    for name in [
        "snapshot-4k.qcow2",
        "zstd-extl2.qcow2",
        "zlib-4k.qcow2",
        "v2-512.qcow2",
    ] {
        let base = fixture(name);
        let l1 = be64(&base, 40) as usize;
        for _ in 0..400 {
            let mut bytes = base.clone();
            // Mostly the header and the first tables, sometimes anywhere.
            let patches = damage(&mut rng, |rng| {
                let at = match rng.below(4) {
                    0 => rng.below(128) as usize,
                    1 => l1 + rng.below(64) as usize,
                    2 => rng.below(0x5000) as usize,
                    _ => rng.below(base.len() as u64) as usize,
                };
                at.min(base.len() - 1)
            });
            for (at, value) in patches {
                bytes[at] = value;
            }
            let _ = attempt(bytes);
        }
    }
    // Bounded memory: nothing above allocated more than a few tens of MiB at once.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let peak_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        assert!(peak_kib < 1 << 20, "peak memory {peak_kib} KiB");
    }
}

#[test]
fn convert_writes_nothing_and_info_explains() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = fixture("snapshot-4k.qcow2");
    let (_, entry) = first_l2(&bytes, 8);
    put64(&mut bytes, entry, 1 << 44);
    let image = tmp.path().join("damaged.qcow2");
    std::fs::write(&image, &bytes).unwrap();
    let out = tmp.path().join("out.imgpack");
    let err = imgpack::convert(&image, &out, &Default::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(!out.exists());
    let info = imgpack::info(&image, &Default::default()).unwrap();
    assert!(info.refusal.unwrap().contains("beyond the end"));

    let mut bytes = fixture("snapshot-4k.qcow2");
    bytes[79] |= 0x20;
    std::fs::write(&image, &bytes).unwrap();
    let err = imgpack::convert(&image, &out, &Default::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(!out.exists());
    let info = imgpack::info(&image, &Default::default()).unwrap();
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.details["version"], 3);
    assert!(info
        .refusal
        .unwrap()
        .contains("unknown incompatible feature bits 0x20"));
    // Content decides, not the name: a qcow2 called .raw is still read (and refused) as qcow2.
    let disguised = tmp.path().join("disk.raw");
    std::fs::write(&disguised, &bytes).unwrap();
    assert_eq!(
        imgpack::info(&disguised, &Default::default()).unwrap().format,
        "qcow2"
    );
    assert!(imgpack::convert(&disguised, &out, &Default::default()).is_err());
}
