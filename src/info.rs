//! `info`: what an image or archive is, without converting it.
//!
//! For inputs imgpack would refuse, `info` still answers and says why in `refusal`.

use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::archive::reader::ArchiveReader;
use crate::control::Control;
use crate::error::{Error, IoContext, Result};
use crate::input::detect::Format;
use crate::input::facts::{is_refusal, refusal_text};
use crate::input::{self, DiskSource, InputLimits, OpenOptions};
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
    /// For archives of format version 2: the image digest they store (`sha256-tree:<hex>`);
    /// `None` for version 1 archives and for other inputs (`imgpack digest` computes it).
    pub digest: Option<String>,
    /// Why `convert` would refuse this input, or `None` if it would accept it.
    pub refusal: Option<String>,
    /// Format-specific details (qcow2 version, cluster size, ...).
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Options for [`info`].
#[derive(Debug, Clone, Default)]
pub struct InfoOptions {
    /// Images whose virtual disk is larger are reported as refused. Default 64 TiB.
    pub limits: InputLimits,
    /// Cancellation (of the disk-size measurement). Default: none.
    pub control: Control,
}

/// Describes the file at `path`. With feature `s3`, `path` may be an archive in an object
/// store, `s3://BUCKET/KEY`, read by ranged GETs.
pub fn info(path: &Path, options: &InfoOptions) -> Result<ImageInfo> {
    #[cfg(feature = "s3")]
    if let Some(object) = crate::remote::open_url(path)? {
        return remote_info(path, object);
    }
    let options = &OpenOptions {
        limits: options.limits,
        control: options.control.clone(),
        ..OpenOptions::default()
    };
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
        digest: None,
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
        let reader = ArchiveReader::open_path(path)?;
        info.virtual_size = Some(reader.virtual_size());
        info.disk_size = Some(reader.disk_size());
        info.compressed_size = Some(reader.compressed_size());
        info.chunk_size = Some(reader.geometry().chunk_size());
        info.chunks = Some(reader.records().len() as u64);
        info.digest = reader.image_digest().map(|d| d.to_string());
        info.details
            .insert("archive_version".into(), reader.version().into());
        return Ok(info);
    }
    let facts = input::facts::inspect(path, format, file, options)?;
    info.format = facts.format;
    info.virtual_size = facts.virtual_size;
    info.compressed_size = facts.compressed_size;
    info.refusal = facts.refusal;
    info.details.extend(facts.details);
    if let Some(source) = facts.source {
        // Damage found only while reading (an L2 table, a compressed cluster or grain) is a
        // refusal to explain too, not a failure of `info`.
        match measure_disk_size(source.as_ref(), &options.control) {
            Ok(size) => info.disk_size = Some(size),
            Err(e) if is_refusal(&e) => info.refusal = Some(refusal_text(&e)),
            Err(e) => return Err(e.in_file(path)),
        }
    }
    Ok(info)
}

/// `info` of an object: archives only (an image would have to be downloaded to be measured).
#[cfg(feature = "s3")]
fn remote_info(path: &Path, object: crate::remote::S3ReadAt) -> Result<ImageInfo> {
    let format = input::detect_file(&object).map_err(|e| e.in_file(path))?;
    if format != Format::Imgpack {
        return Err(Error::unsupported(format!(
            "info reads archives in object stores; this object is {}",
            format.name()
        ))
        .in_file(path));
    }
    let file_size = crate::read_at::ReadAt::size(&object);
    let reader = ArchiveReader::open(object).map_err(|e| e.in_file(path))?;
    Ok(ImageInfo {
        input: path.display().to_string(),
        format: format.name().to_string(),
        file_size,
        virtual_size: Some(reader.virtual_size()),
        disk_size: Some(reader.disk_size()),
        compressed_size: Some(reader.compressed_size()),
        chunk_size: Some(reader.geometry().chunk_size()),
        chunks: Some(reader.records().len() as u64),
        refusal: None,
        digest: reader.image_digest().map(|d| d.to_string()),
        details: [("archive_version".to_string(), reader.version().into())]
            .into_iter()
            .collect(),
    })
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
