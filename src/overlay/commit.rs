//! `overlay commit`: a base archive plus an overlay written out as a new archive, through the
//! conversion pipeline (the merged disk is a random-access source like a raw image).

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::file::{Access, Overlay};
use super::format::BaseIdentity;
use super::merged::MergedDisk;
use crate::archive::format::Geometry;
use crate::archive::reader::ArchiveReader;
use crate::control::Control;
use crate::error::Result;
use crate::input::Body;
use crate::pipeline::{encode, with_pool, EncodeLimits, EncodeSettings};
use crate::sink::{ArchiveSink, FileSink};

/// How `overlay commit` writes the new archive.
#[derive(Debug, Clone)]
pub struct CommitOptions {
    /// zstd level. Default 3, as `convert`.
    pub level: i32,
    /// Chunk size of the new archive. Default: the base archive's.
    pub chunk_size: Option<u64>,
    /// Worker threads. Default: one per core.
    pub threads: Option<usize>,
    /// Refuse (while writing) an archive larger than this. Default 50 GiB, as `convert`.
    pub max_compressed_size: u64,
    /// Cancellation and progress.
    pub control: Control,
}

impl Default for CommitOptions {
    fn default() -> Self {
        CommitOptions {
            level: 3,
            chunk_size: None,
            threads: None,
            max_compressed_size: 50 << 30,
            control: Control::default(),
        }
    }
}

/// What `overlay commit` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CommitReport {
    /// The overlay.
    pub overlay: String,
    /// The base archive.
    pub base: String,
    /// The new archive.
    pub output: String,
    /// The disk's size.
    pub virtual_size: u64,
    /// Bytes of non-zero blocks in the new archive.
    pub disk_size: u64,
    /// The new archive's length.
    pub compressed_size: u64,
    /// Chunk size.
    pub chunk_size: u64,
    /// Stored chunks.
    pub chunks: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Writes the disk that `overlay` shows over `base` as a new archive at `output` (appearing
/// only when complete). Refuses an overlay made over another archive, and one a server is
/// using.
pub fn commit(
    overlay_path: &Path,
    base_path: &Path,
    output: &Path,
    options: &CommitOptions,
) -> Result<CommitReport> {
    let start = Instant::now();
    let base = ArchiveReader::open_path(base_path)?;
    let overlay = Overlay::open(overlay_path, BaseIdentity::of(&base), Access::Read)?;
    let chunk_size = options.chunk_size.unwrap_or(base.geometry().chunk_size());
    let geometry = Geometry::for_chunk_size(chunk_size)?;
    let virtual_size = base.virtual_size();
    let disk = MergedDisk::new(base, overlay);
    let sink = FileSink::create(output)?;
    let limits = EncodeLimits {
        max_compressed_size: options.max_compressed_size,
        max_virtual_size: u64::MAX,
    };
    let (sink, summary) = with_pool(options.threads, || {
        encode(
            Body::Source(Box::new(disk)),
            sink,
            EncodeSettings::new(geometry, options.level),
            limits,
            &options.control,
        )
    })?;
    options.control.check()?;
    sink.finish()?;
    Ok(CommitReport {
        overlay: overlay_path.display().to_string(),
        base: base_path.display().to_string(),
        output: output.display().to_string(),
        virtual_size,
        disk_size: summary.disk_size,
        compressed_size: summary.compressed_size,
        chunk_size,
        chunks: summary.chunks,
        seconds: start.elapsed().as_secs_f64(),
    })
}
