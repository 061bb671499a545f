//! The `.imgpack` archive format, versions 1 and 2: byte layout, encoding and validation.
//!
//! Version 2 (written since issue 14) adds a SHA-256 of each stored chunk's full content to its
//! index record and the image digest ([`super::digest`]) to the footer; version 1 archives are
//! still read, and have neither. The tables below show version 2, with the version 1 layout
//! where it differs.
//!
//! An archive is written front to back in one pass (it can go straight into a pipe) and read
//! from the back: the fixed-size footer at the end locates the index, the index locates each
//! stored chunk. Every integer is little-endian. `docs/FORMAT.md` holds the same tables.
//!
//! ```text
//! +--------+----------------------------+--------------------+---------+
//! | header | chunk data (zstd frames)   | index (N records)  | footer  |
//! | 64 B   | stored chunks, in order    | N x record_size    | 48 B    |
//! +--------+----------------------------+--------------------+---------+
//! ```
//!
//! Header (64 bytes, offset 0):
//!
//! | offset | size | field                                                                    |
//! |-------:|-----:|--------------------------------------------------------------------------|
//! | 0      | 8    | magic `89 49 4D 47 50 41 43 4B` (`\x89IMGPACK`)                          |
//! | 8      | 2    | format version, 1 or 2                                                   |
//! | 10     | 1    | codec, 1 = zstd                                                          |
//! | 11     | 1    | block_shift, 12 (4 KiB blocks)                                           |
//! | 12     | 1    | chunk_shift, 16..=26 (64 KiB .. 64 MiB chunks)                           |
//! | 13     | 3    | reserved, zero                                                           |
//! | 16     | 8    | virtual size if known when writing began, else `u64::MAX` (streams)     |
//! | 24     | 8    | flags, zero in versions 1 and 2                                          |
//! | 32     | 28   | reserved, zero                                                           |
//! | 60     | 4    | crc32 of bytes 0..60                                                     |
//!
//! Chunk data: the virtual disk is cut into chunks of `1 << chunk_shift` bytes (the last one may
//! be shorter). A chunk with at least one non-zero byte is *stored*: its non-zero 4 KiB blocks,
//! concatenated in order (the *payload*), compressed as one zstd frame. All-zero chunks and the
//! all-zero blocks of stored chunks are not stored. Frames follow the header back to back, in
//! increasing chunk order, with no gaps.
//!
//! Index record (version 2: `56 + blocks_per_chunk / 8` bytes; version 1: `24 + B`, without
//! the SHA-256, the bitmap at 24), one per stored chunk, in chunk order:
//!
//! | offset | size | field                                                                 |
//! |-------:|-----:|-----------------------------------------------------------------------|
//! | 0      | 8    | chunk number (virtual offset / chunk size)                            |
//! | 8      | 8    | stored offset of the zstd frame in the archive                       |
//! | 16     | 4    | stored length of the frame                                            |
//! | 20     | 4    | crc32 of the uncompressed payload (the non-zero blocks, concatenated) |
//! | 24     | 32   | SHA-256 of the chunk's full content (zero blocks included)            |
//! | 56     | B    | zero-block bitmap: bit `i` (byte `i / 8`, bit `i % 8`, LSB first) set |
//! |        |      | means block `i` of the chunk is all zero (or lies past the disk's end) |
//! |        |      | and is not in the payload                                             |
//!
//! Footer (version 2: 80 bytes, at the very end):
//!
//! | offset | size | field                                                   |
//! |-------:|-----:|---------------------------------------------------------|
//! | 0      | 8    | virtual size (authoritative)                            |
//! | 8      | 8    | index offset                                            |
//! | 16     | 8    | stored chunk count N                                    |
//! | 24     | 8    | disk size: bytes of non-zero 4 KiB blocks               |
//! | 32     | 32   | the image digest (`sha256-tree`)                        |
//! | 64     | 4    | crc32 of the whole index                                |
//! | 68     | 4    | crc32 of footer bytes 0..68                             |
//! | 72     | 8    | closing magic `IMGPKEND`                                |
//!
//! Version 1's footer is 48 bytes: the same fields to 32, then the index crc at 32, the
//! footer crc (of bytes 0..36) at 36 and the magic at 40.

use super::digest::Sha256Hash;
use crate::error::{Error, ErrorKind, Result};

