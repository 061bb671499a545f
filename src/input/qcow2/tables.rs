//! L1/L2 lookups: from a guest cluster to where its bytes are (or that it reads as zeros).
//!
//! The active L1 table (at most 32 MiB, checked against the file first) is read once and every
//! entry checked on open. L2 tables are one cluster each and are read on demand, only the
//! entries a request needs. Entry layouts (big-endian):
//!
//! | table | bits   | meaning                                                              |
//! |-------|--------|----------------------------------------------------------------------|
//! | L1    | 9..56  | offset of the L2 table (cluster aligned), 0 = all unallocated        |
//! | L2    | 62     | compressed cluster                                                   |
//! | L2    | 0      | standard cluster reads as zeros (v3 without extended L2)              |
//! | L2    | 9..56  | standard cluster: host offset (cluster aligned), 0 = unallocated     |
//! | L2    | 0..x   | compressed: host byte offset, x = 62 - (cluster_bits - 8)            |
//! | L2    | x..62  | compressed: additional 512-byte sectors                              |
//! | ext.  | 0..32  | extended L2 second word: subcluster allocated                        |
//! | ext.  | 32..64 | extended L2 second word: subcluster reads as zeros                   |

use super::header::Layout;
use crate::error::{Error, Result};
use crate::input::bytes::be64;
use crate::read_at::ReadAt;

/// Bits 9..56 of an L1 or standard L2 entry: the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bit 62: compressed cluster.
const COMPRESSED: u64 = 1 << 62;
/// L2 entry bit 0: reads as zeros.
const ZERO: u64 = 1;

/// Bits 9..63 of a refcount table entry: the refcount block's offset.
const REFCOUNT_BLOCK_MASK: u64 = !0x1ff;

/// A metadata cluster at `offset` that does not lie wholly inside the file: the upload was cut.
fn truncated(entry_at: u64, what: &str, offset: u64, layout: &Layout) -> Error {
    Error::corrupt(
        entry_at,
        format!(
            "{what} at offset {offset} (0x{offset:x}, {} bytes) runs past the end of the file ({} bytes): the image is truncated",
            layout.cluster_size, layout.file_size
        ),
    )
}

/// Refuses a refcount table naming a refcount block that does not lie wholly inside the file
/// (the table itself was checked by `Header::validate`). Refcounts are not needed to read the
/// disk, but a block cut short means the upload was cut, and nothing after it can be trusted.
fn check_refcount_blocks(layout: &Layout, file: &dyn ReadAt) -> Result<()> {
    let start = layout.header.refcount_table_offset;
    // At most 8 MiB (checked by Header::validate), wholly inside the file.
    let len = u64::from(layout.header.refcount_table_clusters) * layout.cluster_size;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, start)
        .map_err(|e| Error::io("reading the qcow2 refcount table", e).at(start))?;
    for (index, raw) in bytes.chunks_exact(8).enumerate() {
        let block = be64(raw, 0) & REFCOUNT_BLOCK_MASK;
        if block != 0 && block.saturating_add(layout.cluster_size) > layout.file_size {
            let at = start + index as u64 * 8;
            return Err(truncated(at, &format!("refcount block {index}"), block, layout));
        }
    }
    Ok(())
}

/// Where a guest cluster's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Unallocated or reads as zeros: no I/O at all.
    Zero,
    /// The whole cluster is stored at `host`.
    Data {
        /// Host offset of the cluster.
        host: u64,
    },
    /// Extended L2: the subclusters whose bit is set in `allocated` are stored at `host`
    /// (at their place in the cluster); the others read as zeros.
    Subclusters {
        /// Host offset of the cluster.
        host: u64,
        /// One bit per subcluster, bit 0 first.
        allocated: u32,
    },
    /// Compressed: up to `size` bytes at host byte offset `offset` decode to the cluster.
    Compressed {
        /// Host byte offset (not aligned).
        offset: u64,
        /// Upper bound of the stored length.
        size: u64,
    },
}

/// The checked active L1 table and the rules for reading L2 entries.
#[derive(Debug)]
pub struct Tables {
    /// The checked layout.
    pub layout: Layout,
    /// L2 table offsets of the L1 entries covering the virtual disk (0 = none).
    l1: Vec<u64>,
}

