//! Registering an upload that is already an `.imgpack` archive (what `images download -O
//! imgpack` gives): [`import_archive`].
//!
//! The archive is hostile input. [`ArchiveReader::open`] has validated its structure (header,
//! index and footer crcs, records tiling the frame area); here every chunk this library will
//! keep is decoded and checked against its record (length, crc32, SHA-256), and its zero-block
//! bitmap must be the one imgpack's writer gives that content (no all-zero 4 KiB block in the
//! payload). That last check matters on the deduplicated store: a frame is stored under the
//! SHA-256 of its content and later registrations of the same content reuse it with the
//! bitmap *they* compute, so a frame whose payload is laid out differently would break their
//! images. The image digest is recomputed from the checked SHA-256s, never taken from the
//! footer.
//!
//! - Without deduplication the archive is stored as it is (it already is the self-contained
//!   form), once every chunk passed; converting it would cost a decode and a recompression.
//! - With deduplication, a chunk whose SHA-256 the library already holds (and whose recorded
//!   crc32 is the stored frame's) is pinned through [`ChunkLookup`] and neither decoded nor
//!   stored; a new chunk's frame is decoded, checked, then stored byte for byte (no
//!   recompression) through [`FrameStore`], exactly as the registration pipeline stores the
//!   frames it compresses. The index is rebuilt with the stored frames' lengths.
//!
//! Version 1 archives carry no SHA-256 per chunk and are refused (convert the disk again).

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use crate::archive::chunk::{EncodedChunk, StoredFrame};
use crate::archive::format::{payload_runs, ChunkRecord, BLOCK_SIZE};
use crate::archive::reader::ArchiveReader;
use crate::archive::writer::ArchiveWriter;
use crate::control::Control;
use crate::convert::ConvertReport;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::digest::content_digest;
use crate::pipeline::hook::{ChunkLookup, FrameStore};
use crate::read_at::ReadAt;
use crate::sink::ArchiveSink;

/// Records decoded in parallel at a time: bounds memory to this many frames and payloads.
const WINDOW: usize = 64;

/// Where an imported archive goes.
pub(super) enum ImportTarget<'a, S: ArchiveSink> {
    /// The archive as it is, into this sink (a self-contained image).
    Whole(S),
    /// The deduplicated store: frames through these hooks, the archive without frames into
    /// the sink.
    Chunks {
        lookup: &'a dyn ChunkLookup,
        frames: &'a dyn FrameStore,
        sink: S,
    },
}