/// Opening magic.
pub const MAGIC: [u8; 8] = *b"\x89IMGPACK";
/// Closing magic, the last 8 bytes of every archive.
pub const END_MAGIC: [u8; 8] = *b"IMGPKEND";
/// The format version this code writes and the newest it reads.
pub const VERSION: u16 = 2;
/// Codec identifier for zstd.
pub const CODEC_ZSTD: u8 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: u64 = 64;
/// Size of the version 1 footer in bytes (see [`Version::footer_len`]).
pub const FOOTER_LEN: u64 = 48;
/// Size of the version 2 footer in bytes.
pub const FOOTER_LEN_V2: u64 = 80;
/// log2 of the zero-detection block size.
pub const BLOCK_SHIFT: u32 = 12;
/// The zero-detection block size (4 KiB).
pub const BLOCK_SIZE: usize = 1 << BLOCK_SHIFT;
/// Smallest chunk size accepted (64 KiB).
pub const MIN_CHUNK_SHIFT: u32 = 16;
/// Largest chunk size accepted (64 MiB).
pub const MAX_CHUNK_SHIFT: u32 = 26;
/// Header value meaning "virtual size not known when writing began; see the footer".
pub const UNKNOWN_SIZE: u64 = u64::MAX;
/// Fixed part of a version 1 index record, before the bitmap.
pub const RECORD_FIXED_LEN: usize = 24;
/// Fixed part of a version 2 index record (with the chunk's SHA-256), before the bitmap.
pub const RECORD_FIXED_LEN_V2: usize = 56;

/// The archive format versions this code reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Version 1: crc32 only.
    V1,
    /// Version 2: a SHA-256 per stored chunk and the image digest in the footer.
    V2,
}

impl Version {
    /// The version number in the header.
    pub fn number(self) -> u16 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }

    /// Bytes of an index record before the bitmap.
    pub fn record_fixed_len(self) -> usize {
        match self {
            Version::V1 => RECORD_FIXED_LEN,
            Version::V2 => RECORD_FIXED_LEN_V2,
        }
    }

    /// Bytes of the footer.
    pub fn footer_len(self) -> u64 {
        match self {
            Version::V1 => FOOTER_LEN,
            Version::V2 => FOOTER_LEN_V2,
        }
    }

    /// Whether records carry chunk SHA-256s and the footer the image digest.
    pub fn has_digests(self) -> bool {
        self == Version::V2
    }
}

/// The geometry every part of an archive agrees on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// log2 of the chunk size.
    pub chunk_shift: u32,
}

impl Geometry {
    /// Geometry for a chunk size, which must be a power of two between 64 KiB and 64 MiB.
    pub fn for_chunk_size(chunk_size: u64) -> Result<Self> {
        if !chunk_size.is_power_of_two()
            || !(MIN_CHUNK_SHIFT..=MAX_CHUNK_SHIFT).contains(&chunk_size.trailing_zeros())
        {
            return Err(Error::invalid_argument(format!(
                "chunk size {chunk_size} must be a power of two from 64K to 64M"
            )));
        }
        Ok(Geometry {
            chunk_shift: chunk_size.trailing_zeros(),
        })
    }

    /// Chunk size in bytes.
    pub fn chunk_size(self) -> u64 {
        1 << self.chunk_shift
    }

    /// Blocks per (full) chunk.
    pub fn blocks_per_chunk(self) -> usize {
        1 << (self.chunk_shift - BLOCK_SHIFT)
    }

    /// Bytes of the zero-block bitmap in each index record.
    pub fn bitmap_len(self) -> usize {
        self.blocks_per_chunk() / 8
    }

    /// Bytes of one index record in `version`.
    pub fn record_len(self, version: Version) -> usize {
        version.record_fixed_len() + self.bitmap_len()
    }

    /// Number of chunks covering a disk of `virtual_size` bytes.
    pub fn chunk_count(self, virtual_size: u64) -> u64 {
        virtual_size.div_ceil(self.chunk_size())
    }

    /// Logical length of chunk `chunk` on a disk of `virtual_size` bytes (0 past the end).
    pub fn chunk_len(self, chunk: u64, virtual_size: u64) -> usize {
        let start = chunk.saturating_mul(self.chunk_size());
        virtual_size.saturating_sub(start).min(self.chunk_size()) as usize
    }
}

/// The decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: Version,
    /// Chunk geometry.
    pub geometry: Geometry,
    /// Virtual size, or `None` where the writer did not know it up front.
    pub virtual_size: Option<u64>,
}

