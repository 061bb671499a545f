//! Compressed qcow2 (`-c`): clusters are compressed in parallel a window at a time and
//! appended in disk order, packed byte by byte as qemu packs them; each L2 table follows the
//! data it maps, and the L1 table and the refcounts, which only then are known, go at the end.
//! The header is written last, at offset 0. Memory: a window, one L2 table, the L1 table and
//! a 16-bit refcount per cluster of the file.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use super::header::{self, Tables};
use super::{be_bytes, Settings, COMPRESSED, COPIED};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::export::appender::Appender;
use crate::export::compress::{compress, Codec};
use crate::export::data::walk_clusters;
use crate::export::data::Disk;
use crate::export::options::CompressionType;
use crate::read_at::ReadAt;

/// A cluster as it will be stored.
enum Stored {
    Compressed(Vec<u8>),
    /// Did not shrink: stored whole (padded to the cluster size).
    Plain(Vec<u8>),
}

/// The file being appended to, with the refcount of each of its clusters.
struct Output<'a> {
    out: Appender<&'a File>,
    cluster_size: u64,
    refcounts: Vec<u16>,
}

impl Output<'_> {
    /// Counts one more reference to every cluster `from..to` overlaps.
    fn reference(&mut self, from: u64, to: u64) {
        let (first, last) = (from / self.cluster_size, (to - 1) / self.cluster_size);
        if self.refcounts.len() <= last as usize {
            self.refcounts.resize(last as usize + 1, 0);
        }
        for count in &mut self.refcounts[first as usize..=last as usize] {
            *count += 1;
        }
    }

    /// Appends `bytes` at the next cluster boundary; returns their offset.
    fn append_aligned(&mut self, bytes: &[u8]) -> Result<u64> {
        self.out.align(self.cluster_size)?;
        let at = self.out.position();
        if bytes.is_empty() {
            return Ok(at); // an empty L1 table (a disk of size 0) takes no cluster
        }
        self.out.write(bytes)?;
        self.out.align(self.cluster_size)?;
        self.reference(at, self.out.position());
        Ok(at)
    }

    /// Appends compressed bytes right after the previous ones; returns their offset.
    fn append_packed(&mut self, bytes: &[u8]) -> Result<u64> {
        let current = (self.out.position() / self.cluster_size) as usize;
        if self.refcounts.get(current) == Some(&u16::MAX) {
            self.out.align(self.cluster_size)?; // a 16-bit refcount cannot count one more
        }
        let at = self.out.position();
        self.out.write(bytes)?;
        self.reference(at, at + bytes.len() as u64);
        Ok(at)
    }
}

/// Writes the compressed qcow2 into `file`.
pub fn write<R: ReadAt>(
    disk: &Disk<R>,
    mut file: &File,
    settings: &Settings,
    compression: CompressionType,
    control: &Control,
) -> Result<()> {
    let cs = settings.cluster_size;
    let codec = match compression {
        CompressionType::Zstd => Codec::Zstd,
        CompressionType::Zlib => Codec::RawDeflate,
    };
    file.seek(SeekFrom::Start(cs))
        .map_err(|e| Error::io("positioning the output", e))?;
    let mut output = Output {
        out: Appender::new(file, cs),
        cluster_size: cs,
        refcounts: vec![1], // the header
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

    let others = output.out.position() / cs;
    debug_assert_eq!(output.refcounts.len() as u64, others);
    let (table_clusters, block_clusters) = settings.refcount_clusters(others)?;
    let total = others + table_clusters + block_clusters;
    output.refcounts.resize(total as usize, 1);
    let table_at = others * cs;
    let blocks_at = table_at + table_clusters * cs;
    let block_offsets: Vec<u64> = (0..block_clusters).map(|b| blocks_at + b * cs).collect();
    output
        .out
        .write(&be_bytes(&block_offsets, (table_clusters * cs) as usize))?;
    let mut block = vec![0u8; cs as usize];
    for counts in output.refcounts.chunks((cs / 2) as usize) {
        block.fill(0);
        for (slot, count) in block.chunks_exact_mut(2).zip(counts) {
            slot.copy_from_slice(&count.to_be_bytes());
        }
        output.out.write(&block)?;
    }
    debug_assert_eq!(output.out.position(), total * cs);
    output.out.finish()?;
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
