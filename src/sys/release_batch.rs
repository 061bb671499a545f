//! Batching the release of a memory map's finished ranges.
//!
//! Each `MADV_DONTNEED` call ends in a TLB flush that interrupts every other core running the
//! process, however few pages it drops; released per 1 MiB chunk, those flushes were about a
//! third of the call's cost. [`ReleaseBatch`] collects finished ranges (which the workers finish
//! out of order) and hands them back, merged where they touch, once enough have gathered, so one
//! call drops many chunks' pages.

/// Finished ranges waiting to be released.
#[derive(Debug, Default)]
pub(crate) struct ReleaseBatch {
    ranges: Vec<(usize, usize)>,
    bytes: usize,
}

impl ReleaseBatch {
    /// Bytes gathered before a batch is handed back: 16 chunks of the default size, a few
    /// MiB of mapped pages more in the resident size than releasing each chunk at once.
    pub(crate) const BYTES: usize = 16 << 20;

    /// Adds the finished range `[offset, offset + len)`; once [`Self::BYTES`] have gathered,
    /// returns them as `(offset, len)` runs, sorted, adjacent or overlapping ranges merged.
    pub(crate) fn add(&mut self, offset: usize, len: usize) -> Option<Vec<(usize, usize)>> {
        if len == 0 {
            return None;
        }
        self.ranges.push((offset, len));
        self.bytes += len;
        if self.bytes < Self::BYTES {
            return None;
        }
        self.bytes = 0;
        let mut ranges = std::mem::take(&mut self.ranges);
        ranges.sort_unstable();
        let mut runs: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (start, len) in ranges {
            let end = start.saturating_add(len);
            match runs.last_mut() {
                Some((run_start, run_len)) if start <= *run_start + *run_len => {
                    *run_len = (*run_start + *run_len).max(end) - *run_start;
                }
                _ => runs.push((start, end - start)),
            }
        }
        Some(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn holds_ranges_until_a_batch_is_full_then_merges_the_adjacent_ones() {
        let mut batch = ReleaseBatch::default();
        // Out of order, as two workers finish them, with a hole at chunks 6-7.
        let order = [1, 0, 3, 2, 5, 4, 9, 8, 11, 10, 13, 12, 15, 14, 17];
        for chunk in order {
            assert_eq!(batch.add(chunk * MIB, MIB), None, "chunk {chunk}");
        }
        let runs = batch.add(16 * MIB, MIB).expect("16 MiB gathered");
        assert_eq!(runs, vec![(0, 6 * MIB), (8 * MIB, 10 * MIB)]);
        assert_eq!(batch.add(18 * MIB, MIB), None, "a new batch starts empty");
    }

    #[test]
    fn overlapping_and_empty_ranges() {
        let mut batch = ReleaseBatch::default();
        assert_eq!(batch.add(5, 0), None);
        assert_eq!(batch.add(0, ReleaseBatch::BYTES - 10), None);
        let runs = batch.add(100, 20).expect("full");
        assert_eq!(runs, vec![(0, ReleaseBatch::BYTES - 10)]);
    }
}
