//! `convert`: any readable image in, an `.imgpack` archive out.
//!
//! ```no_run
//! use imgpack::{convert, ConvertOptions};
//! let report = convert("disk.qcow2".as_ref(), "disk.imgpack".as_ref(), &ConvertOptions::default())?;
//! println!("{} bytes of data in {} bytes", report.disk_size, report.compressed_size);
//! # Ok::<(), imgpack::Error>(())
//! ```

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::archive::format::Geometry;
use crate::archive::writer::ArchiveSummary;
use crate::control::Control;
use crate::error::{Error, ErrorKind, Result};
use crate::input::{self, Opened, ReadMode};
use crate::output::AtomicFile;
use crate::pipeline::{self, with_pool, EncodeLimits, EncodeSettings};
use crate::units::format_size;

/// The default compressed-size limit: 50 GiB.
pub const DEFAULT_MAX_COMPRESSED_SIZE: u64 = 50 << 30;
/// The default virtual-size limit: 64 TiB.
pub const DEFAULT_MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// The default chunk size: 1 MiB (see the README's measurements).
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;
/// The default zstd level.
pub const DEFAULT_LEVEL: i32 = 3;

/// Options for [`convert`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// zstd level, 1..=19. Default 3.
    pub level: i32,
    /// Chunk size, a power of two from 64 KiB to 64 MiB. Default 1 MiB.
    pub chunk_size: u64,
    /// Worker threads; `None` uses the shared rayon pool (one thread per core). Default `None`.
    pub threads: Option<usize>,
    /// Largest archive allowed, counting every byte. Default 50 GiB.
    pub max_compressed_size: u64,
    /// Largest virtual disk accepted, for every input format. Default 64 TiB.
    pub max_virtual_size: u64,
    /// How raw files are read. Default [`ReadMode::Auto`].
    pub read_mode: ReadMode,
    /// Where spill files for layered inputs go; default: the output's directory.
    pub temp_dir: Option<PathBuf>,
    /// Cancellation and progress.
    pub control: Control,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            level: DEFAULT_LEVEL,
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: None,
            max_compressed_size: DEFAULT_MAX_COMPRESSED_SIZE,
            max_virtual_size: DEFAULT_MAX_VIRTUAL_SIZE,
            read_mode: ReadMode::Auto,
            temp_dir: None,
            control: Control::default(),
        }
    }
}

/// What a conversion did. Field names are part of the CLI's `--json` contract.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConvertReport {
    /// The input path (`-` for standard input).
    pub input: String,
    /// The output path (`-` for standard output).
    pub output: String,
    /// The input's format, with layers outermost first (`"raw"`, `"qcow2"`, `"xz>qcow2"`).
    pub format: String,
    /// Size of the virtual disk.
    pub virtual_size: u64,
    /// Bytes of non-zero 4 KiB blocks.
    pub disk_size: u64,
    /// Size of the archive written.
    pub compressed_size: u64,
    /// Chunk size of the archive.
    pub chunk_size: u64,
    /// Stored chunks.
    pub chunks: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Converts the image at `input` (a path, or `-` for standard input) into an archive at
/// `output` (a path, or `-` for standard output). A file output appears only when complete.
pub fn convert(input: &Path, output: &Path, options: &ConvertOptions) -> Result<ConvertReport> {
    with_pool(options.threads, || {
        let start = Instant::now();
        let spill_dir = options.temp_dir.clone().unwrap_or_else(|| parent_dir(output));
        let opened = input::open(
            input,
            &input::OpenOptions {
                read_mode: options.read_mode,
                max_virtual_size: options.max_virtual_size,
                spill_dir,
                control: options.control.clone(),
            },
        )?;
        let format = opened.format_name();
        let summary = if output == Path::new("-") {
            let stdout = BufWriter::with_capacity(1 << 20, std::io::stdout());
            let (mut out, summary) = encode(opened, stdout, options)?;
            out.flush()
                .map_err(|e| Error::io("writing to standard output", e))?;
            summary
        } else {
            let file = AtomicFile::create(output)?;
            let (_, summary) = encode(opened, file.appender(), options).map_err(|e| e.in_file(input))?;
            options.control.check()?;
            file.commit()?;
            summary
        };
        Ok(ConvertReport {
            input: input.display().to_string(),
            output: output.display().to_string(),
            format,
            virtual_size: summary.virtual_size,
            disk_size: summary.disk_size,
            compressed_size: summary.compressed_size,
            chunk_size: options.chunk_size,
            chunks: summary.chunks,
            seconds: start.elapsed().as_secs_f64(),
        })
    })
}

/// Encodes an opened input into an archive written to `out`, with `options`' chunk size,
/// level and limits (the pipeline's [`encode`](pipeline::encode) with convert's options).
pub fn encode<W: Write + Send>(
    opened: Opened,
    out: W,
    options: &ConvertOptions,
) -> Result<(W, ArchiveSummary)> {
    let geometry = Geometry::for_chunk_size(options.chunk_size)?;
    let limits = EncodeLimits {
        max_compressed_size: options.max_compressed_size,
        max_virtual_size: options.max_virtual_size,
    };
    pipeline::encode(
        opened.body,
        out,
        EncodeSettings::new(geometry, options.level),
        limits,
        &options.control,
    )
}

/// Refuses a virtual size above the limit.
pub fn check_virtual_size(virtual_size: u64, limit: u64) -> Result<()> {
    if virtual_size > limit {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "virtual size {} ({virtual_size} bytes) exceeds the limit of {} ({limit} bytes)",
                format_size(virtual_size),
                format_size(limit)
            ),
        ));
    }
    Ok(())
}

/// The directory a path lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
