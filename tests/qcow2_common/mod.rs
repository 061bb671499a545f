//! Helpers shared by the qcow2 test suites.
#![allow(dead_code)]

use std::path::Path;

use imgpack::input::DiskSource;
use imgpack::{convert, extract, ConvertOptions, ExtractOptions};
use sha2::{Digest, Sha256};

/// Reads a whole disk through `source` in pieces of `piece` bytes, using `next_data` to skip
/// what it says is zero, and checks `next_data` never skips past data it later reads.
pub fn read_disk(source: &dyn DiskSource, piece: usize) -> imgpack::Result<Vec<u8>> {
    let size = source.virtual_size() as usize;
    let mut disk = vec![0u8; size];
    let mut scratch = Vec::new();
    let mut position = 0u64;
    while (position as usize) < size {
        let Some(next) = source.next_data(position)? else {
            break;
        };
        assert!(next >= position, "next_data went backwards");
        if next as usize >= size {
            break;
        }
        let start = next - next % piece as u64;
        let len = piece.min(size - start as usize);
        let data = source.read(start, len, &mut scratch)?;
        assert_eq!(data.len(), len);
        disk[start as usize..start as usize + len].copy_from_slice(data);
        position = start + len as u64;
    }
    Ok(disk)
}

/// Reads every piece of the disk, ignoring `next_data`.
pub fn read_every_piece(source: &dyn DiskSource, piece: usize) -> imgpack::Result<Vec<u8>> {
    let size = source.virtual_size() as usize;
    let mut disk = Vec::with_capacity(size);
    let mut scratch = vec![0xEE; piece]; // stale bytes that must be overwritten
    let mut start = 0;
    while start < size {
        let len = piece.min(size - start);
        disk.extend_from_slice(source.read(start as u64, len, &mut scratch)?);
        start += len;
    }
    Ok(disk)
}

/// The sha256 of `bytes`, in hex.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Converts `image` to an archive and back with the library, returning the raw disk and the
/// conversion's reported disk size.
pub fn round_trip(
    image: &Path,
    dir: &Path,
    chunk_size: u64,
    threads: Option<usize>,
) -> imgpack::Result<(Vec<u8>, u64)> {
    let archive = dir.join("out.imgpack");
    let raw = dir.join("out.raw");
    let options = ConvertOptions {
        chunk_size,
        threads,
        ..ConvertOptions::default()
    };
    let report = convert(image, &archive, &options)?;
    extract(&archive, &raw, &ExtractOptions::default())?;
    let bytes = std::fs::read(&raw).expect("reading the extracted disk");
    std::fs::remove_file(&archive).ok();
    std::fs::remove_file(&raw).ok();
    Ok((bytes, report.disk_size))
}

/// Bytes of non-zero 4 KiB blocks.
pub fn nonzero_blocks(disk: &[u8]) -> u64 {
    disk.chunks(4096)
        .filter(|b| b.iter().any(|&x| x != 0))
        .map(|b| b.len() as u64)
        .sum()
}
