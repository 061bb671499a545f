//! The image index object, `images/<id>.index`: an image's self-contained version 2 archive
//! without its frames, plus the generation of each frame's object. All integers little-endian.
//!
//! | offset            | length | field                                                        |
//! |-------------------|--------|--------------------------------------------------------------|
//! | 0                 | 8      | magic `IMGPKIDX`                                             |
//! | 8                 | 4      | version, 1                                                   |
//! | 12                | 4      | `H`, the archive header's length (64)                         |
//! | 16                | 8      | `I`, the archive index's length                               |
//! | 24                | 4      | `F`, the archive footer's length (80)                         |
//! | 28                | 8      | `N`, the number of index records (stored chunks)             |
//! | 36                | `H`    | the archive header, byte for byte                            |
//! | 36+H              | `I`    | the archive's index records, byte for byte                   |
//! | 36+H+I            | `F`    | the archive footer, byte for byte                            |
//! | 36+H+I+F          | 8`N`   | each record's frame generation, in record order              |
//! | end-32            | 32     | SHA-256 of every byte before it                              |
//!
//! The archive's bytes are a pure function of (index, frames): the header, then each record's
//! frame in record order, then the index records, then the footer. [`ImageIndex::parse`]
//! treats the object as hostile: lengths are checked against the object before anything is
//! allocated, and the records must tile the frame area exactly as a writer lays them out.

use crate::archive::digest::{sha256, Sha256Hash};
use crate::archive::format::{ChunkRecord, Footer, Header, Version, FOOTER_LEN_V2, HEADER_LEN};
use crate::error::{Error, ErrorKind, Result};

/// The index object's magic.
pub const INDEX_MAGIC: [u8; 8] = *b"IMGPKIDX";
/// The version written.
pub const INDEX_VERSION: u32 = 1;
/// Bytes before the archive header.
const PREAMBLE_LEN: usize = 36;
/// The largest index object read (a 512 MiB archive index plus its generations).
pub const MAX_INDEX_OBJECT: u64 = 640 << 20;

/// Where one chunk's frame sits in the virtual archive, and which object holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    /// Offset of the frame in the self-contained archive.
    pub offset: u64,
    /// Its length.
    pub len: u32,
    /// SHA-256 of the chunk's content (the object's name).
    pub sha256: Sha256Hash,
    /// The object's generation.
    pub gen: u64,
}

/// A parsed, validated image index.
#[derive(Debug, Clone)]
pub struct ImageIndex {
    /// The archive header.
    pub header: Vec<u8>,
    /// The archive's index records and footer, which follow the last frame.
    pub tail: Vec<u8>,
    /// Where `tail` starts in the archive (the end of the frames).
    pub index_offset: u64,
    /// The frames, in record (and offset) order.
    pub frames: Vec<FrameRef>,
}

fn corrupt(name: &str, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Corrupt, format!("image index {name}: {what}"))
}

impl ImageIndex {
    /// The index object for an archive written without its frames (`archive`: header, index
    /// records, footer, as [`ArchiveWriter::frames_elsewhere`](crate::archive::writer::ArchiveWriter::frames_elsewhere)
    /// writes them) whose records' frames have generations `gens`.
    pub fn encode(archive: &[u8], gens: &[u64]) -> Result<Vec<u8>> {
        let fixed = HEADER_LEN as usize + FOOTER_LEN_V2 as usize;
        if archive.len() < fixed {
            return Err(Error::invalid_argument(
                "an archive without frames is at least 144 bytes",
            ));
        }
        let index_len = archive.len() - fixed;
        let mut out = Vec::with_capacity(PREAMBLE_LEN + archive.len() + gens.len() * 8 + 32);
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        out.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        out.extend_from_slice(&(index_len as u64).to_le_bytes());
        out.extend_from_slice(&(FOOTER_LEN_V2 as u32).to_le_bytes());
        out.extend_from_slice(&(gens.len() as u64).to_le_bytes());
        out.extend_from_slice(archive);
        for gen in gens {
            out.extend_from_slice(&gen.to_le_bytes());
        }
        let seal = sha256(&out);
        out.extend_from_slice(&seal);
        Ok(out)
    }

