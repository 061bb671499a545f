//! `info`: what an image or archive is, without converting it.
//!
//! For inputs imgpack would refuse, `info` still answers and says why in `refusal`.

use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::control::Control;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::extract::open_archive;
use crate::input::detect::Format;
use crate::input::{self, Body, DiskSource, OpenOptions};
use crate::pipeline::DataChunks;
use crate::read_at::FileAt;
use crate::zero::is_zero;

/// What `info` reports. Field names are part of the CLI's `--json` contract.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageInfo {
    /// The file examined.
    pub input: String,
    /// Its format, with layers outermost first (`"raw"`, `"qcow2"`, `"imgpack"`, `"xz>qcow2"`).
    pub format: String,
    /// Size of the file itself.
    pub file_size: u64,
    /// Size of the virtual disk, where known.
    pub virtual_size: Option<u64>,
    /// Bytes of non-zero 4 KiB blocks, where known.
    pub disk_size: Option<u64>,
    /// For archives: the archive's size.
    pub compressed_size: Option<u64>,
    /// For archives: the chunk size.
    pub chunk_size: Option<u64>,
    /// For archives: stored chunks.
    pub chunks: Option<u64>,
    /// Why `convert` would refuse this input, or `None` if it would accept it.
    pub refusal: Option<String>,
    /// Format-specific details (qcow2 version, cluster size, ...).
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Describes the file at `path`.
pub fn info(path: &Path, options: &OpenOptions) -> Result<ImageInfo> {
    let file = std::fs::File::open(path).context("opening the input", path)?;
    let file = FileAt::new(file).context("reading the input", path)?;
    let file_size = crate::read_at::ReadAt::size(&file);
    let mut info = ImageInfo {
        input: path.display().to_string(),
        format: String::new(),
        file_size,
        virtual_size: None,
        disk_size: None,
        compressed_size: None,
        chunk_size: None,
        chunks: None,
        refusal: None,
        details: serde_json::Map::new(),
    };
    let format = match input::detect_file(&file) {
        Ok(format) => format,
        Err(e) => {
            info.format = "unknown".into();
            info.refusal = Some(e.to_string());
            return Ok(info);
        }
    };
    info.format = format.name().to_string();
    if format == Format::Imgpack {
        let reader = open_archive(path)?;
        info.virtual_size = Some(reader.virtual_size());
        info.disk_size = Some(reader.disk_size());
        info.compressed_size = Some(reader.compressed_size());
        info.chunk_size = Some(reader.geometry().chunk_size());
        info.chunks = Some(reader.records().len() as u64);
        return Ok(info);
    }
    if format.is_stream() {
        input::stream::describe(path, format, options, &mut info)?;
        return Ok(info);
    }
    if format == Format::Qcow2 {
        return input::qcow2::fill_info(info, file, path, options);
    }
    match input::open(path, options) {
        Ok(opened) => {
            info.format = opened.format_name();
            match opened.body {
                Body::Source(source) => {
                    info.virtual_size = Some(source.virtual_size());
                    info.details.extend(source.details());
                    if let Err(e) =
                        crate::convert::check_virtual_size(source.virtual_size(), options.max_virtual_size)
                    {
                        info.refusal = Some(e.to_string());
                    }
                    info.disk_size = Some(measure_disk_size(source.as_ref(), &options.control)?);
                }
                Body::Stream(_) => {}
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::Unsupported | ErrorKind::InvalidArgument | ErrorKind::LimitExceeded
            ) =>
        {
            info.refusal = Some(e.message().to_string());
        }
        Err(e) => return Err(e),
    }
    Ok(info)
}

/// Counts the bytes of non-zero 4 KiB blocks of a disk, skipping what it knows is zero.
pub fn measure_disk_size(source: &dyn DiskSource, control: &Control) -> Result<u64> {
    const CHUNK: u64 = 1 << 20;
    let virtual_size = source.virtual_size();
    let mut chunks = DataChunks::new(source, CHUNK);
    let mut total = 0u64;
    while let Some(window) = chunks.next_window(64)? {
        control.check()?;
        let sizes: Vec<u64> = window
            .par_iter()
            .map_init(Vec::new, |scratch, &chunk| -> Result<u64> {
                let len = (virtual_size - chunk * CHUNK).min(CHUNK) as usize;
                let data = source.read(chunk * CHUNK, len, scratch)?;
                let non_zero = data
                    .chunks(crate::archive::format::BLOCK_SIZE)
                    .filter(|b| !is_zero(b))
                    .map(|b| b.len() as u64)
                    .sum();
                source.confirm_read(chunk * CHUNK, len)?;
                Ok(non_zero)
            })
            .collect::<Result<_>>()?;
        total += sizes.iter().sum::<u64>();
    }
    Ok(total)
}

/// An error for `info` on a path that is not a file.
pub fn not_a_file(path: &Path) -> Error {
    Error::invalid_argument("not a regular file").in_file(path)
}
