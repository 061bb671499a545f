//! Encoding one chunk of the virtual disk into a stored frame, and decoding it back.
//!
//! [`ChunkEncoder`] finds the chunk's zero 4 KiB blocks, gathers the others into the payload,
//! checksums it (crc32 of the payload, SHA-256 of the whole chunk) and compresses it, reusing
//! one zstd context (one encoder per worker thread). [`ChunkDecoder`] reverses it and refuses a
//! frame whose length or crc does not match; [`content_sha256`] rebuilds the chunk's SHA-256
//! from a decoded payload without expanding it.

use sha2::{Digest, Sha256};

use super::digest::{update_zeros, Sha256Hash};
use super::format::{payload_runs, ChunkRecord, Geometry, BLOCK_SIZE};
use crate::error::{Error, ErrorKind, Result};
use crate::zero::is_zero;

/// A chunk ready to be written: its zstd frame plus what goes into its index record.
#[derive(Debug)]
pub struct EncodedChunk {
    /// Chunk number.
    pub chunk: u64,
    /// crc32 of the payload.
    pub payload_crc: u32,
    /// SHA-256 of the chunk's full content, zero blocks included (its version 2 index key).
    pub sha256: Sha256Hash,
    /// Zero-block bitmap (bit set = zero block, not in the payload).
    pub zero_blocks: Vec<u8>,
    /// The compressed payload.
    pub frame: Vec<u8>,
    /// Uncompressed payload length: the chunk's contribution to `disk_size`.
    pub payload_len: u64,
    /// Set when the frame was not compressed here because a store already holds it (see
    /// [`ChunkEncoder::encode_with`]); `frame` is then empty.
    pub reused: Option<StoredFrame>,
}

/// A frame some store already holds for a chunk's content: what its index record needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredFrame {
    /// Length of the stored zstd frame.
    pub len: u32,
    /// crc32 of its payload.
    pub crc: u32,
    /// The store's own tag for the copy (a deduplicated library's generation).
    pub tag: u64,
}

/// Compresses chunks; reuse one per worker thread.
pub struct ChunkEncoder {
    level: i32,
    compressor: zstd::bulk::Compressor<'static>,
    payload: Vec<u8>,
}

impl ChunkEncoder {
    /// An encoder compressing at zstd `level`.
    pub fn new(level: i32) -> Result<Self> {
        let compressor = zstd::bulk::Compressor::new(level)
            .map_err(|e| Error::invalid_argument(format!("zstd level {level} rejected")).with_source(e))?;
        Ok(ChunkEncoder {
            level,
            compressor,
            payload: Vec::new(),
        })
    }

    /// The zstd level this encoder compresses at.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Encodes chunk number `chunk` whose bytes are `data` (at most one chunk long). Returns
    /// `None` when every byte is zero: such a chunk is not stored.
    pub fn encode(&mut self, geometry: Geometry, chunk: u64, data: &[u8]) -> Result<Option<EncodedChunk>> {
        self.encode_into(geometry, chunk, data, Vec::new())
    }

    /// [`ChunkEncoder::encode`] into `frame`, a buffer from an earlier [`EncodedChunk`] (its
    /// contents are discarded), so that a pipeline can recycle frame buffers instead of having
    /// the allocator fault in fresh pages for every chunk.
    pub fn encode_into(
        &mut self,
        geometry: Geometry,
        chunk: u64,
        data: &[u8],
        frame: Vec<u8>,
    ) -> Result<Option<EncodedChunk>> {
        self.encode_with(geometry, chunk, data, frame, &|_, _| Ok(None))
    }

