//! Helpers shared by the integration tests: deterministic image layouts and file checks,
//! the generator and mutation harness ([`rng`]), and the oracle-tool checks that decide
//! whether a test may skip ([`oracle`]). Each test binary compiles this module on its own
//! (`mod common;`), so what one binary leaves unused is not dead code.
#![allow(dead_code, unused_imports)]

#[cfg(feature = "library")]
pub mod library_fixture;
pub mod oracle;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod rng;
pub mod s3;

pub use oracle::{have, have_all, qemu_img, qemu_raw, skip};
pub use rng::{damage, mutations, Rng};

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// One region of data written into an otherwise sparse file.
#[derive(Debug, Clone)]
pub struct Region {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// A disk layout: a length and the regions holding data.
#[derive(Debug, Clone)]
pub struct Layout {
    pub name: String,
    pub len: u64,
    pub regions: Vec<Region>,
}

impl Layout {
    pub fn new(name: &str, len: u64) -> Self {
        Layout {
            name: name.into(),
            len,
            regions: Vec::new(),
        }
    }

    pub fn with(mut self, offset: u64, bytes: Vec<u8>) -> Self {
        assert!(offset + bytes.len() as u64 <= self.len);
        self.regions.push(Region { offset, bytes });
        self
    }

    /// Writes the layout as a sparse file.
    pub fn write_to(&self, path: &Path) {
        let file = File::create(path).unwrap();
        file.set_len(self.len).unwrap();
        for r in &self.regions {
            file.write_all_at(&r.bytes, r.offset).unwrap();
        }
    }

    /// The whole disk in memory (tests keep layouts small enough for that).
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len as usize];
        for r in &self.regions {
            v[r.offset as usize..r.offset as usize + r.bytes.len()].copy_from_slice(&r.bytes);
        }
        v
    }

    /// Bytes of non-zero 4 KiB blocks: the expected `disk_size`.
    pub fn disk_size(&self) -> u64 {
        self.bytes()
            .chunks(4096)
            .filter(|b| b.iter().any(|&x| x != 0))
            .map(|b| b.len() as u64)
            .sum()
    }
}

/// Compressible but not trivial bytes (text-like), `len` long.
pub fn texty(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "disk ", "image ", "zero ", "block ", "chunk ", "qcow2 ", "\n", "data ",
    ];
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(WORDS[rng.below(8) as usize].as_bytes());
    }
    v.truncate(len);
    v
}

/// Random bytes, `len` long.
pub fn random(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// The layouts every round-trip path is tested with.
pub fn layouts() -> Vec<Layout> {
    const M: u64 = 1 << 20;
    let mut rng = Rng::new(7);
    let mut scattered = Layout::new("scattered sparse, odd length", 9 * M + 12345);
    for _ in 0..25 {
        let len = 1 + rng.below(200_000) as usize;
        let offset = rng.below(9 * M + 12345 - len as u64);
        let bytes = if rng.below(2) == 0 {
            texty(&mut rng, len)
        } else {
            random(&mut rng, len)
        };
        scattered = scattered.with(offset, bytes);
    }
    vec![
        Layout::new("empty", 0),
        Layout::new("one byte", 1).with(0, vec![9]),
        Layout::new("all zero, odd length", 3 * M + 17),
        Layout::new("all random", 2 * M + 4097).with(0, random(&mut rng, (2 * M + 4097) as usize)),
        Layout::new("text", 3 * M).with(0, texty(&mut rng, 3 * M as usize)),
        Layout::new("bytes at chunk edges", 4 * M)
            .with(M - 1, vec![1, 2])
            .with(2 * M - 4096, vec![3; 4096])
            .with(4 * M - 1, vec![4]),
        Layout::new("last block partial", 65536 + 100).with(65536 + 99, vec![5]),
        Layout::new("data only past a long hole", 64 * M).with(63 * M + 5, b"tail data".to_vec()),
        scattered,
    ]
}

/// The names in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    v.sort();
    v
}

/// Allocated bytes of a file (its blocks on disk).
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Writes `bytes` to a new file.
pub fn write_file(path: &Path, bytes: &[u8]) {
    File::create(path).unwrap().write_all(bytes).unwrap();
}
