//! Compressed qcow2 (`-c`): clusters are compressed in parallel a window at a time and
//! written in disk order, packed byte by byte as qemu packs them (`qcow2_alloc_bytes`): a
//! compressed cluster continues in the partly used cluster of the previous one, and a cluster
//! stored whole or a table takes the next free cluster without breaking the packing. Each L2
//! table follows the data it maps; the L1 table and the refcounts, known only then, go at the
//! end, the header last at offset 0. Memory: a window, one L2 table, the L1 table and a 16-bit
//! refcount per cluster of the file. Writes are gathered and made 8 MiB at a time, each batch's
//! writeback started at once, so the fsync before the output appears has little left to flush;
//! whole pages of a batch that were never written stay holes.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{self, Tables};
use super::{be_bytes, Settings, COMPRESSED, COPIED};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::export::compress::{compress, Codec};
use crate::export::data::walk_clusters;
use crate::export::data::Disk;
use crate::export::options::CompressionType;
use crate::read_at::ReadAt;
use crate::sys;

/// Bytes gathered before they are written in one call (and their writeback started).
const WRITE_BATCH: usize = 8 << 20;

/// A cluster as it will be stored.
enum Stored {
    Compressed(Vec<u8>),
    /// Did not shrink: stored whole (padded to the cluster size).
    Plain(Vec<u8>),
}

/// The file being filled, cluster by cluster, with the refcount of each cluster.
///
/// Writes go forward but for the rest of a partly used cluster, filled after a table or a
/// whole cluster took the next free one, so they are gathered in one batch (gaps as zeros) and
/// written 8 MiB at a time rather than in one call per cluster.
struct Output<'a> {
    file: &'a File,
    cluster_size: u64,
    /// One per cluster allocated so far (cluster 0, the header, included).
    refcounts: Vec<u16>,
    /// Where the next compressed cluster would continue (0: start a fresh cluster).
    cursor: u64,
    /// Bytes not yet written, from `batch_at`.
    batch: Vec<u8>,
    batch_at: u64,
}

impl Output<'_> {
    fn next_free(&self) -> u64 {
        self.refcounts.len() as u64 * self.cluster_size
    }

    /// Writes `bytes` at `at`: into the batch when they fall in it or just after it, else
    /// straight to the file (the rest of a partly used cluster filled after a table or a
    /// whole cluster took the next free one) or in a new batch.
    fn write_at(&mut self, bytes: &[u8], at: u64) -> Result<()> {
        let batch_end = self.batch_at + self.batch.len() as u64;
        if self.batch.is_empty() || at > batch_end + self.cluster_size {
            self.flush()?;
            self.batch_at = at;
        } else if at < self.batch_at {
            // Before the batch (already written): write that part directly.
            let before = ((self.batch_at - at) as usize).min(bytes.len());
            self.write_direct(&bytes[..before], at)?;
            if before == bytes.len() {
                return Ok(());
            }
            return self.write_at(&bytes[before..], self.batch_at);
        }
        let offset = (at - self.batch_at) as usize;
        let end = offset + bytes.len();
        if end > self.batch.len() {
            self.batch.resize(end, 0);
        }
        self.batch[offset..end].copy_from_slice(bytes);
        if self.batch.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn write_direct(&self, bytes: &[u8], at: u64) -> Result<()> {
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| Error::io("writing the output", e).at(at))
    }

    /// Writes the batch and starts its writeback, so the fsync before the output appears
    /// finds little left to flush.
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let at = self.batch_at;
        for (from, to) in written_pages(&self.batch, at) {
            self.write_direct(&self.batch[from..to], at + from as u64)?;
        }
        sys::start_writeback(self.file, at, self.batch.len() as u64);
        self.batch_at += self.batch.len() as u64;
        self.batch.clear();
        Ok(())
    }

    /// Stores `bytes` in fresh whole clusters; returns their offset.
    fn append_aligned(&mut self, bytes: &[u8]) -> Result<u64> {
        let at = self.next_free();
        let clusters = (bytes.len() as u64).div_ceil(self.cluster_size);
        self.refcounts.resize(self.refcounts.len() + clusters as usize, 1);
        self.write_at(bytes, at)?;
        Ok(at)
    }

    /// Stores compressed `bytes` right after the previous ones where they can continue (in
    /// the same cluster, or growing into the next if that one is still free); returns their
    /// offset.
    fn append_packed(&mut self, bytes: &[u8]) -> Result<u64> {
        let cs = self.cluster_size;
        let len = bytes.len() as u64;
        let mut at = self.cursor;
        let current = at / cs;
        let partly_used = !at.is_multiple_of(cs);
        let fits = at + len <= (current + 1) * cs;
        let can_grow = (current + 1) * cs == self.next_free();
        // A 16-bit refcount cannot count one more reference.
        let countable = self
            .refcounts
            .get(current as usize)
            .is_some_and(|&c| c < u16::MAX);
        if !(partly_used && (fits || can_grow) && countable) {
            at = self.next_free();
        }
        let (first, last) = (at / cs, (at + len - 1) / cs);
        for cluster in first..=last {
            match self.refcounts.get_mut(cluster as usize) {
                Some(count) => *count += 1,
                None => self.refcounts.push(1),
            }
        }
        self.write_at(bytes, at)?;
        self.cursor = at + len;
        Ok(at)
    }
}

/// The file's page size for holes: a gap of whole pages left in a batch stays a hole.
const PAGE: u64 = 4096;

