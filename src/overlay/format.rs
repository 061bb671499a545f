//! The overlay file's layout (version 1): a header naming the base archive, a map of which
//! blocks the overlay holds, and a sparse data area. `docs/OVERLAY.md` holds the same tables.
//!
//! ```text
//! +-------------+----------------------------+------------------------------------------+
//! | header      | block map                  | data area (sparse)                       |
//! | 4 KiB       | 2 bits per 4 KiB block     | byte v of the disk at data_offset + v    |
//! +-------------+----------------------------+------------------------------------------+
//! ```
//!
//! Header (offset 0; the rest of its 4 KiB is zero). Integers are little-endian.
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! | 0      | 8    | magic `IMGPKOVL`                                              |
//! | 8      | 4    | version, 1                                                    |
//! | 12     | 4    | block_shift, 12 (4 KiB blocks)                                |
//! | 16     | 8    | virtual size (the base's)                                     |
//! | 24     | 8    | map offset, 4096                                              |
//! | 32     | 8    | map length: `ceil(blocks / 4)` rounded up to 4 KiB            |
//! | 40     | 8    | data offset: after the map, rounded up to 1 MiB               |
//! | 48     | 8    | base: archive length                                          |
//! | 56     | 8    | base: disk size (bytes of non-zero blocks)                    |
//! | 64     | 8    | base: stored chunk count                                      |
//! | 72     | 8    | base: chunk size                                              |
//! | 80     | 4    | base: crc32 of its index records                              |
//! | 84     | 4    | crc32 of header bytes 0..84                                   |
//!
//! Block map: block `i` (disk bytes `i * 4096 ..`) is described by bits `2 * (i % 4)` and
//! `2 * (i % 4) + 1` of map byte `i / 4`: 0 = read from the base, 1 = data in the overlay's
//! data area, 2 = zeros (written zeros or trimmed); 3 is invalid. Bits past the disk's last
//! block are zero.

use crate::archive::reader::ArchiveReader;
use crate::error::{Error, Result};
use crate::read_at::ReadAt;

/// Opening magic of an overlay file.
pub const OVERLAY_MAGIC: [u8; 8] = *b"IMGPKOVL";
/// The overlay format version this code writes and reads.
pub const OVERLAY_VERSION: u32 = 1;
/// log2 of the overlay's block size.
pub const OVERLAY_BLOCK_SHIFT: u32 = 12;
/// The overlay's block size: the unit of the map (4 KiB).
pub const OVERLAY_BLOCK: u64 = 1 << OVERLAY_BLOCK_SHIFT;
/// The largest disk an overlay covers (4 TiB): its map is held in memory, 64 KiB per GiB,
/// so this bounds it at 256 MiB whatever a header claims.
pub const MAX_OVERLAY_VIRTUAL_SIZE: u64 = 4 << 40;
/// Bytes reserved for the header.
pub const OVERLAY_HEADER_LEN: u64 = 4096;
/// Bytes of the header covered by its crc.
const CRC_COVERED: usize = 84;
/// The data area starts on a multiple of this.
const DATA_ALIGN: u64 = 1 << 20;

/// What identifies the base archive an overlay was made over. It is computed from the
/// archive's index, so an overlay refuses any other archive (a different image, or the same
/// image converted again); it is a consistency check, not a cryptographic identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseIdentity {
    /// The base's virtual size.
    pub virtual_size: u64,
    /// The archive's length in bytes.
    pub compressed_size: u64,
    /// Bytes of non-zero blocks.
    pub disk_size: u64,
    /// Stored chunks.
    pub chunk_count: u64,
    /// Chunk size.
    pub chunk_size: u64,
    /// crc32 of the index records, as the archive stores them.
    pub index_crc: u32,
}

impl BaseIdentity {
    /// The identity of an open archive.
    pub fn of<R: ReadAt>(archive: &ArchiveReader<R>) -> Self {
        let mut hasher = crc32fast::Hasher::new();
        let mut record_bytes = Vec::new();
        for record in archive.records() {
            record_bytes.clear();
            record.encode_into(&mut record_bytes);
            hasher.update(&record_bytes);
        }
        BaseIdentity {
            virtual_size: archive.virtual_size(),
            compressed_size: archive.compressed_size(),
            disk_size: archive.disk_size(),
            chunk_count: archive.records().len() as u64,
            chunk_size: archive.geometry().chunk_size(),
            index_crc: hasher.finalize(),
        }
    }
}

