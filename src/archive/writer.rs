//! [`ArchiveWriter`]: writes a version 2 archive front to back over any [`Write`], never
//! seeking, and enforces the compressed-size limit before each write.
//!
//! Call [`ArchiveWriter::add`] for each stored chunk in increasing chunk order, then
//! [`ArchiveWriter::finish`] with the image digest, which is required: without it the archive has no index or footer
//! and every reader refuses it.

use std::io::Write;

use super::chunk::EncodedChunk;
use super::digest::ImageDigest;
use super::format::{ChunkRecord, Footer, Geometry, Header, Version, HEADER_LEN};
use crate::error::{Error, ErrorKind, Result};
use crate::units::format_size;

/// What the writer wrote, returned by [`ArchiveWriter::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Virtual size recorded in the footer.
    pub virtual_size: u64,
    /// Bytes of non-zero blocks.
    pub disk_size: u64,
    /// Total archive length, header to footer.
    pub compressed_size: u64,
    /// Stored chunks.
    pub chunks: u64,
    /// The image digest recorded in the footer.
    pub digest: ImageDigest,
}

/// The version this writer writes.
const WRITTEN: Version = Version::V2;

/// Streams an archive into `out`.
pub struct ArchiveWriter<W: Write> {
    out: W,
    geometry: Geometry,
    max_compressed_size: u64,
    position: u64,
    disk_size: u64,
    index: Vec<u8>,
    chunks: u64,
    next_chunk: u64,
    /// Frames go to a store of the caller's, not into `out` (see [`ArchiveWriter::frames_elsewhere`]).
    frames_elsewhere: bool,
}

impl<W: Write> ArchiveWriter<W> {
    /// Writes the header. `virtual_size` is `None` when the input's size is not yet known (a
    /// stream); the footer then carries it. Fails if even an empty archive would exceed
    /// `max_compressed_size`.
    pub fn new(
        mut out: W,
        geometry: Geometry,
        virtual_size: Option<u64>,
        max_compressed_size: u64,
    ) -> Result<Self> {
        let empty = HEADER_LEN + WRITTEN.footer_len();
        if empty > max_compressed_size {
            return Err(limit_error(max_compressed_size, 0, empty));
        }
        let header = Header {
            version: WRITTEN,
            geometry,
            virtual_size,
        };
        out.write_all(&header.encode())
            .map_err(|e| Error::io("writing the archive header", e))?;
        Ok(ArchiveWriter {
            out,
            geometry,
            max_compressed_size,
            position: HEADER_LEN,
            disk_size: 0,
            index: Vec::new(),
            chunks: 0,
            next_chunk: 0,
            frames_elsewhere: false,
        })
    }

    /// Writes no frame into `out`: the caller stores each chunk's frame itself (a
    /// deduplicating library keeps each frame as an object of its own). `out` then receives
    /// the header, the index and the footer, exactly the bytes the self-contained archive
    /// would hold around its frames, and positions are counted as if the frames were there.
    /// Only then may chunks carry a frame stored elsewhere ([`EncodedChunk::reused`]).
    pub fn frames_elsewhere(mut self) -> Self {
        self.frames_elsewhere = true;
        self
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Bytes of non-zero blocks stored so far.
    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }

    /// The smallest the finished archive can be if nothing more is added.
    fn final_size_with(&self, extra_frame: u64, extra_records: u64) -> u64 {
        let records = (self.chunks + extra_records) * self.geometry.record_len(WRITTEN) as u64;
        self.position + extra_frame + records + WRITTEN.footer_len()
    }

    /// Appends a stored chunk. Chunks must come in strictly increasing order. Refuses, before
    /// writing anything, a chunk that would take the finished archive past the limit.
    pub fn add(&mut self, chunk: &EncodedChunk) -> Result<()> {
        if chunk.chunk < self.next_chunk {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("chunk {} added out of order", chunk.chunk),
            ));
        }
        let frame_len = match chunk.reused {
            Some(stored) if self.frames_elsewhere => stored.len,
            Some(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "chunk {} has no frame to write into a self-contained archive",
                        chunk.chunk
                    ),
                ))
            }
            None => u32::try_from(chunk.frame.len())
                .map_err(|_| Error::new(ErrorKind::InvalidArgument, "compressed chunk over 4 GiB"))?,
        };
        let would_be = self.final_size_with(frame_len.into(), 1);
        if would_be > self.max_compressed_size {
            return Err(limit_error(
                self.max_compressed_size,
                chunk.chunk * self.geometry.chunk_size(),
                would_be,
            ));
        }
        if !self.frames_elsewhere {
            self.out
                .write_all(&chunk.frame)
                .map_err(|e| Error::io("writing the archive", e).at(self.position))?;
        }
        ChunkRecord {
            chunk: chunk.chunk,
            stored_offset: self.position,
            stored_len: frame_len,
            payload_crc: chunk.payload_crc,
            zero_blocks: Vec::new(),
        }
        .encode_v2_into(&chunk.sha256, &mut self.index);
        self.index.extend_from_slice(&chunk.zero_blocks);
        self.position += u64::from(frame_len);
        self.disk_size += chunk.payload_len;
        self.chunks += 1;
        self.next_chunk = chunk.chunk + 1;
        Ok(())
    }

    /// Writes the index and the footer with `digest` (the image digest of the disk written,
    /// computed by the caller) and flushes. `virtual_size` must cover every stored chunk.
    pub fn finish(mut self, virtual_size: u64, digest: ImageDigest) -> Result<(W, ArchiveSummary)> {
        let covered = self.next_chunk.saturating_mul(self.geometry.chunk_size());
        if self.next_chunk > 0 && virtual_size <= covered - self.geometry.chunk_size() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "virtual size {virtual_size} does not cover stored chunk {}",
                    self.next_chunk - 1
                ),
            ));
        }
        let footer = Footer {
            virtual_size,
            index_offset: self.position,
            chunk_count: self.chunks,
            disk_size: self.disk_size,
            index_crc: crc32fast::hash(&self.index),
            digest: Some(digest),
        };
        let total = self.final_size_with(0, 0);
        debug_assert!(total <= self.max_compressed_size);
        self.out
            .write_all(&self.index)
            .and_then(|_| self.out.write_all(&footer.encode()))
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::io("writing the archive index", e).at(self.position))?;
        let summary = ArchiveSummary {
            virtual_size,
            disk_size: self.disk_size,
            compressed_size: total,
            chunks: self.chunks,
            digest,
        };
        Ok((self.out, summary))
    }
}

fn limit_error(limit: u64, reached_virtual_offset: u64, would_be: u64) -> Error {
    Error::new(
        ErrorKind::LimitExceeded,
        format!(
            "compressed size limit of {} ({limit} bytes) exceeded: the archive would reach at least {would_be} bytes \
             after converting the first {} of the disk",
            format_size(limit),
            format_size(reached_virtual_offset),
        ),
    )
}
