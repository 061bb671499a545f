//! Uncompressed qcow2: the whole layout follows from the archive's index (which clusters hold
//! data), so the metadata is written first and the data in parallel at its final places.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{self, Tables};
use super::{be_bytes, Settings, COPIED};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::export::allocation::Allocation;
use crate::export::data::write_positional;
use crate::export::data::Disk;
use crate::export::options::Preallocation;
use crate::read_at::ReadAt;

/// Writes the planned qcow2 into `file`.
pub fn write<R: ReadAt>(disk: &Disk<R>, file: &File, settings: &Settings, control: &Control) -> Result<()> {
    let cs = settings.cluster_size;
    let allocation = match settings.preallocation {
        Preallocation::Off => Allocation::of_archive(disk.reader, cs),
        Preallocation::Metadata => Allocation::full(cs, settings.virtual_size),
    };
    let l2_entries = settings.l2_entries();
    let tables = l2_tables(&allocation, l2_entries);
    let l1_clusters = settings.l1_clusters();
    let others = 1 + l1_clusters + tables.len() as u64 + allocation.allocated();
    let (table_clusters, block_clusters) = settings.refcount_clusters(others)?;
    let total = others + table_clusters + block_clusters;
    let refcount_table_at = cs;
    let refcount_blocks_at = refcount_table_at + table_clusters * cs;
    let l1_at = refcount_blocks_at + block_clusters * cs;
    let l2_at = l1_at + l1_clusters * cs;
    let data_at = l2_at + tables.len() as u64 * cs;

    let put = |bytes: &[u8], at: u64| {
        file.write_all_at(bytes, at)
            .map_err(|e| Error::io("writing the qcow2 metadata", e).at(at))
    };
    file.set_len(total * cs)
        .map_err(|e| Error::io("sizing the output", e))?;
    let header = header::encode(
        settings,
        &Tables {
            l1_offset: l1_at,
            refcount_table_offset: refcount_table_at,
            refcount_table_clusters: table_clusters,
        },
    );
    put(&header, 0)?;

    // Every cluster of the file is used exactly once: refcount 1 for clusters 0..total.
    let per_block = cs / 2;
    let block_offsets: Vec<u64> = (0..block_clusters).map(|b| refcount_blocks_at + b * cs).collect();
    put(
        &be_bytes(&block_offsets, (table_clusters * cs) as usize),
        refcount_table_at,
    )?;
    for (b, &at) in block_offsets.iter().enumerate() {
        let first = b as u64 * per_block;
        let used = total.saturating_sub(first).min(per_block) as usize;
        let mut block = vec![0u8; cs as usize];
        for entry in block.chunks_exact_mut(2).take(used) {
            entry.copy_from_slice(&1u16.to_be_bytes());
        }
        put(&block, at)?;
    }

    let mut l1 = vec![0u64; settings.l1_entries() as usize];
    for (position, &table) in tables.iter().enumerate() {
        let at = l2_at + position as u64 * cs;
        l1[table as usize] = at | COPIED;
        let mut entries = vec![0u64; l2_entries as usize];
        for (cluster, ordinal) in allocation.ordinals(table * l2_entries, l2_entries) {
            entries[(cluster - table * l2_entries) as usize] = (data_at + ordinal * cs) | COPIED;
        }
        put(&be_bytes(&entries, cs as usize), at)?;
    }
    put(&be_bytes(&l1, l1.len() * 8), l1_at)?;
    control.check()?;

    write_positional(
        disk,
        file,
        cs,
        &|cluster| allocation.ordinal(cluster).map(|o| data_at + o * cs),
        control,
    )
}

/// The L2 tables that map at least one allocated cluster, by their index in the L1 table.
fn l2_tables(allocation: &Allocation, l2_entries: u64) -> Vec<u64> {
    let mut tables: Vec<u64> = Vec::new();
    for run in allocation.runs() {
        let first = run.first / l2_entries;
        let last = (run.first + run.count - 1) / l2_entries;
        let from = match tables.last() {
            Some(&t) if t >= first => t + 1,
            _ => first,
        };
        tables.extend(from..=last);
    }
    tables
}