/// The decoded header, with the layout it implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayHeader {
    /// The base archive.
    pub base: BaseIdentity,
    /// Where the block map starts.
    pub map_offset: u64,
    /// The map's length in bytes.
    pub map_len: u64,
    /// Where the data area starts.
    pub data_offset: u64,
}

impl OverlayHeader {
    /// The layout for a new overlay over `base`.
    pub fn for_base(base: BaseIdentity) -> Self {
        let map_len = map_bytes(base.virtual_size).div_ceil(4096) * 4096;
        let map_offset = OVERLAY_HEADER_LEN;
        OverlayHeader {
            base,
            map_offset,
            map_len,
            data_offset: (map_offset + map_len).div_ceil(DATA_ALIGN) * DATA_ALIGN,
        }
    }

    /// Number of blocks of the disk.
    pub fn blocks(&self) -> u64 {
        self.base.virtual_size.div_ceil(OVERLAY_BLOCK)
    }

    /// The file's length: the end of the data area.
    pub fn file_len(&self) -> u64 {
        self.data_offset + self.base.virtual_size
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; OVERLAY_HEADER_LEN as usize] {
        let mut b = [0u8; OVERLAY_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&OVERLAY_MAGIC);
        b[8..12].copy_from_slice(&OVERLAY_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&OVERLAY_BLOCK_SHIFT.to_le_bytes());
        let fields = [
            self.base.virtual_size,
            self.map_offset,
            self.map_len,
            self.data_offset,
            self.base.compressed_size,
            self.base.disk_size,
            self.base.chunk_count,
            self.base.chunk_size,
        ];
        for (i, value) in fields.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&value.to_le_bytes());
        }
        b[80..84].copy_from_slice(&self.base.index_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..CRC_COVERED]);
        b[84..88].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header: magic, version, crc, and a layout that fits together.
    pub fn decode(b: &[u8; OVERLAY_HEADER_LEN as usize]) -> Result<Self> {
        if b[0..8] != OVERLAY_MAGIC {
            return Err(Error::corrupt(0, "not an imgpack overlay (bad magic)"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(84) != crc32fast::hash(&b[..CRC_COVERED]) {
            return Err(Error::corrupt(84, "overlay header checksum mismatch"));
        }
        if u32_at(8) != OVERLAY_VERSION {
            return Err(Error::unsupported(format!(
                "overlay version {} is not supported",
                u32_at(8)
            )));
        }
        if u32_at(12) != OVERLAY_BLOCK_SHIFT {
            return Err(Error::corrupt(
                12,
                format!("overlay block shift {} is not 12", u32_at(12)),
            ));
        }
        let base = BaseIdentity {
            virtual_size: u64_at(16),
            compressed_size: u64_at(48),
            disk_size: u64_at(56),
            chunk_count: u64_at(64),
            chunk_size: u64_at(72),
            index_crc: u32_at(80),
        };
        let header = OverlayHeader {
            base,
            map_offset: u64_at(24),
            map_len: u64_at(32),
            data_offset: u64_at(40),
        };
        if base.virtual_size > MAX_OVERLAY_VIRTUAL_SIZE || header != OverlayHeader::for_base(base) {
            return Err(Error::corrupt(
                16,
                "overlay layout does not match its virtual size (map or data area misplaced)",
            ));
        }
        Ok(header)
    }
}

/// Bytes of map needed for a disk of `virtual_size` bytes (4 blocks per byte).
pub fn map_bytes(virtual_size: u64) -> u64 {
    virtual_size.div_ceil(OVERLAY_BLOCK).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BaseIdentity {
        BaseIdentity {
            virtual_size: (5 << 20) + 512,
            compressed_size: 1234,
            disk_size: 8192,
            chunk_count: 2,
            chunk_size: 1 << 20,
            index_crc: 0xdead_beef,
        }
    }

    #[test]
    fn header_round_trips_and_lays_out_map_then_data() {
        let header = OverlayHeader::for_base(base());
        assert_eq!(header.map_offset, 4096);
        assert_eq!(header.map_len, 4096); // 1281 blocks -> 321 bytes -> one page
        assert_eq!(header.data_offset, 1 << 20);
        assert_eq!(OverlayHeader::decode(&header.encode()).unwrap(), header);
    }

    #[test]
    fn damaged_headers_are_refused() {
        let good = OverlayHeader::for_base(base()).encode();
        for at in [0usize, 9, 13, 20, 30, 50, 81, 85] {
            let mut bad = good;
            bad[at] ^= 0x40;
            assert!(OverlayHeader::decode(&bad).is_err(), "byte {at}");
        }
    }
}
