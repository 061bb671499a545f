//! What the block-mapped virtual-disk formats (VHD, VHDX, VDI, VMDK, Parallels) share: bounded reads of
//! on-disk structures and [`BlockTable`], a disk made of
//! equal blocks each either stored whole at one place in the file or reading as zeros.
//!
//! VHD, VHDX, VDI and Parallels parse their headers and tables into a [`BlockTable`] at open,
//! checking every mapped block against the file's length there, so reads never need to check
//! again. Which reader opens which format is decided in [`super::route::route()`], not here.

use serde_json::{Map, Value};

use super::DiskSource;
use crate::error::{Error, ErrorKind, Result};
use crate::read_at::ReadAt;
use crate::units::format_size;

/// Largest allocation table read into memory (entries of any of these formats).
pub const MAX_TABLE_BYTES: u64 = 256 << 20;

/// Marks a block of a [`BlockTable`] that is not stored and reads as zeros.
pub const UNMAPPED: u64 = u64::MAX;

/// Reads `len` bytes at `offset`, which must lie inside the file; `what` names the structure
/// for the error. Callers bound `len` by a sane cap first: the file's length is not a cap.
pub fn read_bytes(file: &dyn ReadAt, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
    check_inside(file.size(), offset, len, what)?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| Error::io(format!("reading {what}"), e).at(offset))?;
    Ok(buf)
}

/// Refuses a range `offset..offset + len` that does not lie inside a file of `file_size` bytes.
pub fn check_inside(file_size: u64, offset: u64, len: u64, what: &str) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= file_size && usize::try_from(len).is_ok() => Ok(()),
        _ => Err(Error::corrupt(
            offset,
            format!("{what} ({len} bytes at offset {offset}) lies outside the file ({file_size} bytes)"),
        )),
    }
}

/// Refuses a virtual size above the limit, before any table sized by it is read.
pub use super::limits::check_virtual_size;

/// Refuses a table of `bytes` bytes above [`MAX_TABLE_BYTES`].
pub fn check_table_size(bytes: u64, offset: u64, what: &str) -> Result<()> {
    if bytes > MAX_TABLE_BYTES {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "{what} of {} is larger than the {} imgpack reads",
                format_size(bytes),
                format_size(MAX_TABLE_BYTES)
            ),
        )
        .at(offset));
    }
    Ok(())
}

/// A virtual disk of equal blocks, each stored contiguously in the file or reading as zeros.
pub struct BlockTable {
    /// The format's short name.
    pub format: &'static str,
    /// The image file.
    pub file: Box<dyn ReadAt>,
    /// Size of the virtual disk.
    pub virtual_size: u64,
    /// Size of each block (the last may be cut short by the virtual size).
    pub block_size: u64,
    /// File offset of each block's data, or [`UNMAPPED`].
    pub blocks: Vec<u64>,
    /// Details for `info`.
    pub details: Map<String, Value>,
}

impl BlockTable {
    /// Checks that every mapped block's bytes inside the virtual disk lie inside the file;
    /// `table` names the table for the error (`"the VDI block map"`) and `entry_offset(i)`
    /// gives the file offset of block `i`'s entry in it. Bytes of a block past the end of the
    /// virtual disk may lie past the end of the file (qemu-img leaves such tails).
    pub fn check_blocks(&self, table: &str, entry_offset: impl Fn(usize) -> u64) -> Result<()> {
        let file_size = self.file.size();
        for (index, &host) in self.blocks.iter().enumerate() {
            if host == UNMAPPED {
                continue;
            }
            let start = index as u64 * self.block_size;
            let len = self.block_size.min(self.virtual_size.saturating_sub(start));
            if !matches!(host.checked_add(len), Some(end) if end <= file_size) {
                return Err(Error::corrupt(
                    entry_offset(index),
                    format!(
                        "{table}: block {index} is stored at offset {host}, past the end of the file ({file_size} bytes): the image is truncated"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl DiskSource for BlockTable {
    fn format(&self) -> &'static str {
        self.format
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn next_data(&self, from: u64) -> Result<Option<u64>> {
        if from >= self.virtual_size {
            return Ok(None);
        }
        let first = (from / self.block_size) as usize;
        Ok(self
            .blocks
            .get(first..)
            .and_then(|rest| rest.iter().position(|&host| host != UNMAPPED))
            .map(|i| ((first + i) as u64 * self.block_size).max(from)))
    }

    fn read<'a>(&'a self, offset: u64, len: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        scratch.resize(len, 0);
        let mut done = 0usize;
        while done < len {
            let position = offset + done as u64;
            let index = (position / self.block_size) as usize;
            let within = position % self.block_size;
            let piece = ((self.block_size - within) as usize).min(len - done);
            let out = &mut scratch[done..done + piece];
            match self.blocks.get(index).copied().unwrap_or(UNMAPPED) {
                UNMAPPED => out.fill(0),
                host => {
                    let at = host + within;
                    self.file
                        .read_exact_at(out, at)
                        .map_err(|e| Error::io("reading the input", e).at(at))?;
                }
            }
            done += piece;
        }
        Ok(scratch)
    }

    fn details(&self) -> Map<String, Value> {
        self.details.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(blocks: Vec<u64>, data: Vec<u8>) -> BlockTable {
        BlockTable {
            format: "test",
            file: Box::new(data),
            virtual_size: 10,
            block_size: 4,
            blocks,
            details: Map::new(),
        }
    }

    #[test]
    fn reads_across_blocks_and_skips_unmapped() {
        let t = table(vec![4, UNMAPPED, 0], b"ghijabcd".to_vec());
        let mut scratch = vec![7u8; 3];
        assert_eq!(t.read(0, 10, &mut scratch).unwrap(), b"abcd\0\0\0\0gh");
        assert_eq!(t.read(3, 3, &mut scratch).unwrap(), b"d\0\0");
        assert_eq!(t.next_data(4).unwrap(), Some(8));
        assert_eq!(t.next_data(9).unwrap(), Some(9));
        assert_eq!(t.next_data(10).unwrap(), None);
        t.check_blocks("the test table", |i| i as u64).unwrap();
    }

    #[test]
    fn a_block_past_the_end_is_corrupt() {
        let t = table(vec![6, UNMAPPED, UNMAPPED], b"abcdefgh".to_vec());
        let err = t.check_blocks("the test table", |i| 100 + i as u64).unwrap_err();
        assert!(err.message().starts_with("the test table: block 0"), "{err}");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert_eq!(err.offset(), Some(100));
    }
}
