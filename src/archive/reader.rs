//! [`ArchiveReader`]: opens an archive from any [`ReadAt`], validates its header, footer and
//! whole index before handing anything out, and gives random access to the virtual disk.
//!
//! Validation is strict because archives are read back long after they were written and may
//! have been damaged or tampered with in storage: every offset and length is checked against
//! the file and against its neighbours before use, so later code can trust the index.
//!
//! Both format versions are read. In version 2 every decoded chunk is also checked against its
//! SHA-256 (wherever it is decoded: `read_at`, `with_payload`, extraction, verification), and
//! the footer's image digest is available from [`ArchiveReader::image_digest`].

use std::cell::RefCell;
use std::fs::File;
use std::path::Path;

use super::chunk::{content_sha256, expand_payload, ChunkDecoder};
use super::digest::{to_hex, ImageDigest, Sha256Hash};
use super::format::{payload_runs, ChunkRecord, Footer, Geometry, Header, Version, FOOTER_LEN, HEADER_LEN};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::read_at::{FileAt, ReadAt};

/// The largest index this reader loads (512 MiB): enough for millions of stored chunks; a
/// footer claiming more is refused instead of allocating what it asks.
pub const MAX_INDEX_LEN: u64 = 512 << 20;

/// What a decode checks before handing a chunk out.
///
/// The crc32 of the stored payload catches damage (a flipped bit, a torn or misplaced
/// frame); the SHA-256 in a version 2 index is the chunk's content identity (what dedup,
/// the image digest and the library trust), and costs about as much again as the
/// decompression. Everything that copies or vouches for content (extract, verify, build,
/// download, conversion) checks it ([`ChunkCheck::Full`], the default); a reader that only
/// needs damage caught before bytes go out, with the archive's identity already settled
/// elsewhere, may ask for [`ChunkCheck::CrcOnly`] (`imgpack serve` does, see its module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkCheck {
    /// The payload's length and crc32 only.
    CrcOnly,
    /// The length, the crc32 and, in version 2, the chunk's SHA-256.
    Full,
}

/// An open, validated archive.
pub struct ArchiveReader<R: ReadAt> {
    source: R,
    version: Version,
    geometry: Geometry,
    footer: Footer,
    records: Vec<ChunkRecord>,
    /// The SHA-256 of each record's chunk, in record order (empty in version 1).
    chunk_sha256: Vec<Sha256Hash>,
}

/// A worker's decoder with its reused frame and payload buffers.
type DecoderSlot = Option<(ChunkDecoder, Vec<u8>, Vec<u8>)>;

thread_local! {
    static DECODER: RefCell<DecoderSlot> = const { RefCell::new(None) };
}

impl ArchiveReader<FileAt> {
    /// Opens and validates the archive file at `path`; errors name the file.
    pub fn open_path(path: &Path) -> Result<Self> {
        let file = File::open(path).context("opening the archive", path)?;
        let file = FileAt::new(file).context("reading the archive", path)?;
        ArchiveReader::open(file).map_err(|e| e.in_file(path))
    }
}

impl<R: ReadAt> ArchiveReader<R> {
    /// Opens and validates the archive in `source`.
    pub fn open(source: R) -> Result<Self> {
        let size = source.size();
        if size < HEADER_LEN + FOOTER_LEN {
            return Err(Error::corrupt(
                0,
                format!("archive is {size} bytes, shorter than header and footer"),
            ));
        }
        let mut header_bytes = [0u8; HEADER_LEN as usize];
        source
            .read_exact_at(&mut header_bytes, 0)
            .map_err(|e| Error::io("reading the archive header", e))?;
        let header = Header::decode(&header_bytes)?;
        let version = header.version;
        let footer_len = version.footer_len();
        if size < HEADER_LEN + footer_len {
            return Err(Error::corrupt(
                0,
                format!(
                    "version {} archive is {size} bytes, shorter than header and footer",
                    version.number()
                ),
            ));
        }
        let footer_at = size - footer_len;
        let mut footer_bytes = vec![0u8; footer_len as usize];
        source
            .read_exact_at(&mut footer_bytes, footer_at)
            .map_err(|e| Error::io("reading the archive footer", e))?;
        let footer = Footer::decode(&footer_bytes, footer_at, version)?;
        if let Some(v) = header.virtual_size {
            if v != footer.virtual_size {
                return Err(Error::corrupt(
                    16,
                    format!(
                        "header virtual size {v} differs from footer virtual size {}",
                        footer.virtual_size
                    ),
                ));
            }
        }
        let geometry = header.geometry;
        let index_len = footer
            .chunk_count
            .checked_mul(geometry.record_len(version) as u64)
            .filter(|&l| l <= MAX_INDEX_LEN)
            .ok_or_else(|| {
                Error::corrupt(
                    footer_at + 16,
                    format!("chunk count {} is too large", footer.chunk_count),
                )
            })?;
        if footer.index_offset < HEADER_LEN || footer.index_offset.checked_add(index_len) != Some(footer_at) {
            return Err(Error::corrupt(
                footer_at + 8,
                format!(
                    "index at {} with {} records does not end where the footer starts ({footer_at})",
                    footer.index_offset, footer.chunk_count
                ),
            ));
        }
        let mut index = vec![0u8; index_len as usize];
        source
            .read_exact_at(&mut index, footer.index_offset)
            .map_err(|e| Error::io("reading the archive index", e))?;
        if crc32fast::hash(&index) != footer.index_crc {
            return Err(
                Error::new(ErrorKind::Checksum, "archive index checksum mismatch").at(footer.index_offset)
            );
        }
        let (records, chunk_sha256) = validate_index(&index, version, geometry, &footer)?;
        Ok(ArchiveReader {
            source,
            version,
            geometry,
            footer,
            records,
            chunk_sha256,
        })
    }

