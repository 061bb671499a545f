//! `convert`: any readable image in, an `.imgpack` archive out.
//!
//! ```no_run
//! use imgpack::{convert, ConvertOptions};
//! let report = convert("disk.qcow2".as_ref(), "disk.imgpack".as_ref(), &ConvertOptions::default())?;
//! println!("{} bytes of data in {} bytes", report.disk_size, report.compressed_size);
//! # Ok::<(), imgpack::Error>(())
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::archive::format::Geometry;
use crate::archive::writer::ArchiveSummary;
use crate::control::Control;
use crate::error::Result;
pub use crate::input::limits::{check_virtual_size, DEFAULT_MAX_VIRTUAL_SIZE};
use crate::input::{self, Input, InputLimits, Opened, ReadMode};
use crate::pipeline::{self, with_pool, EncodeLimits, EncodeSettings};
use crate::sink::{ArchiveSink, FileSink, WriterSink};

/// The default compressed-size limit: 50 GiB.
pub const DEFAULT_MAX_COMPRESSED_SIZE: u64 = 50 << 30;
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
    /// Limits on the input: the largest virtual disk accepted, for every format. Default 64 TiB.
    pub limits: InputLimits,
    /// How raw files are read. Default [`ReadMode::Auto`].
    pub read_mode: ReadMode,
    /// Where spill files for layered inputs go. Default: the sink's directory (a file output's),
    /// else the system's temporary directory.
    pub temp_dir: Option<PathBuf>,
    /// Cancellation and progress.
    pub control: Control,
    /// The deduplication hook of an image library (see [`DedupHooks`](crate::DedupHooks)): chunks it already
    /// stores are not compressed, frames go to it and the sink receives only the header, index
    /// and footer. Default `None`: a self-contained archive.
    pub dedup: Option<pipeline::DedupHooks>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            level: DEFAULT_LEVEL,
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: None,
            max_compressed_size: DEFAULT_MAX_COMPRESSED_SIZE,
            limits: InputLimits::default(),
            read_mode: ReadMode::Auto,
            temp_dir: None,
            control: Control::default(),
            dedup: None,
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
    /// The image digest (`sha256-tree:<hex>`, docs/FORMAT.md), stored in the archive.
    pub digest: String,
    /// Wall time.
    pub seconds: f64,
}

/// Converts the image at `input` (a path, or `-` for standard input) into an archive at
/// `output` (a path, or `-` for standard output). A file output appears only when complete.
pub fn convert(input: &Path, output: &Path, options: &ConvertOptions) -> Result<ConvertReport> {
    let input = Input::path(input);
    if output == Path::new("-") {
        convert_to(input, WriterSink::stdout(), options)
    } else {
        convert_to(input, FileSink::create(output)?, options)
    }
}

/// Converts an image that arrives as a byte stream (an HTTP body, an object-store download)
/// into an archive written to `sink`, with the same detection and layer peeling as
/// [`convert`] on a file. Reports and errors call the input `stream`; use [`convert_to`] with
/// [`Input::reader`] to name it.
///
/// ```no_run
/// use imgpack::{convert_reader, ConvertOptions, WriterSink};
/// let body = std::fs::File::open("disk.qcow2.xz")?; // any `Read + Send`
/// let sink = WriterSink::new(Vec::new(), "memory");
/// let report = convert_reader(body, sink, &ConvertOptions::default())?;
/// println!("{}: {} bytes of data", report.format, report.disk_size);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn convert_reader(
    reader: impl Read + Send + 'static,
    sink: impl ArchiveSink,
    options: &ConvertOptions,
) -> Result<ConvertReport> {
    convert_to(Input::reader(reader, "stream"), sink, options)
}

/// Converts `input` into an archive written to `sink`, and finishes the sink only when the
/// archive is complete: on any error (a refused input, a limit, cancellation) the sink is
/// dropped unfinished. Spill files go to `options.temp_dir`, else the sink's
/// [`spill_dir`](ArchiveSink::spill_dir), else the system's temporary directory.
pub fn convert_to<S: ArchiveSink>(input: Input, sink: S, options: &ConvertOptions) -> Result<ConvertReport> {
    with_pool(options.threads, || {
        let start = Instant::now();
        let input_name = input.name().to_path_buf();
        let output_name = sink.name();
        let spill_dir = options
            .temp_dir
            .clone()
            .or_else(|| sink.spill_dir())
            .unwrap_or_else(std::env::temp_dir);
        let opened = input.open(&input::OpenOptions {
            read_mode: options.read_mode,
            limits: options.limits,
            spill_dir,
            control: options.control.clone(),
        })?;
        let format = opened.format_name();
        let (sink, summary) = encode(opened, sink, options).map_err(|e| e.in_file(&input_name))?;
        options.control.check()?;
        sink.finish()?;
        Ok(ConvertReport {
            input: input_name.display().to_string(),
            output: output_name,
            format,
            virtual_size: summary.virtual_size,
            disk_size: summary.disk_size,
            compressed_size: summary.compressed_size,
            chunk_size: options.chunk_size,
            chunks: summary.chunks,
            digest: summary.digest.to_string(),
            seconds: start.elapsed().as_secs_f64(),
        })
    })
}

/// Encodes an opened input into an archive written to `out`, with `options`' chunk size,
/// level and limits (the pipeline's `encode` with convert's options).
#[doc(hidden)]
pub fn encode<W: Write + Send>(
    opened: Opened,
    out: W,
    options: &ConvertOptions,
) -> Result<(W, ArchiveSummary)> {
    let geometry = Geometry::for_chunk_size(options.chunk_size)?;
    let limits = EncodeLimits {
        max_compressed_size: options.max_compressed_size,
        max_virtual_size: options.limits.max_virtual_size,
    };
    pipeline::encode_hooked(
        opened.body,
        out,
        EncodeSettings::new(geometry, options.level),
        limits,
        &options.control,
        options.dedup.as_ref(),
    )
}