impl Tables {
    /// Reads and checks the L1 entries that cover the virtual disk.
    pub fn load(layout: Layout, file: &dyn ReadAt) -> Result<Tables> {
        let count = layout.l1_needed as usize; // at most 4 Mi entries (checked against the cap)
        let start = layout.header.l1_table_offset;
        let mut bytes = vec![0u8; count * 8]; // inside the file, checked by Header::validate
        file.read_exact_at(&mut bytes, start)
            .map_err(|e| Error::io("reading the qcow2 L1 table", e).at(start))?;
        let mut l1 = Vec::with_capacity(count);
        for (index, raw) in bytes.chunks_exact(8).enumerate() {
            let entry = be64(raw, 0);
            let l2 = entry & OFFSET_MASK;
            if l2 != 0 {
                let at = start + index as u64 * 8;
                if !l2.is_multiple_of(layout.cluster_size) {
                    return Err(Error::corrupt(
                        at,
                        format!("L1 entry {index}: L2 table offset 0x{l2:x} is not cluster aligned"),
                    ));
                }
                if l2 >= layout.file_size {
                    return Err(Error::corrupt(
                        at,
                        format!("L1 entry {index}: L2 table at 0x{l2:x} starts beyond the end of the file"),
                    ));
                }
                // qemu writes every L2 table whole; one cut short is a truncated upload, and
                // reading its missing entries as zeros would store a disk of zeros.
                if l2 + layout.cluster_size > layout.file_size {
                    return Err(truncated(
                        at,
                        &format!("the L2 table of L1 entry {index}"),
                        l2,
                        &layout,
                    ));
                }
                if let Some(name) = layout.overlaps_metadata(l2, layout.cluster_size) {
                    return Err(Error::corrupt(
                        at,
                        format!("L1 entry {index}: L2 table at 0x{l2:x} overlaps {name}"),
                    ));
                }
            }
            l1.push(l2);
        }
        check_refcount_blocks(&layout, file)?;
        Ok(Tables { layout, l1 })
    }

    /// The L2 table offset for L1 index `index` (0 = unallocated).
    pub fn l2_offset(&self, index: u64) -> u64 {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.l1.get(i).copied())
            .unwrap_or(0)
    }

    /// 64-bit words per L2 entry (2 with extended L2).
    pub fn entry_words(&self) -> u64 {
        if self.layout.extended_l2 {
            2
        } else {
            1
        }
    }

    /// Reads entries `first..first + count` of the L2 table at `l2` as big-endian words into
    /// `words` (bytes past the end of the file read as zeros).
    pub fn read_l2(
        &self,
        file: &dyn ReadAt,
        l2: u64,
        first: u64,
        count: u64,
        bytes: &mut Vec<u8>,
        words: &mut Vec<u64>,
    ) -> Result<()> {
        let width = self.entry_words() * 8;
        let at = l2 + first * width;
        let len = (count * width) as usize; // within one cluster
        bytes.clear();
        bytes.resize(len, 0);
        let n = file
            .read_at_most(bytes, at)
            .map_err(|e| Error::io("reading a qcow2 L2 table", e).at(at))?;
        bytes[n..].fill(0);
        words.clear();
        words.extend(bytes.chunks_exact(8).map(|w| be64(w, 0)));
        Ok(())
    }

    /// Classifies an L2 entry (`bitmap` is the second word with extended L2, else 0) stored at
    /// file offset `at`, checking it as QEMU does plus imgpack's checks for hostile images.
    pub fn classify(&self, entry: u64, bitmap: u64, at: u64) -> Result<Cluster> {
        let layout = &self.layout;
        let cluster_size = layout.cluster_size;
        if entry & COMPRESSED != 0 {
            let shift = 62 - (layout.cluster_bits - 8);
            let offset = entry & ((1u64 << shift) - 1);
            let sectors = ((entry >> shift) & ((1u64 << (layout.cluster_bits - 8)) - 1)) + 1;
            let size = sectors * 512 - (offset & 511);
            if offset >= layout.file_size {
                return Err(Error::corrupt(
                    at,
                    format!("compressed cluster data at 0x{offset:x} starts beyond the end of the file"),
                ));
            }
            if let Some(name) = layout.overlaps_metadata(offset, size) {
                return Err(Error::corrupt(
                    at,
                    format!("compressed cluster data at 0x{offset:x} overlaps {name}"),
                ));
            }
            return Ok(Cluster::Compressed { offset, size });
        }
        let host = entry & OFFSET_MASK;
        if !host.is_multiple_of(cluster_size) {
            return Err(Error::corrupt(
                at,
                format!("cluster offset 0x{host:x} is not cluster aligned"),
            ));
        }
        let cluster = if layout.extended_l2 {
            let allocated = bitmap as u32;
            let zero = (bitmap >> 32) as u32;
            if host == 0 {
                if allocated != 0 {
                    return Err(Error::corrupt(
                        at,
                        "subclusters marked allocated in an unallocated cluster",
                    ));
                }
                return Ok(Cluster::Zero);
            }
            if allocated & zero != 0 {
                return Err(Error::corrupt(
                    at,
                    "subclusters marked both allocated and reading as zeros",
                ));
            }
            match allocated {
                0 => return Ok(Cluster::Zero),
                u32::MAX => Cluster::Data { host },
                _ => Cluster::Subclusters { host, allocated },
            }
        } else {
            if entry & ZERO != 0 {
                if layout.header.version < 3 {
                    return Err(Error::corrupt(at, "zero cluster flag in a version 2 image"));
                }
                return Ok(Cluster::Zero);
            }
            if host == 0 {
                return Ok(Cluster::Zero);
            }
            Cluster::Data { host }
        };
        if host >= layout.file_size {
            return Err(Error::corrupt(
                at,
                format!("data cluster at 0x{host:x} starts beyond the end of the file"),
            ));
        }
        if let Some(name) = layout.overlaps_metadata(host, cluster_size) {
            return Err(Error::corrupt(
                at,
                format!("data cluster at 0x{host:x} overlaps {name}"),
            ));
        }
        Ok(cluster)
    }
}