    /// [`ChunkEncoder::encode_into`], but first asks `stored` (with the chunk's SHA-256 and
    /// payload length) whether a store already holds a frame of this content: if so, nothing
    /// is compressed and the chunk comes back with `reused` set and an empty frame.
    pub fn encode_with(
        &mut self,
        geometry: Geometry,
        chunk: u64,
        data: &[u8],
        mut frame: Vec<u8>,
        stored: &dyn Fn(&Sha256Hash, u64) -> Result<Option<StoredFrame>>,
    ) -> Result<Option<EncodedChunk>> {
        debug_assert!(data.len() as u64 <= geometry.chunk_size());
        let mut zero_blocks = vec![0u8; geometry.bitmap_len()];
        let mut zero_count = 0;
        let blocks = data.len().div_ceil(BLOCK_SIZE);
        for (i, block) in data.chunks(BLOCK_SIZE).enumerate() {
            if is_zero(block) {
                zero_blocks[i / 8] |= 1 << (i % 8);
                zero_count += 1;
            }
        }
        if zero_count == blocks {
            return Ok(None);
        }
        // Blocks past the end of a short final chunk count as zero: absent from the payload.
        for i in blocks..geometry.blocks_per_chunk() {
            zero_blocks[i / 8] |= 1 << (i % 8);
        }
        let payload: &[u8] = if zero_count == 0 {
            data
        } else {
            self.payload.clear();
            for (i, block) in data.chunks(BLOCK_SIZE).enumerate() {
                if zero_blocks[i / 8] & (1 << (i % 8)) == 0 {
                    self.payload.extend_from_slice(block);
                }
            }
            &self.payload
        };
        let payload_crc = crc32fast::hash(payload);
        // Hashed from the same bytes the crc saw (for a borrowed payload the final crc check
        // below covers this read too), so the record's crc and SHA-256 always agree.
        let sha256 = if zero_count == 0 {
            super::digest::sha256(payload)
        } else {
            content_sha256(&zero_blocks, payload, data.len())
        };
        if let Some(found) = stored(&sha256, payload.len() as u64)? {
            if found.crc != payload_crc {
                return Err(Error::new(
                    ErrorKind::Checksum,
                    format!(
                        "chunk {chunk}: the stored frame of the same SHA-256 has crc {:08x}, not {payload_crc:08x}",
                        found.crc
                    ),
                ));
            }
            frame.clear();
            return Ok(Some(EncodedChunk {
                chunk,
                payload_crc,
                sha256,
                zero_blocks,
                frame,
                payload_len: payload.len() as u64,
                reused: Some(found),
            }));
        }
        frame.clear();
        frame.reserve(zstd::zstd_safe::compress_bound(payload.len()));
        self.compressor
            .compress_to_buffer(payload, &mut frame)
            .map_err(|e| {
                Error::new(ErrorKind::Io, format!("zstd failed to compress chunk {chunk}")).with_source(e)
            })?;
        // A payload borrowed from the caller may be a memory map of a file another process is
        // still writing: the crc and the compressor read it separately, so check that it did
        // not change in between, or the archive would hold a frame its crc refuses.
        if zero_count == 0 && crc32fast::hash(payload) != payload_crc {
            return Err(Error::corrupt(
                chunk * geometry.chunk_size(),
                format!(
                    "the input changed while chunk {chunk} was being read; convert a file nobody is writing"
                ),
            ));
        }
        Ok(Some(EncodedChunk {
            chunk,
            payload_crc,
            sha256,
            zero_blocks,
            frame,
            payload_len: payload.len() as u64,
            reused: None,
        }))
    }
}

impl EncodedChunk {
    /// Whether `data`, the chunk's bytes this was encoded from, still holds what was encoded:
    /// its zero blocks still zero and its payload still of the same crc. A caller that reads
    /// `data` again after encoding (from a memory map another process may write) checks this
    /// afterwards, so what it computed agrees with the archive.
    pub fn still_matches(&self, data: &[u8]) -> bool {
        let mut crc = crc32fast::Hasher::new();
        for (i, block) in data.chunks(BLOCK_SIZE).enumerate() {
            let zero = self.zero_blocks[i / 8] & (1 << (i % 8)) != 0;
            if zero {
                if !crate::zero::is_zero(block) {
                    return false;
                }
            } else {
                crc.update(block);
            }
        }
        crc.finalize() == self.payload_crc
    }
}

/// The SHA-256 of a chunk of `chunk_len` bytes from its payload and zero-block bitmap (the
/// zero blocks are hashed from a static block of zeros, never materialised).
pub fn content_sha256(zero_blocks: &[u8], payload: &[u8], chunk_len: usize) -> Sha256Hash {
    let mut hasher = Sha256::new();
    update_with_content(&mut hasher, zero_blocks, payload, chunk_len);
    hasher.finalize().into()
}

/// Feeds `hasher` the `chunk_len` bytes of a chunk given by its payload and zero-block bitmap
/// (a payload already checked against the bitmap, as the decoder does).
pub fn update_with_content(hasher: &mut Sha256, zero_blocks: &[u8], payload: &[u8], chunk_len: usize) {
    let mut taken = 0;
    let mut position = 0;
    for (i, start) in (0..chunk_len).step_by(BLOCK_SIZE).enumerate() {
        let len = (chunk_len - start).min(BLOCK_SIZE);
        if zero_blocks[i / 8] & (1 << (i % 8)) != 0 {
            continue;
        }
        update_zeros(hasher, (start - position) as u64);
        hasher.update(&payload[taken..taken + len]);
        taken += len;
        position = start + len;
    }
    update_zeros(hasher, (chunk_len - position) as u64);
}