/// The ranges of `batch` (to be written at `at`) to write: all of it but the whole file pages
/// that hold only zeros. Such pages are gaps never written (the rest of a partly used cluster
/// that the next compressed cluster did not fit in), which qemu-img leaves as holes too:
/// written as zeros, they made the output 0.27% larger on disk than qemu-img's.
fn written_pages(batch: &[u8], at: u64) -> Vec<(usize, usize)> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut from = 0usize;
    while from < batch.len() {
        let page_end = ((at + from as u64) / PAGE + 1) * PAGE;
        let to = ((page_end - at) as usize).min(batch.len());
        let whole_page = (at + from as u64).is_multiple_of(PAGE) && to - from == PAGE as usize;
        if !(whole_page && crate::zero::is_zero(&batch[from..to])) {
            match ranges.last_mut() {
                Some((_, end)) if *end == from => *end = to,
                _ => ranges.push((from, to)),
            }
        }
        from = to;
    }
    ranges
}

/// Writes the compressed qcow2 into `file`.
pub fn write<R: ReadAt>(
    disk: &Disk<R>,
    file: &File,
    settings: &Settings,
    compression: CompressionType,
    control: &Control,
) -> Result<()> {
    let cs = settings.cluster_size;
    let codec = match compression {
        CompressionType::Zstd => Codec::Zstd,
        CompressionType::Zlib => Codec::RawDeflate,
    };
    let mut output = Output {
        file,
        cluster_size: cs,
        refcounts: vec![1], // the header
        cursor: 0,
        batch: Vec::with_capacity(WRITE_BATCH + (cs as usize) * 2),
        batch_at: 0,
    };
    let l2_entries = settings.l2_entries();
    let mut l1 = vec![0u64; settings.l1_entries() as usize];
    let mut l2: Option<(u64, Vec<u64>)> = None;
    let sector_bits = 62 - (settings.cluster_bits() - 8);

    walk_clusters(
        disk,
        cs,
        control,
        |_, bytes| {
            let mut padded;
            let whole = if bytes.len() as u64 == cs {
                bytes
            } else {
                padded = bytes.to_vec(); // qemu inflates exactly one cluster
                padded.resize(cs as usize, 0);
                &padded[..]
            };
            Ok(Some(match compress(codec, whole, cs as usize)? {
                Some(small) => Stored::Compressed(small),
                None => Stored::Plain(whole.to_vec()),
            }))
        },
        |cluster, stored| {
            let table = cluster / l2_entries;
            if l2.as_ref().is_some_and(|(t, _)| *t != table) {
                let (t, entries) = l2.take().expect("checked above");
                l1[t as usize] = output.append_aligned(&be_bytes(&entries, cs as usize))? | COPIED;
            }
            let (_, entries) = l2.get_or_insert_with(|| (table, vec![0; l2_entries as usize]));
            entries[(cluster % l2_entries) as usize] = match stored {
                Stored::Plain(bytes) => output.append_aligned(&bytes)? | COPIED,
                Stored::Compressed(bytes) => {
                    let at = output.append_packed(&bytes)?;
                    let sectors = ((at + bytes.len() as u64 - 1) >> 9) - (at >> 9);
                    COMPRESSED | (sectors << sector_bits) | at
                }
            };
            Ok(())
        },
    )?;
    if let Some((t, entries)) = l2.take() {
        l1[t as usize] = output.append_aligned(&be_bytes(&entries, cs as usize))? | COPIED;
    }
    let l1_at = output.append_aligned(&be_bytes(&l1, (settings.l1_clusters() * cs) as usize))?;

    let others = output.refcounts.len() as u64;
    let (table_clusters, block_clusters) = settings.refcount_clusters(others)?;
    let total = others + table_clusters + block_clusters;
    output.refcounts.resize(total as usize, 1);
    let table_at = others * cs;
    let blocks_at = table_at + table_clusters * cs;
    let block_offsets: Vec<u64> = (0..block_clusters).map(|b| blocks_at + b * cs).collect();
    output.write_at(
        &be_bytes(&block_offsets, (table_clusters * cs) as usize),
        table_at,
    )?;
    let mut block = vec![0u8; cs as usize];
    let refcounts = std::mem::take(&mut output.refcounts);
    for (b, counts) in refcounts.chunks((cs / 2) as usize).enumerate() {
        block.fill(0);
        for (slot, count) in block.chunks_exact_mut(2).zip(counts) {
            slot.copy_from_slice(&count.to_be_bytes());
        }
        output.write_at(&block, blocks_at + b as u64 * cs)?;
    }
    output.flush()?;
    file.set_len(total * cs)
        .map_err(|e| Error::io("sizing the output", e))?;
    let header = header::encode(
        settings,
        &Tables {
            l1_offset: l1_at,
            refcount_table_offset: table_at,
            refcount_table_clusters: table_clusters,
        },
    );
    file.write_all_at(&header, 0)
        .map_err(|e| Error::io("writing the qcow2 header", e).at(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_zero_pages_are_left_out_and_partial_ones_written() {
        let mut batch = vec![1u8; 5 * PAGE as usize];
        batch[PAGE as usize..3 * PAGE as usize].fill(0); // pages 1 and 2 (from `at` 0)
        assert_eq!(
            written_pages(&batch, 0),
            vec![(0, PAGE as usize), (3 * PAGE as usize, 5 * PAGE as usize)]
        );
        // From an unaligned start, the zero run covers page 1 of the file only partly on
        // one side: only whole file pages are left out.
        assert_eq!(
            written_pages(&batch, 100),
            vec![
                (0, 2 * PAGE as usize - 100),
                (3 * PAGE as usize - 100, 5 * PAGE as usize)
            ]
        );
        assert_eq!(written_pages(&[0u8; 10], 0), vec![(0, 10)]);
        assert!(written_pages(&[], 0).is_empty());
    }
}
