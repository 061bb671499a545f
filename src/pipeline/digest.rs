//! The image digest without an archive: the leaves of a random-access [`DiskSource`] hashed in
//! parallel, skipping what the source knows is zero ([`digest_source`]); a byte stream cut into
//! leaves by a reader thread and hashed in parallel ([`digest_stream`]); and [`ArchiveDisk`],
//! an archive seen as a `DiskSource`, so that an archive's content is digested the same way.
//!
//! Leaves that turn out to be all zero are not hashed: [`TreeHasher`] puts the precomputed
//! zero-leaf hash in their place.

use std::io::Read;
use std::sync::mpsc::sync_channel;

use rayon::prelude::*;

use super::stream::read_chunks;
use super::DataChunks;
use crate::archive::digest::{sha256, ImageDigest, Sha256Hash, TreeHasher, LEAF_SIZE};
use crate::archive::format::BLOCK_SIZE;
use crate::archive::reader::ArchiveReader;
use crate::control::Control;
use crate::error::Result;
use crate::input::DiskSource;
use crate::read_at::ReadAt;
use crate::zero::is_zero;

/// Spans hashed per parallel window.
const WINDOW: usize = 64;

/// What digesting a disk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskDigest {
    /// The image digest.
    pub digest: ImageDigest,
    /// Size of the virtual disk.
    pub virtual_size: u64,
    /// Bytes of non-zero 4 KiB blocks.
    pub disk_size: u64,
}

/// The leaves of one span that hold data, and its bytes of non-zero 4 KiB blocks.
struct SpanHashes {
    leaves: Vec<(u64, Sha256Hash)>,
    disk_size: u64,
}

/// Hashes the leaves of `data`, the bytes of the disk from `start` (leaf-aligned).
fn hash_leaves(start: u64, data: &[u8]) -> SpanHashes {
    let mut span = SpanHashes {
        leaves: Vec::new(),
        disk_size: 0,
    };
    for (i, leaf) in data.chunks(LEAF_SIZE as usize).enumerate() {
        let non_zero: u64 = leaf
            .chunks(BLOCK_SIZE)
            .filter(|block| !is_zero(block))
            .map(|block| block.len() as u64)
            .sum();
        if non_zero > 0 {
            span.leaves.push((start / LEAF_SIZE + i as u64, sha256(leaf)));
            span.disk_size += non_zero;
        }
    }
    span
}

/// Adds a window's span hashes, in order, to `tree` and `disk_size`.
fn absorb(tree: &mut TreeHasher, disk_size: &mut u64, spans: Vec<SpanHashes>) -> Result<()> {
    for span in spans {
        *disk_size += span.disk_size;
        for (leaf, hash) in &span.leaves {
            tree.add_leaf(*leaf, hash)?;
        }
    }
    Ok(())
}

/// Digests `source` in spans of `span` bytes (a multiple of the leaf: the archive's chunk size
/// for [`ArchiveDisk`], so each chunk is decoded once), on the current rayon pool.
pub fn digest_source(source: &dyn DiskSource, span: u64, control: &Control) -> Result<DiskDigest> {
    debug_assert!(span.is_multiple_of(LEAF_SIZE));
    let virtual_size = source.virtual_size();
    let mut spans = DataChunks::new(source, span);
    let mut tree = TreeHasher::new();
    let mut disk_size = 0u64;
    while let Some(window) = spans.next_window(WINDOW)? {
        control.check()?;
        let hashed: Vec<SpanHashes> = window
            .par_iter()
            .map_init(Vec::new, |scratch, &index| -> Result<SpanHashes> {
                let offset = index * span;
                let len = (virtual_size - offset).min(span) as usize;
                let hashes = hash_leaves(offset, source.read(offset, len, scratch)?);
                source.confirm_read(offset, len)?;
                Ok(hashes)
            })
            .collect::<Result<_>>()?;
        absorb(&mut tree, &mut disk_size, hashed)?;
        if let Some(last) = window.last() {
            let done = ((last + 1) * span).min(virtual_size);
            control.report(done, Some(virtual_size), disk_size);
        }
    }
    Ok(DiskDigest {
        digest: tree.finish(virtual_size)?,
        virtual_size,
        disk_size,
    })
}