    /// Parses and validates the index object `bytes` (`name` says which in errors).
    pub fn parse(bytes: &[u8], name: &str) -> Result<ImageIndex> {
        if bytes.len() < PREAMBLE_LEN + 32 || bytes[..8] != INDEX_MAGIC {
            return Err(corrupt(
                name,
                "not an image index (magic missing or object too short)",
            ));
        }
        let (body, seal) = bytes.split_at(bytes.len() - 32);
        if sha256(body)[..] != seal[..] {
            return Err(Error::new(
                ErrorKind::Checksum,
                format!("image index {name}: its SHA-256 does not match (damaged or truncated)"),
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != INDEX_VERSION {
            return Err(Error::unsupported(format!(
                "image index {name}: version {version} is not known"
            )));
        }
        let (header_len, index_len, footer_len, count) = (u32_at(12), u64_at(16), u32_at(24), u64_at(28));
        if u64::from(header_len) != HEADER_LEN || u64::from(footer_len) != FOOTER_LEN_V2 {
            return Err(corrupt(
                name,
                format!("header length {header_len} or footer length {footer_len} is wrong"),
            ));
        }
        let expected = count
            .checked_mul(8)
            .and_then(|g| g.checked_add(index_len))
            .and_then(|n| n.checked_add(PREAMBLE_LEN as u64 + HEADER_LEN + FOOTER_LEN_V2));
        if expected != Some(body.len() as u64) {
            return Err(corrupt(
                name,
                format!(
                    "{count} records and an index of {index_len} bytes do not fill its {} bytes",
                    body.len()
                ),
            ));
        }
        let header_at = PREAMBLE_LEN;
        let index_at = header_at + HEADER_LEN as usize;
        let footer_at = index_at + index_len as usize;
        let gens_at = footer_at + FOOTER_LEN_V2 as usize;
        let header_bytes: &[u8; HEADER_LEN as usize] =
            body[header_at..index_at].try_into().expect("64 bytes");
        let header = Header::decode(header_bytes).map_err(|e| corrupt(name, e))?;
        if header.version != Version::V2 {
            return Err(corrupt(name, "the archive inside is not version 2"));
        }
        let footer =
            Footer::decode(&body[footer_at..gens_at], 0, Version::V2).map_err(|e| corrupt(name, e))?;
        let record_len = header.geometry.record_len(Version::V2) as u64;
        if footer.chunk_count != count || count.checked_mul(record_len) != Some(index_len) {
            return Err(corrupt(
                name,
                format!(
                    "the footer's {} chunks do not match {count} records",
                    footer.chunk_count
                ),
            ));
        }
        let index = &body[index_at..footer_at];
        if crc32fast::hash(index) != footer.index_crc {
            return Err(Error::new(
                ErrorKind::Checksum,
                format!("image index {name}: archive index crc mismatch"),
            ));
        }
        let mut frames = Vec::with_capacity(count as usize);
        let mut position = HEADER_LEN;
        for (i, record) in index.chunks_exact(record_len as usize).enumerate() {
            let (record, sha) = ChunkRecord::decode_versioned(record, Version::V2);
            let record: ChunkRecord = record;
            if record.stored_offset != position || record.stored_len == 0 {
                return Err(corrupt(
                    name,
                    format!("record {i} does not follow the frame before it"),
                ));
            }
            let gen_at = gens_at + 8 * i;
            frames.push(FrameRef {
                offset: position,
                len: record.stored_len,
                sha256: sha.expect("version 2 records have a SHA-256"),
                gen: u64_at(gen_at),
            });
            position += u64::from(record.stored_len);
        }
        if position != footer.index_offset {
            return Err(corrupt(
                name,
                "the frames do not end where the archive index starts",
            ));
        }
        Ok(ImageIndex {
            header: header_bytes.to_vec(),
            tail: body[index_at..gens_at].to_vec(),
            index_offset: footer.index_offset,
            frames,
        })
    }

    /// Length of the self-contained archive.
    pub fn archive_len(&self) -> u64 {
        self.index_offset + self.tail.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::chunk::ChunkEncoder;
    use crate::archive::digest::TreeHasher;
    use crate::archive::format::Geometry;
    use crate::archive::writer::ArchiveWriter;

    /// An archive of 3 chunks written without frames, and the full one.
    fn archives() -> (Vec<u8>, Vec<u8>) {
        let geometry = Geometry::for_chunk_size(64 << 10).unwrap();
        let mut bare = ArchiveWriter::new(Vec::new(), geometry, None, u64::MAX)
            .unwrap()
            .frames_elsewhere();
        let mut full = ArchiveWriter::new(Vec::new(), geometry, None, u64::MAX).unwrap();
        let mut encoder = ChunkEncoder::new(1).unwrap();
        for n in 0..3u8 {
            let data = vec![n + 1; 64 << 10];
            let chunk = encoder.encode(geometry, u64::from(n), &data).unwrap().unwrap();
            bare.add(&chunk).unwrap();
            full.add(&chunk).unwrap();
        }
        let digest = TreeHasher::new().finish(3 * (64 << 10)).unwrap();
        let (bare, _) = bare.finish(3 * (64 << 10), digest).unwrap();
        let (full, _) = full.finish(3 * (64 << 10), digest).unwrap();
        (bare, full)
    }

    #[test]
    fn an_index_rebuilds_the_archive_layout() {
        let (bare, full) = archives();
        let object = ImageIndex::encode(&bare, &[7, 8, 9]).unwrap();
        let index = ImageIndex::parse(&object, "t").unwrap();
        assert_eq!(index.archive_len(), full.len() as u64);
        assert_eq!(index.header[..], full[..64]);
        assert_eq!(index.tail[..], full[index.index_offset as usize..]);
        assert_eq!(
            index.frames.iter().map(|f| f.gen).collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
    }

    #[test]
    fn hostile_index_objects_are_refused_without_panic() {
        let (bare, _) = archives();
        let object = ImageIndex::encode(&bare, &[1, 2, 3]).unwrap();
        // Every truncation, and every byte flipped, is refused (the seal or a check catches it).
        for len in 0..object.len() {
            assert!(
                ImageIndex::parse(&object[..len], "t").is_err(),
                "truncated to {len}"
            );
        }
        for i in 0..object.len() {
            let mut bad = object.clone();
            bad[i] ^= 0x55;
            assert!(ImageIndex::parse(&bad, "t").is_err(), "byte {i} flipped");
        }
        // Resealed lies: a huge record count, a frame length past the index, a wrong count.
        let reseal = |mut body: Vec<u8>| {
            body.truncate(body.len() - 32);
            let seal = sha256(&body);
            body.extend_from_slice(&seal);
            body
        };
        let mut huge = object.clone();
        huge[28..36].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = ImageIndex::parse(&reseal(huge), "t").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        let mut long_index = object.clone();
        long_index[16..24].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
        assert!(ImageIndex::parse(&reseal(long_index), "t").is_err());
        let mut frame_len = object.clone();
        let first_record = 36 + 64;
        frame_len[first_record + 16..first_record + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ImageIndex::parse(&reseal(frame_len), "t").is_err());
    }
}
