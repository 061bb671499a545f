//! The copy-on-write overlay against a naive model: random writes, zeroings and trims at
//! unaligned offsets, read back merged with the base, before and after reopening the file;
//! and damaged or mismatched overlay files refused with a clear error.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::Rng;
use imgpack::overlay::{Access, BaseIdentity, BlockState, Overlay};
use imgpack::Result;

fn identity(virtual_size: u64) -> BaseIdentity {
    BaseIdentity {
        virtual_size,
        compressed_size: 12345,
        disk_size: 4096,
        chunk_count: 3,
        chunk_size: 1 << 20,
        index_crc: 0x1234_5678,
    }
}

/// The disk the overlay shows over `base`.
fn merged(overlay: &Overlay, base: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; base.len()];
    for run in overlay.runs(0, base.len() as u64) {
        let range = run.offset as usize..(run.offset + run.len) as usize;
        match run.state {
            BlockState::Base => out[range.clone()].copy_from_slice(&base[range]),
            BlockState::Zero => out[range].fill(0),
            BlockState::Data => overlay.read_data(run.offset, &mut out[range]).unwrap(),
        }
    }
    out
}

#[test]
fn random_changes_match_a_model_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.overlay");
    let size = 3 * (1 << 20) + 1234; // not a multiple of the block size
    let mut rng = Rng::new(42);
    let mut base = vec![0u8; size];
    for _ in 0..20 {
        let at = rng.below(size as u64 - 5000) as usize;
        rng.fill(&mut base[at..at + 5000]);
    }
    let fill = |offset: u64, buf: &mut [u8]| -> Result<()> {
        buf.copy_from_slice(&base[offset as usize..offset as usize + buf.len()]);
        Ok(())
    };
    let mut model = base.clone();
    for round in 0..3 {
        let overlay = Overlay::open(&path, identity(size as u64), Access::Serve).unwrap();
        assert!(
            merged(&overlay, &base) == model,
            "round {round}: reopened overlay differs"
        );
        for _ in 0..60 {
            let len = 1 + rng.below(70_000) as usize;
            let at = rng.below((size - len) as u64 + 1) as usize;
            match rng.below(3) {
                0 => {
                    let mut data = vec![0u8; len];
                    rng.fill(&mut data);
                    overlay.write(at as u64, &data, &fill).unwrap();
                    model[at..at + len].copy_from_slice(&data);
                }
                1 => {
                    overlay.write_zeroes(at as u64, len as u64, &fill).unwrap();
                    model[at..at + len].fill(0);
                }
                _ => {
                    overlay.trim(at as u64, len as u64).unwrap();
                    // Whole blocks read as zeros; the ends of partly covered ones are kept.
                    let first = at.div_ceil(4096) * 4096;
                    let end = if at + len == size {
                        size
                    } else {
                        (at + len) / 4096 * 4096
                    };
                    if first < end {
                        model[first..end].fill(0);
                    }
                }
            }
        }
        assert!(
            merged(&overlay, &base) == model,
            "round {round}: overlay differs from the model"
        );
        overlay.flush().unwrap();
    }
    // Past the end: refused, nothing changed.
    let overlay = Overlay::open(&path, identity(size as u64), Access::Serve).unwrap();
    assert!(overlay.write(size as u64 - 1, &[1, 2], &fill).is_err());
    assert!(overlay.write_zeroes(u64::MAX, 2, &fill).is_err());
    assert!(merged(&overlay, &base) == model);
}

fn damaged(path: &Path, at: u64, byte: u8) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&[byte], at).unwrap();
}

