//! `verify`: decode every chunk of an archive and check every crc (and in a version 2 archive
//! every chunk's SHA-256 and the image digest), reporting every bad chunk.
//!
//! The image digest costs no extra pass at the default chunk size, where each chunk is a leaf
//! and its checked SHA-256 is the leaf hash; other chunk sizes decode the archive a second
//! time to hash its leaves.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::archive::reader::ArchiveReader;
use crate::control::Control;
use crate::pipeline::digest::content_digest;
use crate::pipeline::with_pool;
use crate::read_at::ReadAt;
use crate::Result;

/// A chunk that failed to decode or failed its crc.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BadChunk {
    /// Chunk number.
    pub chunk: u64,
    /// Where its frame is stored in the archive.
    pub stored_offset: u64,
    /// What is wrong.
    pub error: String,
}

/// The outcome of [`verify`]. Field names are part of the CLI's `--json` contract.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VerifyReport {
    /// The archive checked.
    pub input: String,
    /// Always `"imgpack"`.
    pub format: String,
    /// Whether every structure and every chunk is intact.
    pub ok: bool,
    /// Size of the virtual disk.
    pub virtual_size: u64,
    /// Bytes of non-zero 4 KiB blocks.
    pub disk_size: u64,
    /// Size of the archive.
    pub compressed_size: u64,
    /// Chunk size.
    pub chunk_size: u64,
    /// Stored chunks.
    pub chunks: u64,
    /// Every chunk that failed, in chunk order.
    pub bad_chunks: Vec<BadChunk>,
    /// The image digest the archive stores (`sha256-tree:<hex>`); `None` in version 1.
    pub digest: Option<String>,
    /// Whether the stored digest is the content's: `None` in version 1 or when bad chunks
    /// leave the content unknown.
    pub digest_ok: Option<bool>,
    /// Wall time.
    pub seconds: f64,
}

/// Options for [`verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Worker threads; `None` uses the shared pool (one thread per core). Default `None`.
    pub threads: Option<usize>,
    /// Cancellation and progress. Default: neither.
    pub control: Control,
}

/// Checks the archive at `path` (with feature `s3`, also an object, `s3://BUCKET/KEY`).
/// Header, footer or index damage is an `Err`; damaged chunks and a stored digest that is not
/// the content's are in the report, whose `ok` is then false.
pub fn verify(path: &Path, options: &VerifyOptions) -> Result<VerifyReport> {
    with_pool(options.threads, || {
        let start = Instant::now();
        // An `s3://BUCKET/KEY` archive is read in place by ranged GETs.
        #[cfg(feature = "s3")]
        if let Some(object) = crate::remote::open_url(path)? {
            let reader = ArchiveReader::open(object).map_err(|e| e.in_file(path))?;
            return verify_reader(&reader, path, &options.control, start);
        }
        let reader = ArchiveReader::open_path(path)?;
        verify_reader(&reader, path, &options.control, start)
    })
}

fn verify_reader<R: ReadAt + Send + Sync>(
    reader: &ArchiveReader<R>,
    path: &Path,
    control: &Control,
    start: Instant,
) -> Result<VerifyReport> {
    let mut bad_chunks = Vec::new();
    let total = reader.virtual_size();
    let chunk_size = reader.geometry().chunk_size();
    for window in reader.records().chunks(64) {
        control.check()?;
        let results: Vec<Option<BadChunk>> = window
            .par_iter()
            .map(|record| {
                reader.with_payload(record, |_| Ok(())).err().map(|e| BadChunk {
                    chunk: record.chunk,
                    stored_offset: record.stored_offset,
                    error: e.to_string(),
                })
            })
            .collect();
        bad_chunks.extend(results.into_iter().flatten());
        if let Some(last) = window.last() {
            control.report(
                ((last.chunk + 1) * chunk_size).min(total),
                Some(total),
                reader.disk_size(),
            );
        }
    }
    let stored = reader.image_digest();
    let digest_ok = match stored {
        Some(stored) if bad_chunks.is_empty() => Some(content_digest(reader, control)? == stored),
        _ => None,
    };
    Ok(VerifyReport {
        input: path.display().to_string(),
        format: "imgpack".to_string(),
        ok: bad_chunks.is_empty() && digest_ok != Some(false),
        virtual_size: total,
        disk_size: reader.disk_size(),
        compressed_size: reader.compressed_size(),
        chunk_size,
        chunks: reader.records().len() as u64,
        bad_chunks,
        digest: stored.map(|d| d.to_string()),
        digest_ok,
        seconds: start.elapsed().as_secs_f64(),
    })
}