impl Header {
    /// Encodes the 64-byte header.
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.number().to_le_bytes());
        b[10] = CODEC_ZSTD;
        b[11] = BLOCK_SHIFT as u8;
        b[12] = self.geometry.chunk_shift as u8;
        let size = self.virtual_size.unwrap_or(UNKNOWN_SIZE);
        b[16..24].copy_from_slice(&size.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a header.
    pub fn decode(b: &[u8; HEADER_LEN as usize]) -> Result<Self> {
        if b[0..8] != MAGIC {
            return Err(Error::new(ErrorKind::InvalidFormat, "not an imgpack archive (bad magic)").at(0));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version > VERSION {
            return Err(Error::unsupported(format!(
                "archive format version {version} is newer than this imgpack reads (version {VERSION}); upgrade imgpack"
            ))
            .at(8));
        }
        let version = match version {
            1 => Version::V1,
            2 => Version::V2,
            _ => return Err(Error::corrupt(8, "archive format version 0 does not exist")),
        };
        let crc = u32::from_le_bytes(b[60..64].try_into().expect("4 bytes"));
        if crc != crc32fast::hash(&b[0..60]) {
            return Err(Error::new(ErrorKind::Checksum, "archive header checksum mismatch").at(60));
        }
        if b[10] != CODEC_ZSTD {
            return Err(Error::unsupported(format!("unknown codec {}", b[10])).at(10));
        }
        if u32::from(b[11]) != BLOCK_SHIFT {
            return Err(Error::corrupt(11, format!("block shift {} is not 12", b[11])));
        }
        let chunk_shift = u32::from(b[12]);
        if !(MIN_CHUNK_SHIFT..=MAX_CHUNK_SHIFT).contains(&chunk_shift) {
            return Err(Error::corrupt(
                12,
                format!("chunk shift {chunk_shift} outside 16..=26"),
            ));
        }
        check_zero(&b[13..16], 13, "header reserved bytes")?;
        let flags = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"));
        if flags != 0 {
            return Err(Error::unsupported(format!("unknown header flags 0x{flags:x}")).at(24));
        }
        check_zero(&b[32..60], 32, "header reserved bytes")?;
        let size = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        Ok(Header {
            version,
            geometry: Geometry { chunk_shift },
            virtual_size: (size != UNKNOWN_SIZE).then_some(size),
        })
    }
}

pub use super::footer::Footer;

/// One index record: where a stored chunk lives and which of its blocks are zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    /// Chunk number (virtual offset / chunk size).
    pub chunk: u64,
    /// Offset of the zstd frame in the archive.
    pub stored_offset: u64,
    /// Length of the zstd frame.
    pub stored_len: u32,
    /// crc32 of the uncompressed payload.
    pub payload_crc: u32,
    /// Zero-block bitmap (`Geometry::bitmap_len` bytes).
    pub zero_blocks: Vec<u8>,
}

impl ChunkRecord {
    /// Appends the encoded version 1 record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.encode_fixed(out);
        out.extend_from_slice(&self.zero_blocks);
    }

    /// Appends the encoded version 2 record, with the chunk content's SHA-256, to `out`.
    pub fn encode_v2_into(&self, sha256: &Sha256Hash, out: &mut Vec<u8>) {
        self.encode_fixed(out);
        out.extend_from_slice(sha256);
        out.extend_from_slice(&self.zero_blocks);
    }

    fn encode_fixed(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.chunk.to_le_bytes());
        out.extend_from_slice(&self.stored_offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.payload_crc.to_le_bytes());
    }

    /// Decodes one record of `version` (`b` is exactly one record long), with its SHA-256 in
    /// version 2.
    pub fn decode_versioned(b: &[u8], version: Version) -> (Self, Option<Sha256Hash>) {
        match version {
            Version::V1 => (ChunkRecord::decode(b), None),
            Version::V2 => {
                let mut record = ChunkRecord::decode(&b[..RECORD_FIXED_LEN]);
                record.zero_blocks = b[RECORD_FIXED_LEN_V2..].to_vec();
                let sha256 = b[RECORD_FIXED_LEN..RECORD_FIXED_LEN_V2]
                    .try_into()
                    .expect("32 bytes");
                (record, Some(sha256))
            }
        }
    }

    /// Decodes one version 1 record (`b` is exactly one record long). Validation against the rest of the
    /// archive happens in the reader, which knows the neighbours.
    pub fn decode(b: &[u8]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        ChunkRecord {
            chunk: u64_at(0),
            stored_offset: u64_at(8),
            stored_len: u32_at(16),
            payload_crc: u32_at(20),
            zero_blocks: b[RECORD_FIXED_LEN..].to_vec(),
        }
    }

    /// Whether block `i` of the chunk is zero (not stored).
    pub fn is_zero_block(&self, i: usize) -> bool {
        self.zero_blocks[i / 8] & (1 << (i % 8)) != 0
    }
}

