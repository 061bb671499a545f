//! The pipeline's unit of work, a *span*: one chunk, or, when chunks are smaller than the
//! digest's 1 MiB leaves, the chunks of one leaf, so that each job can hash whole leaves.
//! [`encode_span`] encodes a span's chunks and hashes its leaves on one worker.

use crate::archive::chunk::{ChunkEncoder, EncodedChunk};
use crate::archive::digest::{sha256, Sha256Hash, LEAF_SIZE};
use crate::archive::format::Geometry;
use crate::error::{Error, Result};
use crate::zero::is_zero;

use super::{ChunkLookup, FramePool};

/// A span's chunks, ready to be written, and the hashes of its leaves that hold data.
#[derive(Debug, Default)]
pub(crate) struct EncodedSpan {
    /// The stored chunks, in order (all-zero chunks are absent).
    pub(crate) chunks: Vec<EncodedChunk>,
    /// `(leaf number, SHA-256 of the leaf)` for each leaf that is not all zero, in order.
    pub(crate) leaves: Vec<(u64, Sha256Hash)>,
}

/// The span size for `geometry`: the larger of the chunk and the leaf (both powers of two,
/// so one is a multiple of the other).
pub(crate) fn span_size(geometry: Geometry) -> u64 {
    geometry.chunk_size().max(LEAF_SIZE)
}

/// Encodes the chunks of `data`, the span of the disk starting at `start` (span-aligned; the
/// last span may be short), and hashes its leaves. With `lookup`, a chunk it finds stored is
/// not compressed (see [`super::hook`]).
pub(crate) fn encode_span(
    encoder: &mut ChunkEncoder,
    geometry: Geometry,
    start: u64,
    data: &[u8],
    frames: &FramePool,
    lookup: Option<&dyn ChunkLookup>,
) -> Result<EncodedSpan> {
    let chunk_size = geometry.chunk_size();
    let first_chunk = start / chunk_size;
    let mut span = EncodedSpan::default();
    for (i, bytes) in data.chunks(chunk_size as usize).enumerate() {
        let chunk = first_chunk + i as u64;
        let encoded = match lookup {
            None => encoder.encode_into(geometry, chunk, bytes, frames.take())?,
            Some(lookup) => encoder.encode_with(geometry, chunk, bytes, frames.take(), &|sha256, len| {
                lookup.find(sha256, len)
            })?,
        };
        span.chunks.extend(encoded);
    }
    if chunk_size == LEAF_SIZE {
        // A chunk is a leaf: its SHA-256 is the leaf hash, no second pass.
        span.leaves = span.chunks.iter().map(|c| (c.chunk, c.sha256)).collect();
        return Ok(span);
    }
    let first_leaf = start / LEAF_SIZE;
    for (i, leaf) in data.chunks(LEAF_SIZE as usize).enumerate() {
        if !is_zero(leaf) {
            span.leaves.push((first_leaf + i as u64, sha256(leaf)));
        }
    }
    // The leaves were hashed in a second read of `data`, which may be a memory map of a file
    // another process writes: check that what was encoded is still there, so the digest is the
    // archive's.
    let mut encoded = span.chunks.iter().peekable();
    for (i, bytes) in data.chunks(chunk_size as usize).enumerate() {
        let chunk = first_chunk + i as u64;
        let unchanged = match encoded.next_if(|c| c.chunk == chunk) {
            Some(c) => c.still_matches(bytes),
            None => is_zero(bytes),
        };
        if !unchanged {
            return Err(Error::corrupt(
                chunk * chunk_size,
                format!(
                    "the input changed while chunk {chunk} was being read; convert a file nobody is writing"
                ),
            ));
        }
    }
    Ok(span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::digest::LEAF_SIZE;

    fn disk() -> Vec<u8> {
        let mut d = vec![0u8; (3 * LEAF_SIZE + 5000) as usize];
        d[10] = 1;
        d[(LEAF_SIZE * 2 + 70_000) as usize] = 2;
        let last = d.len() - 1;
        d[last] = 3;
        d
    }

    /// Every chunk size gives the same leaves, and the chunks of the plain encoder.
    #[test]
    fn leaves_do_not_depend_on_the_chunk_size() {
        let d = disk();
        let want: Vec<(u64, Sha256Hash)> = d
            .chunks(LEAF_SIZE as usize)
            .enumerate()
            .filter(|(_, l)| !is_zero(l))
            .map(|(i, l)| (i as u64, sha256(l)))
            .collect();
        for chunk_size in [64 << 10, 256 << 10, 1 << 20, 2 << 20, 4 << 20] {
            let geometry = Geometry::for_chunk_size(chunk_size).unwrap();
            let span = span_size(geometry) as usize;
            let frames = FramePool::new(&super::super::EncodeSettings::new(geometry, 1));
            let mut encoder = ChunkEncoder::new(1).unwrap();
            let mut leaves = Vec::new();
            let mut chunks = Vec::new();
            for (i, bytes) in d.chunks(span).enumerate() {
                let s = encode_span(&mut encoder, geometry, (i * span) as u64, bytes, &frames, None).unwrap();
                leaves.extend(s.leaves);
                chunks.extend(s.chunks.into_iter().map(|c| (c.chunk, c.sha256)));
            }
            assert_eq!(leaves, want, "chunk size {chunk_size}");
            let plain: Vec<(u64, Sha256Hash)> = d
                .chunks(chunk_size as usize)
                .enumerate()
                .filter(|(_, c)| !is_zero(c))
                .map(|(i, c)| (i as u64, sha256(c)))
                .collect();
            assert_eq!(chunks, plain, "chunk size {chunk_size}");
        }
    }
}