    /// The bytes the archive was opened from (for a byte-exact copy of the archive).
    pub fn source(&self) -> &R {
        &self.source
    }

    /// The archive's format version (1 or 2).
    pub fn version(&self) -> u16 {
        self.version.number()
    }

    /// The image digest stored in the footer; `None` in a version 1 archive.
    pub fn image_digest(&self) -> Option<ImageDigest> {
        self.footer.digest
    }

    /// The SHA-256 of `record`'s full chunk content as the index records it; `None` in a
    /// version 1 archive (or for a chunk number this archive does not store).
    pub fn chunk_sha256(&self, record: &ChunkRecord) -> Option<&Sha256Hash> {
        let i = self
            .records
            .binary_search_by_key(&record.chunk, |r| r.chunk)
            .ok()?;
        self.chunk_sha256.get(i)
    }

    /// Chunk geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Size of the virtual disk.
    pub fn virtual_size(&self) -> u64 {
        self.footer.virtual_size
    }

    /// Bytes of non-zero blocks.
    pub fn disk_size(&self) -> u64 {
        self.footer.disk_size
    }

    /// Length of the archive file.
    pub fn compressed_size(&self) -> u64 {
        self.source.size()
    }

    /// The stored chunks, in chunk order.
    pub fn records(&self) -> &[ChunkRecord] {
        &self.records
    }

    /// The record of chunk number `chunk`, if it is stored.
    pub fn record_of(&self, chunk: u64) -> Option<&ChunkRecord> {
        self.records
            .binary_search_by_key(&chunk, |r| r.chunk)
            .ok()
            .map(|i| &self.records[i])
    }

    /// Logical length of `record`'s chunk.
    pub fn chunk_len(&self, record: &ChunkRecord) -> usize {
        self.geometry.chunk_len(record.chunk, self.footer.virtual_size)
    }

    /// Reads, decompresses and checks `record`'s payload into `payload` (its length and crc32,
    /// and in version 2 the SHA-256 of the chunk it makes). `frame` is scratch.
    pub fn read_payload(
        &self,
        record: &ChunkRecord,
        decoder: &mut ChunkDecoder,
        frame: &mut Vec<u8>,
        payload: &mut Vec<u8>,
    ) -> Result<()> {
        self.read_payload_checked(record, ChunkCheck::Full, decoder, frame, payload)
    }

    /// [`read_payload`](Self::read_payload) with the checks `check` asks for: the length and
    /// crc32 always, the chunk's SHA-256 (version 2) only with [`ChunkCheck::Full`].
    pub fn read_payload_checked(
        &self,
        record: &ChunkRecord,
        check: ChunkCheck,
        decoder: &mut ChunkDecoder,
        frame: &mut Vec<u8>,
        payload: &mut Vec<u8>,
    ) -> Result<()> {
        frame.resize(record.stored_len as usize, 0);
        self.source
            .read_exact_at(frame, record.stored_offset)
            .map_err(|e| Error::io(format!("reading chunk {}", record.chunk), e).at(record.stored_offset))?;
        let chunk_len = self.chunk_len(record);
        decoder.decode_payload(record, frame, chunk_len, payload)?;
        if check == ChunkCheck::CrcOnly {
            return Ok(());
        }
        if let Some(expected) = self.chunk_sha256(record) {
            let actual = content_sha256(&record.zero_blocks, payload, chunk_len);
            if &actual != expected {
                return Err(Error::new(
                    ErrorKind::Checksum,
                    format!(
                        "chunk {} fails its SHA-256 check (index {}, content {})",
                        record.chunk,
                        to_hex(expected),
                        to_hex(&actual)
                    ),
                )
                .at(record.stored_offset));
            }
        }
        Ok(())
    }

