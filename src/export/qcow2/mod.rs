//! qcow2 output, version 3 (or 2 with `--compat 0.10`), 16-bit refcounts, big-endian.
//!
//! | cluster | planned layout (uncompressed) | compressed layout (`-c`) |
//! |---|---|---|
//! | 0 | header (72 bytes for v2, 112 for v3) | header, written last |
//! | 1.. | refcount table, refcount blocks | data: compressed clusters packed byte by byte (a cluster that does not shrink is stored whole, aligned), each L2 table written as soon as the data it maps is |
//! | then | L1 table | L1 table |
//! | then | L2 tables, one per 2^(2*cluster_bits-3) bytes of disk holding data | refcount table, refcount blocks |
//! | then | data clusters in disk order | |
//!
//! Zero clusters are left unallocated. L1 and standard L2 entries carry the COPIED flag
//! (bit 63: refcount exactly 1), compressed entries bit 62 with the descriptor of the qcow2
//! spec; every cluster's refcount is exact, so `qemu-img check` finds neither errors nor leaks.

mod compressed;
mod header;
mod planned;

use std::fs::File;

use super::options::{CompressionType, ExportOptions, Preallocation, Qcow2Compat};
use crate::control::Control;
use crate::error::{Error, ErrorKind, Result};
use crate::export::data::Disk;
use crate::read_at::ReadAt;

/// qemu's largest L1 table (QCOW_MAX_L1_SIZE, 32 MiB).
const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu's largest refcount table (QCOW_MAX_REFTABLE_SIZE, 8 MiB).
const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// L1/L2 entry flag: the cluster's refcount is exactly one.
const COPIED: u64 = 1 << 63;
/// L2 entry flag: a compressed cluster.
const COMPRESSED: u64 = 1 << 62;

/// The checked qcow2 settings of an export.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Version 2 or 3.
    pub compat: Qcow2Compat,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// `Some` when clusters are compressed.
    pub compression: Option<CompressionType>,
    /// Whether every cluster is allocated.
    pub preallocation: Preallocation,
    /// The disk's size.
    pub virtual_size: u64,
}

impl Settings {
    /// Checks the qcow2 options for a disk of `virtual_size` bytes.
    pub fn new(options: &ExportOptions, virtual_size: u64) -> Result<Self> {
        let cluster_size = options.cluster_size;
        if !cluster_size.is_power_of_two() || !(512..=2 << 20).contains(&cluster_size) {
            return Err(Error::invalid_argument(format!(
                "qcow2 cluster size {cluster_size}: a power of two from 512 to 2M is needed"
            )));
        }
        let compression =
            match (options.compress, options.compression_type, options.compat) {
                (false, Some(_), _) => {
                    return Err(Error::invalid_argument(
                        "--compression-type needs -c (compressed clusters)",
                    ))
                }
                (false, None, _) => None,
                (true, Some(CompressionType::Zstd), Qcow2Compat::V2) => return Err(Error::invalid_argument(
                    "qcow2 version 2 (--compat 0.10) cannot hold zstd clusters: use --compression-type zlib",
                )),
                (true, None, Qcow2Compat::V2) => Some(CompressionType::Zlib),
                (true, None, Qcow2Compat::V3) => Some(CompressionType::Zstd),
                (true, Some(t), _) => Some(t),
            };
        if compression.is_some() && options.preallocation != Preallocation::Off {
            return Err(Error::invalid_argument(
                "--preallocation and -c exclude each other (compressed clusters are never preallocated)",
            ));
        }
        let settings = Settings {
            compat: options.compat,
            cluster_size,
            compression,
            preallocation: options.preallocation,
            virtual_size,
        };
        let l1_bytes = settings.l1_entries() * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "a {virtual_size}-byte disk with {cluster_size}-byte clusters needs a {l1_bytes}-byte qcow2 L1 table, \
                     over qemu's 32 MiB limit: use a larger --cluster-size"
                ),
            ));
        }
        Ok(settings)
    }

    fn cluster_bits(&self) -> u32 {
        self.cluster_size.trailing_zeros()
    }

    /// Entries per L2 table (one cluster of u64).
    fn l2_entries(&self) -> u64 {
        self.cluster_size / 8
    }

    fn guest_clusters(&self) -> u64 {
        self.virtual_size.div_ceil(self.cluster_size)
    }

    fn l1_entries(&self) -> u64 {
        self.guest_clusters().div_ceil(self.l2_entries())
    }

    fn l1_clusters(&self) -> u64 {
        (self.l1_entries() * 8).div_ceil(self.cluster_size)
    }

    /// The refcount table's and blocks' cluster counts for a file whose other clusters number
    /// `others`: the blocks must count themselves and the table, hence the fixed point.
    fn refcount_clusters(&self, others: u64) -> Result<(u64, u64)> {
        let per_block = self.cluster_size / 2;
        let (mut table, mut blocks) = (1u64, 1u64);
        loop {
            let next_blocks = (others + table + blocks).div_ceil(per_block);
            let next_table = (next_blocks * 8).div_ceil(self.cluster_size);
            if (next_table, next_blocks) == (table, blocks) {
                break;
            }
            (table, blocks) = (next_table, next_blocks);
        }
        if table * self.cluster_size > MAX_REFCOUNT_TABLE_BYTES {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                "the qcow2 refcount table would pass qemu's 8 MiB limit: use a larger --cluster-size",
            ));
        }
        Ok((table, blocks))
    }
}

/// Writes the disk as qcow2 into a fresh `file`.
pub fn write<R: ReadAt>(disk: &Disk<R>, file: &File, settings: &Settings, control: &Control) -> Result<()> {
    match settings.compression {
        Some(compression) => compressed::write(disk, file, settings, compression, control),
        None => planned::write(disk, file, settings, control),
    }
}

/// Table bytes from big-endian u64 entries.
fn be_bytes(entries: &[u64], len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    for (slot, entry) in bytes.chunks_exact_mut(8).zip(entries) {
        slot.copy_from_slice(&entry.to_be_bytes());
    }
    bytes
}