/// Digests a byte stream (a decompressor, standard input) of at most `max_virtual_size` bytes:
/// a reader thread cuts it into leaves while the pool hashes the previous ones.
pub fn digest_stream<R: Read + Send>(
    reader: R,
    max_virtual_size: u64,
    control: &Control,
) -> Result<DiskDigest> {
    let (full_tx, full_rx) = sync_channel(WINDOW * 2);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(WINDOW * 3);
    std::thread::scope(|scope| {
        let reader_thread = scope.spawn(move || {
            read_chunks(
                reader,
                LEAF_SIZE as usize,
                max_virtual_size,
                &full_tx,
                &empty_rx,
                control,
            )
        });
        let mut tree = TreeHasher::new();
        let mut disk_size = 0u64;
        let mut hash_all = || -> Result<()> {
            // Wait for one leaf, then take what is ready, so hashing keeps pace with a slow decoder.
            while let Ok(first) = full_rx.recv() {
                let mut window = vec![first?];
                while window.len() < WINDOW {
                    match full_rx.try_recv() {
                        Ok(item) => window.push(item?),
                        Err(_) => break,
                    }
                }
                control.check()?;
                let hashed: Vec<SpanHashes> = window
                    .par_iter()
                    .map(|(index, leaf)| hash_leaves(index * LEAF_SIZE, leaf))
                    .collect();
                absorb(&mut tree, &mut disk_size, hashed)?;
                for (_, buffer) in window {
                    let _ = empty_tx.try_send(buffer);
                }
                control.report(disk_size, None, disk_size);
            }
            Ok(())
        };
        let hashed = hash_all();
        drop(full_rx); // unblocks the reader thread if hashing stopped early
        let length = reader_thread.join().expect("stream reader thread panicked");
        hashed?;
        let virtual_size = length?;
        Ok(DiskDigest {
            digest: tree.finish(virtual_size)?,
            virtual_size,
            disk_size,
        })
    })
}

/// An archive's virtual disk as a [`DiskSource`]: its stored chunks are its data, every chunk
/// decoded and checked (crc32, and SHA-256 in version 2) as it is read.
pub struct ArchiveDisk<'a, R: ReadAt> {
    reader: &'a ArchiveReader<R>,
}

impl<'a, R: ReadAt> ArchiveDisk<'a, R> {
    /// The disk of `reader`.
    pub fn new(reader: &'a ArchiveReader<R>) -> Self {
        ArchiveDisk { reader }
    }
}

impl<R: ReadAt + Send + Sync> DiskSource for ArchiveDisk<'_, R> {
    fn format(&self) -> &'static str {
        "imgpack"
    }

    fn virtual_size(&self) -> u64 {
        self.reader.virtual_size()
    }

    fn next_data(&self, from: u64) -> Result<Option<u64>> {
        let chunk_size = self.reader.geometry().chunk_size();
        let records = self.reader.records();
        let first_after = records.partition_point(|r| (r.chunk + 1).saturating_mul(chunk_size) <= from);
        Ok(records.get(first_after).map(|r| from.max(r.chunk * chunk_size)))
    }

    fn read<'a>(&'a self, offset: u64, len: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        scratch.resize(len, 0);
        let n = self.reader.read_at(offset, scratch)?;
        Ok(&scratch[..n])
    }
}

/// The image digest of a version 2 archive's content: from the chunks' SHA-256s when each
/// chunk is a leaf (no decoding: the SHA-256s are checked whenever a chunk is decoded), else
/// by decoding and hashing the leaves. `verify` compares it with the stored digest, a library
/// download with the catalog's.
pub fn content_digest<R: ReadAt + Send + Sync>(
    reader: &ArchiveReader<R>,
    control: &Control,
) -> Result<ImageDigest> {
    let chunk_size = reader.geometry().chunk_size();
    if chunk_size == LEAF_SIZE {
        let mut tree = TreeHasher::new();
        for record in reader.records() {
            if let Some(sha256) = reader.chunk_sha256(record) {
                tree.add_leaf(record.chunk, sha256)?;
            }
        }
        return tree.finish(reader.virtual_size());
    }
    let span = chunk_size.max(LEAF_SIZE);
    Ok(digest_source(&ArchiveDisk::new(reader), span, control)?.digest)
}