#[test]
fn damaged_or_mismatched_overlays_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o");
    let size = 1 << 20;
    drop(Overlay::open(&path, identity(size), Access::Serve).unwrap());
    let fresh = std::fs::read(&path).unwrap();
    let expect_error = |what: &str, needle: &str| {
        let err = Overlay::open(&path, identity(size), Access::Read).unwrap_err();
        assert!(err.to_string().contains(needle), "{what}: {err}");
        assert_eq!(
            err.path(),
            Some(path.as_path()),
            "{what}: the error names the overlay"
        );
        std::fs::write(&path, &fresh).unwrap();
    };
    // Another base.
    let mut other = identity(size);
    other.index_crc ^= 1;
    let err = Overlay::open(&path, other, Access::Read).unwrap_err();
    assert!(err.to_string().contains("another base archive"), "{err}");
    // Damage.
    damaged(&path, 0, b'X');
    expect_error("magic", "not an imgpack overlay");
    damaged(&path, 20, 0xff);
    expect_error("virtual size", "checksum");
    damaged(&path, 4096, 0b11);
    expect_error("map entry 3", "invalid");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4000)
        .unwrap();
    expect_error("truncated", "header");
    std::fs::write(&path, b"").unwrap();
    expect_error("empty", "header");
    // Map bits past the disk's end (256 blocks: map bytes 0..64; byte 64 is past it).
    damaged(&path, 4096 + 64, 0b01);
    expect_error("bits past the end", "invalid");
    // Never opened without the file: reading needs it to exist.
    let missing = dir.path().join("missing");
    assert!(Overlay::open(&missing, identity(size), Access::Read).is_err());
    assert!(!missing.exists());
}

#[test]
fn one_server_per_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o");
    let first = Overlay::open(&path, identity(65536), Access::Serve).unwrap();
    let err = Overlay::open(&path, identity(65536), Access::Serve).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    let err = Overlay::open(&path, identity(65536), Access::Read).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(first);
    Overlay::open(&path, identity(65536), Access::Read).unwrap();
}

/// What a power loss could leave: the file as the kernel has it, opened as another overlay.
fn snapshot(path: &Path, size: u64, base: &[u8]) -> Vec<u8> {
    let copy = path.with_extension("copy");
    std::fs::copy(path, &copy).unwrap();
    let overlay = Overlay::open(&copy, identity(size), Access::Read).unwrap();
    merged(&overlay, base)
}

#[test]
fn the_map_on_disk_learns_of_new_data_only_at_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.overlay");
    let size = 64 * 4096u64;
    let base: Vec<u8> = (0..size).map(|i| (i % 251) as u8 + 1).collect();
    let fill = |offset: u64, buf: &mut [u8]| -> Result<()> {
        buf.copy_from_slice(&base[offset as usize..offset as usize + buf.len()]);
        Ok(())
    };
    let overlay = Overlay::open(&path, identity(size), Access::Serve).unwrap();
    let mut model = base.clone();
    // A small write into a block still read from the base, and a zeroing of the block next to
    // it (its entry shares a map byte with the written one).
    overlay.write(4096 + 100, &[0xab; 50], &fill).unwrap();
    model[4096 + 100..4096 + 150].fill(0xab);
    overlay.write_zeroes(2 * 4096, 4096, &fill).unwrap();
    model[2 * 4096..3 * 4096].fill(0);
    assert!(merged(&overlay, &base) == model);
    // Before the flush the file's map still sends the written block to the base (its old
    // contents, never a hole), while the zeroing is already there.
    let mut before = base.clone();
    before[2 * 4096..3 * 4096].fill(0);
    assert!(
        snapshot(&path, size, &base) == before,
        "unflushed data reached the map on disk"
    );
    overlay.flush().unwrap();
    assert!(snapshot(&path, size, &base) == model, "a flush persists the map");
    // Dropping an overlay flushes what is left.
    overlay.write(10 * 4096, &[0xcd; 4096], &fill).unwrap();
    model[10 * 4096..11 * 4096].fill(0xcd);
    drop(overlay);
    assert!(snapshot(&path, size, &base) == model);
}

#[test]
fn servers_creating_the_same_overlay_at_once_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let path = dir.path().join(format!("new-{round}.overlay"));
        let barrier = std::sync::Barrier::new(4);
        let opened: Vec<Result<Overlay>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        Overlay::open(&path, identity(1 << 20), Access::Serve)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        // One wins the lock; the others find the same file locked. Had one replaced the
        // file, two would hold locks on different files, one of them unnamed.
        let winners: Vec<&Overlay> = opened.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} servers own the overlay",
            winners.len()
        );
        for err in opened.iter().filter_map(|o| o.as_ref().err()) {
            assert!(err.to_string().contains("in use"), "{err}");
        }
    }
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.ends_with(".overlay")), "{names:?}");
}