    /// Runs `f` with `record`'s decoded, crc-checked payload, on this thread's reused decoder
    /// and buffers (one per worker thread, so parallel loops allocate nothing per chunk).
    pub fn with_payload<T>(&self, record: &ChunkRecord, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
        DECODER.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some((ChunkDecoder::new()?, Vec::new(), Vec::new()));
            }
            let (decoder, frame, payload) = slot.as_mut().expect("initialised above");
            self.read_payload(record, decoder, frame, payload)?;
            f(payload)
        })
    }

    /// Fills `buf` with the virtual disk's bytes from `offset`, decoding only the chunks it
    /// touches. Returns the bytes read: short only at the end of the disk.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let end = offset
            .saturating_add(buf.len() as u64)
            .min(self.footer.virtual_size);
        if offset >= end {
            return Ok(0);
        }
        let mut decoder = ChunkDecoder::new()?;
        let (mut frame, mut payload, mut chunk_bytes) = (Vec::new(), Vec::new(), Vec::new());
        let chunk_size = self.geometry.chunk_size();
        let mut pos = offset;
        while pos < end {
            let chunk = pos / chunk_size;
            let in_chunk = (pos % chunk_size) as usize;
            let take = (end - pos).min(chunk_size - in_chunk as u64) as usize;
            let dst = &mut buf[(pos - offset) as usize..][..take];
            match self.record_of(chunk) {
                None => dst.fill(0),
                Some(record) => {
                    self.read_payload(record, &mut decoder, &mut frame, &mut payload)?;
                    chunk_bytes.resize(self.chunk_len(record), 0);
                    expand_payload(record, &payload, &mut chunk_bytes);
                    dst.copy_from_slice(&chunk_bytes[in_chunk..in_chunk + take]);
                }
            }
            pos += take as u64;
        }
        Ok((end - offset) as usize)
    }
}

/// Parses the index and checks every record against the geometry, the footer and its
/// neighbours: chunk numbers strictly increasing and inside the disk, frames contiguous from
/// the header to the index, bitmaps consistent with the chunk's length, disk size as recorded.
fn validate_index(
    index: &[u8],
    version: Version,
    geometry: Geometry,
    footer: &Footer,
) -> Result<(Vec<ChunkRecord>, Vec<Sha256Hash>)> {
    let record_len = geometry.record_len(version);
    let chunk_total = geometry.chunk_count(footer.virtual_size);
    let max_frame = zstd::zstd_safe::compress_bound(geometry.chunk_size() as usize) as u64;
    let mut records = Vec::with_capacity(index.len() / record_len);
    let mut hashes = Vec::with_capacity(if version.has_digests() {
        records.capacity()
    } else {
        0
    });
    let mut expected_offset = HEADER_LEN;
    let mut disk_size = 0u64;
    for (i, bytes) in index.chunks_exact(record_len).enumerate() {
        let at = footer.index_offset + (i * record_len) as u64;
        let (record, sha256) = ChunkRecord::decode_versioned(bytes, version);
        hashes.extend(sha256);
        if let Some(prev) = records.last().map(|r: &ChunkRecord| r.chunk) {
            if record.chunk <= prev {
                return Err(Error::corrupt(
                    at,
                    format!("chunk {} listed after chunk {prev}", record.chunk),
                ));
            }
        }
        if record.chunk >= chunk_total {
            return Err(Error::corrupt(
                at,
                format!(
                    "chunk {} lies past the end of a {}-byte disk",
                    record.chunk, footer.virtual_size
                ),
            ));
        }
        if record.stored_offset != expected_offset {
            return Err(Error::corrupt(
                at + 8,
                format!(
                    "chunk {} stored at {}, expected {expected_offset} (frames must be contiguous)",
                    record.chunk, record.stored_offset
                ),
            ));
        }
        if record.stored_len == 0 || u64::from(record.stored_len) > max_frame {
            return Err(Error::corrupt(
                at + 16,
                format!(
                    "chunk {} has impossible stored length {}",
                    record.chunk, record.stored_len
                ),
            ));
        }
        let chunk_len = geometry.chunk_len(record.chunk, footer.virtual_size);
        let present = chunk_len.div_ceil(super::format::BLOCK_SIZE);
        if (present..geometry.blocks_per_chunk()).any(|b| !record.is_zero_block(b)) {
            return Err(Error::corrupt(
                at + version.record_fixed_len() as u64,
                format!(
                    "chunk {} marks blocks past the disk's end as stored",
                    record.chunk
                ),
            ));
        }
        let payload: u64 = payload_runs(&record, chunk_len).iter().map(|r| r.1 as u64).sum();
        if payload == 0 {
            return Err(Error::corrupt(
                at + version.record_fixed_len() as u64,
                format!(
                    "chunk {} is stored but all its blocks are marked zero",
                    record.chunk
                ),
            ));
        }
        disk_size += payload;
        expected_offset += u64::from(record.stored_len);
        records.push(record);
    }
    if expected_offset != footer.index_offset {
        return Err(Error::corrupt(
            expected_offset,
            format!(
                "chunk data ends at {expected_offset} but the index starts at {}",
                footer.index_offset
            ),
        ));
    }
    if disk_size != footer.disk_size {
        return Err(Error::corrupt(
            footer.index_offset,
            format!(
                "index accounts for {disk_size} bytes of data, footer says {}",
                footer.disk_size
            ),
        ));
    }
    Ok((records, hashes))
}