/// Decompresses stored chunks; reuse one per worker thread.
pub struct ChunkDecoder {
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl ChunkDecoder {
    /// A new decoder.
    pub fn new() -> Result<Self> {
        let decompressor = zstd::bulk::Decompressor::new()
            .map_err(|e| Error::new(ErrorKind::Io, "cannot create a zstd decompressor").with_source(e))?;
        Ok(ChunkDecoder { decompressor })
    }

    /// Decodes the frame of `record` into `payload` (cleared first), checking its length
    /// against the bitmap and its crc. `chunk_len` is the chunk's logical length.
    pub fn decode_payload(
        &mut self,
        record: &ChunkRecord,
        frame: &[u8],
        chunk_len: usize,
        payload: &mut Vec<u8>,
    ) -> Result<()> {
        let expected: usize = payload_runs(record, chunk_len).iter().map(|r| r.1).sum();
        payload.clear();
        payload.reserve(expected);
        let at = record.stored_offset;
        let n = self
            .decompressor
            .decompress_to_buffer(frame, payload)
            .map_err(|e| {
                Error::corrupt(at, format!("chunk {} does not decompress", record.chunk)).with_source(e)
            })?;
        if n != expected {
            return Err(Error::corrupt(
                at,
                format!(
                    "chunk {} decompresses to {n} bytes, its bitmap says {expected}",
                    record.chunk
                ),
            ));
        }
        if crc32fast::hash(payload) != record.payload_crc {
            return Err(Error::new(
                ErrorKind::Checksum,
                format!("chunk {} fails its crc32 check", record.chunk),
            )
            .at(at));
        }
        Ok(())
    }
}

/// Places a decoded payload into `out` (the chunk's logical bytes, `out.len()` = chunk length),
/// zero-filling the zero blocks.
pub fn expand_payload(record: &ChunkRecord, payload: &[u8], out: &mut [u8]) {
    let mut taken = 0;
    let mut filled = 0;
    for (start, len) in payload_runs(record, out.len()) {
        out[filled..start].fill(0);
        out[start..start + len].copy_from_slice(&payload[taken..taken + len]);
        taken += len;
        filled = start + len;
    }
    out[filled..].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_of(e: &EncodedChunk) -> ChunkRecord {
        ChunkRecord {
            chunk: e.chunk,
            stored_offset: 64,
            stored_len: e.frame.len() as u32,
            payload_crc: e.payload_crc,
            zero_blocks: e.zero_blocks.clone(),
        }
    }

    #[test]
    fn round_trips_mixed_blocks_and_short_tail() {
        let g = Geometry { chunk_shift: 16 };
        let mut data = vec![0u8; 3 * BLOCK_SIZE + 100];
        data[5] = 1;
        data[2 * BLOCK_SIZE + 7] = 2;
        data[3 * BLOCK_SIZE + 99] = 3;
        let mut enc = ChunkEncoder::new(3).unwrap();
        let e = enc.encode(g, 4, &data).unwrap().unwrap();
        assert_eq!(e.payload_len, 2 * BLOCK_SIZE as u64 + 100);
        let rec = record_of(&e);
        let mut payload = Vec::new();
        ChunkDecoder::new()
            .unwrap()
            .decode_payload(&rec, &e.frame, data.len(), &mut payload)
            .unwrap();
        let mut out = vec![0xAAu8; data.len()];
        expand_payload(&rec, &payload, &mut out);
        assert_eq!(out, data);
        assert_eq!(e.sha256, crate::archive::digest::sha256(&data));
        assert_eq!(content_sha256(&rec.zero_blocks, &payload, data.len()), e.sha256);
        assert!(e.still_matches(&data));
        let mut changed = data.clone();
        changed[BLOCK_SIZE + 1] = 9; // a zero block is no longer zero
        assert!(!e.still_matches(&changed));
        changed = data.clone();
        changed[6] = 9; // a stored block changed
        assert!(!e.still_matches(&changed));
    }

    #[test]
    fn all_zero_chunk_is_not_stored() {
        let mut enc = ChunkEncoder::new(1).unwrap();
        assert!(enc
            .encode(Geometry { chunk_shift: 16 }, 0, &[0u8; 60_000])
            .unwrap()
            .is_none());
    }

    #[test]
    fn crc_mismatch_is_refused() {
        let g = Geometry { chunk_shift: 16 };
        let mut enc = ChunkEncoder::new(3).unwrap();
        let e = enc.encode(g, 0, &[7u8; 5000]).unwrap().unwrap();
        let mut rec = record_of(&e);
        rec.payload_crc ^= 1;
        let err = ChunkDecoder::new()
            .unwrap()
            .decode_payload(&rec, &e.frame, 5000, &mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Checksum);
    }
}
