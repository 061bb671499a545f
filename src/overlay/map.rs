//! [`BlockMap`]: which 4 KiB blocks of the disk the overlay holds, two bits per block, in the
//! same bytes as on disk (see [`super::format`]), so persisting a change is writing the map
//! bytes it touched.

use super::format::OVERLAY_BLOCK;
use crate::error::{Error, Result};

/// What the overlay says about one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Not in the overlay: read the base archive.
    Base = 0,
    /// Written: the bytes are in the overlay's data area.
    Data = 1,
    /// Zeroed (written zeros, or trimmed).
    Zero = 2,
}

/// A run of blocks in one state, clipped to the range asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Disk offset where the run starts.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The state of every block in it.
    pub state: BlockState,
}

/// The block map of a disk of `virtual_size` bytes.
#[derive(Debug, Clone)]
pub struct BlockMap {
    bytes: Vec<u8>,
    virtual_size: u64,
}

impl BlockMap {
    /// A map from its stored bytes (at least `map_bytes(virtual_size)` of them), checking every
    /// entry; `map_offset` places errors in the file.
    pub fn from_bytes(mut bytes: Vec<u8>, virtual_size: u64, map_offset: u64) -> Result<Self> {
        let blocks = virtual_size.div_ceil(OVERLAY_BLOCK);
        let needed = blocks.div_ceil(4) as usize;
        if bytes.len() < needed {
            return Err(Error::corrupt(map_offset, "overlay block map is truncated"));
        }
        for (i, &byte) in bytes.iter().enumerate() {
            for slot in 0..4u64 {
                let value = (byte >> (2 * slot)) & 3;
                let block = i as u64 * 4 + slot;
                if value == 3 || (block >= blocks && value != 0) {
                    return Err(Error::corrupt(
                        map_offset + i as u64,
                        format!("overlay block map entry for block {block} is invalid ({value})"),
                    ));
                }
            }
        }
        bytes.truncate(needed);
        Ok(BlockMap { bytes, virtual_size })
    }

    /// An empty map: every block reads from the base.
    pub fn empty(virtual_size: u64) -> Self {
        let needed = virtual_size.div_ceil(OVERLAY_BLOCK).div_ceil(4) as usize;
        BlockMap {
            bytes: vec![0; needed],
            virtual_size,
        }
    }

    /// The state of block `block`.
    pub fn state(&self, block: u64) -> BlockState {
        match (self.bytes[(block / 4) as usize] >> (2 * (block % 4))) & 3 {
            0 => BlockState::Base,
            1 => BlockState::Data,
            _ => BlockState::Zero,
        }
    }

    /// Sets blocks `first..end` to `state`.
    pub fn set(&mut self, first: u64, end: u64, state: BlockState) {
        for block in first..end {
            let at = (block / 4) as usize;
            let shift = 2 * (block % 4);
            self.bytes[at] = (self.bytes[at] & !(3 << shift)) | ((state as u8) << shift);
        }
    }

    /// The map bytes holding blocks `first..end` (`first < end`) as they would be after
    /// [`BlockMap::set`], and the index of the first: what to write to the file before the
    /// change is made in memory.
    pub fn with_change(&self, first: u64, end: u64, state: BlockState) -> (usize, Vec<u8>) {
        let start = (first / 4) as usize;
        let stop = ((end - 1) / 4) as usize + 1;
        let mut part = BlockMap {
            bytes: self.bytes[start..stop].to_vec(),
            virtual_size: u64::MAX,
        };
        part.set(first - start as u64 * 4, end - start as u64 * 4, state);
        (start, part.bytes)
    }

    /// Whether any block in `first..end` holds data in the overlay.
    pub fn any_data(&self, first: u64, end: u64) -> bool {
        (first..end.min(self.blocks())).any(|b| self.state(b) == BlockState::Data)
    }

    /// Whether every block in `first..end` is in `state`.
    pub fn all(&self, first: u64, end: u64, state: BlockState) -> bool {
        (first..end.min(self.blocks())).all(|b| self.state(b) == state)
    }

    /// The map's bytes, as stored.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Copies `other`'s bytes `start..stop` (a map of the same disk) into this one.
    pub fn copy_bytes_from(&mut self, other: &BlockMap, start: usize, stop: usize) {
        self.bytes[start..stop].copy_from_slice(&other.bytes[start..stop]);
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.virtual_size.div_ceil(OVERLAY_BLOCK)
    }

    /// The runs of equal state covering `offset..offset + len` (clipped to the disk).
    pub fn runs(&self, offset: u64, len: u64) -> Vec<Run> {
        self.runs_at_most(offset, len, usize::MAX)
    }

    /// The first `max` runs of equal state from `offset` on, covering a prefix of
    /// `offset..offset + len`: the scan stops at the first block past the last run, so a
    /// fragmented map costs `max` runs, not one per block of the range.
    pub fn runs_at_most(&self, offset: u64, len: u64, max: usize) -> Vec<Run> {
        let end = offset.saturating_add(len).min(self.virtual_size);
        let mut runs: Vec<Run> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let block = pos / OVERLAY_BLOCK;
            let next = ((block + 1) * OVERLAY_BLOCK).min(end);
            let state = self.state(block);
            let full = runs.len() >= max;
            match runs.last_mut() {
                Some(run) if run.state == state => run.len += next - pos,
                _ if full => break,
                _ => runs.push(Run {
                    offset: pos,
                    len: next - pos,
                    state,
                }),
            }
            pos = next;
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_and_runs() {
        let mut map = BlockMap::empty(10 * OVERLAY_BLOCK + 100);
        map.set(1, 3, BlockState::Data);
        let (at, bytes) = map.with_change(5, 9, BlockState::Zero);
        map.set(5, 9, BlockState::Zero);
        assert_eq!((at, bytes.as_slice()), (1, &map.bytes[1..3]));
        let runs = map.runs(100, 11 * OVERLAY_BLOCK);
        let states: Vec<_> = runs.iter().map(|r| (r.offset, r.len, r.state)).collect();
        let b = OVERLAY_BLOCK;
        assert_eq!(
            states,
            vec![
                (100, b - 100, BlockState::Base),
                (b, 2 * b, BlockState::Data),
                (3 * b, 2 * b, BlockState::Base),
                (5 * b, 4 * b, BlockState::Zero),
                (9 * b, b + 100, BlockState::Base),
            ]
        );
        let copy = BlockMap::from_bytes(map.bytes[0..3].to_vec(), map.virtual_size, 4096).unwrap();
        assert_eq!(copy.runs(0, u64::MAX), map.runs(0, u64::MAX));
        // At most `max` runs, a prefix of the full list.
        let all = map.runs(0, u64::MAX);
        assert!(all.len() > 2);
        assert_eq!(map.runs_at_most(0, u64::MAX, 2), all[..2]);
        assert!(map.runs_at_most(0, u64::MAX, 0).is_empty());
    }

    #[test]
    fn invalid_entries_are_refused() {
        assert!(BlockMap::from_bytes(vec![0b11], OVERLAY_BLOCK, 0).is_err());
        // A bit for a block past the end of a one-block disk.
        assert!(BlockMap::from_bytes(vec![0b0100], OVERLAY_BLOCK, 0).is_err());
        assert!(BlockMap::from_bytes(vec![], OVERLAY_BLOCK, 0).is_err());
    }
}