/// Registers the archive in `reader` (the upload `name`) into `target`, refusing it past
/// `limit` bytes of self-contained archive. Returns what a conversion would report.
pub(super) fn import_archive<R: ReadAt, S: ArchiveSink>(
    reader: &ArchiveReader<R>,
    name: &str,
    target: ImportTarget<'_, S>,
    limit: u64,
    control: &Control,
) -> Result<ConvertReport> {
    let start = Instant::now();
    let at = |e: Error| e.in_file(Path::new(name));
    if reader.version() < 2 {
        return Err(at(Error::invalid_argument(
            "a version 1 imgpack archive has no SHA-256 per chunk to register by; convert the disk again",
        )));
    }
    let digest = content_digest(reader, control).map_err(at)?;
    let output;
    let compressed_size = match target {
        ImportTarget::Whole(mut sink) => {
            if reader.compressed_size() > limit {
                return Err(at(limit_error(limit, reader.compressed_size())));
            }
            reader
                .records()
                .par_iter()
                .try_for_each(|record| {
                    control.check()?;
                    check_chunk(reader, record)
                })
                .map_err(at)?;
            if reader.image_digest() != Some(digest) {
                return Err(at(Error::new(
                    ErrorKind::Checksum,
                    format!("the archive's footer does not record its content's digest {digest}"),
                )));
            }
            output = sink.name();
            copy_all(reader.source(), &mut sink).map_err(at)?;
            sink.finish()?;
            reader.compressed_size()
        }
        ImportTarget::Chunks { lookup, frames, sink } => {
            output = sink.name();
            let mut writer = ArchiveWriter::new(sink, reader.geometry(), Some(reader.virtual_size()), limit)?
                .frames_elsewhere();
            for window in reader.records().chunks(WINDOW) {
                control.check()?;
                let found = window
                    .iter()
                    .map(|record| reuse(reader, lookup, record))
                    .collect::<Result<Vec<_>>>()
                    .map_err(at)?;
                let chunks = window
                    .par_iter()
                    .zip(found)
                    .map(|(record, stored)| encoded(reader, record, stored))
                    .collect::<Result<Vec<_>>>()
                    .map_err(at)?;
                for chunk in &chunks {
                    frames.store(chunk)?;
                    writer.add(chunk)?;
                }
            }
            let (sink, summary) = writer.finish(reader.virtual_size(), digest)?;
            sink.finish()?;
            summary.compressed_size
        }
    };
    Ok(ConvertReport {
        input: name.to_string(),
        output,
        format: "imgpack".to_string(),
        virtual_size: reader.virtual_size(),
        disk_size: reader.disk_size(),
        compressed_size,
        chunk_size: reader.geometry().chunk_size(),
        chunks: reader.records().len() as u64,
        digest: digest.to_string(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The stored frame to reuse for `record`'s content, pinned; `None` to store the archive's.
/// A stored frame whose crc32 is not the record's is not the payload this record lays out
/// (the library's frames are laid out by imgpack's writer): the archive's frame is then
/// checked and stored instead, which refuses it if it lies.
fn reuse<R: ReadAt>(
    reader: &ArchiveReader<R>,
    lookup: &dyn ChunkLookup,
    record: &ChunkRecord,
) -> Result<Option<StoredFrame>> {
    let sha256 = sha256_of(reader, record)?;
    let stored = lookup.find(sha256, payload_len(reader, record))?;
    Ok(stored.filter(|frame| frame.crc == record.payload_crc))
}

/// `record` as the pipeline hands a chunk to the writer: reused, or with its checked frame.
fn encoded<R: ReadAt>(
    reader: &ArchiveReader<R>,
    record: &ChunkRecord,
    stored: Option<StoredFrame>,
) -> Result<EncodedChunk> {
    let frame = match stored {
        Some(_) => Vec::new(),
        None => {
            check_chunk(reader, record)?;
            let mut frame = vec![0u8; record.stored_len as usize];
            reader
                .source()
                .read_exact_at(&mut frame, record.stored_offset)
                .map_err(|e| {
                    Error::io(format!("reading chunk {}", record.chunk), e).at(record.stored_offset)
                })?;
            frame
        }
    };
    Ok(EncodedChunk {
        chunk: record.chunk,
        payload_crc: record.payload_crc,
        sha256: *sha256_of(reader, record)?,
        zero_blocks: record.zero_blocks.clone(),
        frame,
        payload_len: payload_len(reader, record),
        reused: stored,
    })
}

/// Decodes `record`'s chunk (the reader checks its length, crc32 and SHA-256) and checks that
/// its payload holds no all-zero block, as imgpack's writer lays chunks out.
fn check_chunk<R: ReadAt>(reader: &ArchiveReader<R>, record: &ChunkRecord) -> Result<()> {
    reader.with_payload(record, |payload| {
        match payload
            .chunks(BLOCK_SIZE)
            .position(|block| block.iter().all(|&b| b == 0))
        {
            Some(block) => Err(Error::corrupt(
                record.stored_offset,
                format!(
                    "chunk {} stores an all-zero block (payload block {block}) its bitmap should mark zero",
                    record.chunk
                ),
            )),
            None => Ok(()),
        }
    })
}

fn sha256_of<'r, R: ReadAt>(
    reader: &'r ArchiveReader<R>,
    record: &ChunkRecord,
) -> Result<&'r crate::archive::digest::Sha256Hash> {
    reader.chunk_sha256(record).ok_or_else(|| {
        Error::corrupt(
            record.stored_offset,
            format!("chunk {} has no SHA-256", record.chunk),
        )
    })
}

/// Bytes of `record`'s non-zero blocks (its payload).
fn payload_len<R: ReadAt>(reader: &ArchiveReader<R>, record: &ChunkRecord) -> u64 {
    payload_runs(record, reader.chunk_len(record))
        .iter()
        .map(|run| run.1 as u64)
        .sum()
}

fn copy_all<R: ReadAt>(source: &R, out: &mut impl std::io::Write) -> Result<()> {
    let len = source.size();
    let mut buf = vec![0u8; (4 << 20).min(len as usize)];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        source
            .read_exact_at(&mut buf[..n], at)
            .map_err(|e| Error::io("reading the archive", e).at(at))?;
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("storing the archive", e))?;
        at += n as u64;
    }
    Ok(())
}

fn limit_error(limit: u64, size: u64) -> Error {
    Error::new(
        ErrorKind::LimitExceeded,
        format!("the archive is {size} bytes, over the compressed-size limit of {limit} bytes"),
    )
}
