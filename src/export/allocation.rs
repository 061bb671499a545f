//! [`Allocation`]: which blocks of an output format hold data, planned from the archive's
//! index alone (its zero-block bitmaps), before a byte of data is decoded.
//!
//! A block is allocated when any stored 4 KiB block of the archive overlaps it, so an output
//! allocates no more than the data needs (a block smaller than 4 KiB inside a stored 4 KiB
//! block is allocated even if it happens to be zero: correct, merely not minimal). Allocated
//! blocks are kept as sorted runs, each with the number of allocated blocks before it, so the
//! host position of a block (its ordinal among allocated blocks) is a binary search away and a
//! dense 1 TiB disk costs a few runs rather than a table of millions of entries.

use crate::archive::format::payload_runs;
use crate::archive::reader::ArchiveReader;
use crate::read_at::ReadAt;

/// A run of consecutive allocated blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// The first block of the run.
    pub first: u64,
    /// How many blocks the run holds.
    pub count: u64,
    /// Allocated blocks before the run: the ordinal of `first`.
    pub ordinal: u64,
}

/// The allocated blocks of a disk divided into blocks of `block_size` bytes.
#[derive(Debug, Clone)]
pub struct Allocation {
    blocks: u64,
    runs: Vec<Run>,
    allocated: u64,
}

impl Allocation {
    /// The blocks of `block_size` bytes (a power of two) holding stored data in `reader`.
    pub fn of_archive<R: ReadAt>(reader: &ArchiveReader<R>, block_size: u64) -> Self {
        let mut allocation = Allocation::empty(block_size, reader.virtual_size());
        let chunk_size = reader.geometry().chunk_size();
        for record in reader.records() {
            let base = record.chunk * chunk_size;
            for (start, len) in payload_runs(record, reader.chunk_len(record)) {
                let from = base + start as u64;
                let to = from + len as u64 - 1;
                allocation.add(from / block_size, to / block_size);
            }
        }
        allocation
    }

    /// Every block allocated (fixed and preallocated outputs).
    pub fn full(block_size: u64, virtual_size: u64) -> Self {
        let mut allocation = Allocation::empty(block_size, virtual_size);
        if allocation.blocks > 0 {
            allocation.add(0, allocation.blocks - 1);
        }
        allocation
    }

    fn empty(block_size: u64, virtual_size: u64) -> Self {
        debug_assert!(block_size.is_power_of_two());
        Allocation {
            blocks: virtual_size.div_ceil(block_size),
            runs: Vec::new(),
            allocated: 0,
        }
    }

    /// Marks blocks `first..=last` allocated; calls come in increasing order, possibly
    /// overlapping the previous run's last block.
    fn add(&mut self, first: u64, last: u64) {
        if let Some(run) = self.runs.last_mut() {
            let end = run.first + run.count;
            if first <= end {
                if last >= end {
                    let grown = last + 1 - end;
                    run.count += grown;
                    self.allocated += grown;
                }
                return;
            }
        }
        let count = last + 1 - first;
        self.runs.push(Run {
            first,
            count,
            ordinal: self.allocated,
        });
        self.allocated += count;
    }

    /// Blocks in the disk, allocated or not.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Allocated blocks.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// The runs of allocated blocks, in order.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// The ordinal of `block` among the allocated blocks, if it is allocated.
    pub fn ordinal(&self, block: u64) -> Option<u64> {
        let i = self.runs.partition_point(|run| run.first <= block);
        let run = self.runs.get(i.checked_sub(1)?)?;
        (block < run.first + run.count).then(|| run.ordinal + (block - run.first))
    }

    /// The ordinals of blocks `first..first + count` (`None` where unallocated), in order,
    /// walking the runs once: what a table covering those blocks is filled from.
    pub fn ordinals(&self, first: u64, count: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let end = first + count;
        let start = self.runs.partition_point(|run| run.first + run.count <= first);
        self.runs[start..]
            .iter()
            .take_while(move |run| run.first < end)
            .flat_map(move |run| {
                let from = run.first.max(first);
                let to = (run.first + run.count).min(end);
                (from..to).map(move |block| (block, run.ordinal + (block - run.first)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_and_ordinals_count_allocated_blocks_before() {
        let mut a = Allocation::empty(4096, 100 * 4096);
        a.add(2, 3);
        a.add(3, 5); // overlaps the previous run's last block
        a.add(6, 6); // adjacent: same run
        a.add(10, 11);
        assert_eq!(a.runs().len(), 2);
        assert_eq!(a.allocated(), 7);
        assert_eq!(a.ordinal(1), None);
        assert_eq!(a.ordinal(2), Some(0));
        assert_eq!(a.ordinal(6), Some(4));
        assert_eq!(a.ordinal(7), None);
        assert_eq!(a.ordinal(11), Some(6));
        assert_eq!(a.ordinal(12), None);
        let some: Vec<_> = a.ordinals(5, 6).collect();
        assert_eq!(some, vec![(5, 3), (6, 4), (10, 5)]);
    }

    #[test]
    fn full_allocates_every_block_including_a_partial_last_one() {
        let a = Allocation::full(65536, 3 * 65536 + 512);
        assert_eq!(a.blocks(), 4);
        assert_eq!(a.allocated(), 4);
        assert_eq!(a.ordinal(3), Some(3));
        assert_eq!(Allocation::full(65536, 0).allocated(), 0);
    }
}