/// The byte ranges inside a chunk that hold payload, as `(offset in chunk, length)` runs of
/// consecutive non-zero blocks, for a chunk of logical length `chunk_len`.
pub fn payload_runs(record: &ChunkRecord, chunk_len: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let blocks = chunk_len.div_ceil(BLOCK_SIZE);
    for i in 0..blocks {
        if record.is_zero_block(i) {
            continue;
        }
        let start = i * BLOCK_SIZE;
        let len = (chunk_len - start).min(BLOCK_SIZE);
        match runs.last_mut() {
            Some((s, l)) if *s + *l == start => *l += len,
            _ => runs.push((start, len)),
        }
    }
    runs
}

fn check_zero(bytes: &[u8], at: u64, what: &str) -> Result<()> {
    match bytes.iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(Error::corrupt(at + i as u64, format!("{what} must be zero"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_every_flipped_byte() {
        for version in [Version::V1, Version::V2] {
            let h = Header {
                version,
                geometry: Geometry::for_chunk_size(1 << 20).unwrap(),
                virtual_size: Some(12345),
            };
            let enc = h.encode();
            assert_eq!(Header::decode(&enc).unwrap(), h);
            for i in 0..enc.len() {
                let mut bad = enc;
                bad[i] ^= 0x10;
                assert!(Header::decode(&bad).is_err(), "flip at {i} accepted");
            }
        }
    }

    #[test]
    fn future_version_is_refused_clearly() {
        let mut enc = Header {
            version: Version::V2,
            geometry: Geometry { chunk_shift: 20 },
            virtual_size: None,
        }
        .encode();
        enc[8] = 3;
        let crc = crc32fast::hash(&enc[0..60]);
        enc[60..64].copy_from_slice(&crc.to_le_bytes());
        let err = Header::decode(&enc).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("newer"));
    }

    #[test]
    fn version_2_records_carry_the_sha256_before_the_bitmap() {
        let g = Geometry { chunk_shift: 16 };
        let rec = ChunkRecord {
            chunk: 9,
            stored_offset: 64,
            stored_len: 100,
            payload_crc: 7,
            zero_blocks: vec![0xA5; g.bitmap_len()],
        };
        let mut v2 = Vec::new();
        rec.encode_v2_into(&[0x11; 32], &mut v2);
        assert_eq!(v2.len(), g.record_len(Version::V2));
        assert_eq!(&v2[24..56], &[0x11; 32]);
        assert_eq!(
            ChunkRecord::decode_versioned(&v2, Version::V2),
            (rec.clone(), Some([0x11; 32]))
        );
        let mut v1 = Vec::new();
        rec.encode_into(&mut v1);
        assert_eq!(v1.len(), g.record_len(Version::V1));
        assert_eq!(ChunkRecord::decode_versioned(&v1, Version::V1), (rec, None));
    }

    #[test]
    fn chunk_sizes_outside_range_are_refused() {
        for bad in [0, 1, 4096, 32 << 10, 3 << 20, 128 << 20] {
            assert!(Geometry::for_chunk_size(bad).is_err(), "{bad}");
        }
        assert_eq!(Geometry::for_chunk_size(4 << 20).unwrap().bitmap_len(), 128);
    }

    #[test]
    fn payload_runs_merge_adjacent_blocks_and_cut_the_tail() {
        let g = Geometry { chunk_shift: 16 };
        let mut zero_blocks = vec![0u8; g.bitmap_len()];
        zero_blocks[0] = 0b0000_0100; // block 2 zero
        let rec = ChunkRecord {
            chunk: 0,
            stored_offset: 64,
            stored_len: 1,
            payload_crc: 0,
            zero_blocks,
        };
        assert_eq!(
            payload_runs(&rec, 5 * BLOCK_SIZE + 10),
            vec![(0, 2 * BLOCK_SIZE), (3 * BLOCK_SIZE, 2 * BLOCK_SIZE + 10)]
        );
    }
}
