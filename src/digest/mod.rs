//! `digest`: the image digest (`sha256-tree:<hex>`, defined in `docs/FORMAT.md`) of any input
//! imgpack reads, without writing an archive, so a local disk can be checked against a library
//! record; and [`hash_while_reading`], the SHA-256 of a byte stream as it is read (an upload's
//! `source_sha256`).
//!
//! Raw files cost what their data costs (holes are skipped with SEEK_DATA, zero leaves found in
//! parallel and never hashed); image formats skip what their tables say is unallocated;
//! compressed streams are decoded on one thread while the pool hashes. A version 2 archive
//! answers from its footer, or with `verify` decodes every chunk (each checked against its
//! SHA-256) and recomputes the digest; a version 1 archive, which stores none, is always
//! recomputed.
//!
//! ```no_run
//! use imgpack::digest::{digest, DigestOptions};
//! let report = digest("disk.qcow2".as_ref(), &DigestOptions::default())?;
//! println!("{}", report.digest); // sha256-tree:...
//! # Ok::<(), imgpack::Error>(())
//! ```

mod file;
mod reader;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

pub use crate::archive::digest::ImageDigest;
use crate::archive::digest::LEAF_SIZE;
use crate::archive::reader::ArchiveReader;
use crate::control::Control;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::input::detect::Format;
use crate::input::{self, Body, InputLimits, OpenOptions, ReadMode};
use crate::pipeline::digest::{digest_source, digest_stream, ArchiveDisk, DiskDigest};
use crate::pipeline::with_pool;
use crate::read_at::FileAt;
pub use file::sha256_of_file;
pub use reader::{hash_while_reading, HashingReader, Sha256Handle, StreamSha256};

/// Options for [`digest`].
#[derive(Debug, Clone, Default)]
pub struct DigestOptions {
    /// Worker threads; `None` uses the shared pool (one thread per core). Default `None`.
    pub threads: Option<usize>,
    /// Limits on the input (the largest virtual disk accepted). Default 64 TiB.
    pub limits: InputLimits,
    /// How raw files are read. Default [`ReadMode::Auto`].
    pub read_mode: ReadMode,
    /// Where layered inputs that need random access (qcow2 inside xz) are spilled. Default:
    /// the system's temporary directory.
    pub temp_dir: Option<PathBuf>,
    /// For a version 2 archive: decode every chunk and recompute the digest instead of reading
    /// the stored one, and fail if they differ. Default `false`.
    pub verify: bool,
    /// Cancellation and progress.
    pub control: Control,
}

/// What [`digest`] found. Field names are part of the CLI's `--json` contract.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DigestReport {
    /// The file digested (`-` for standard input).
    pub input: String,
    /// Its format, with layers outermost first (`"raw"`, `"xz>qcow2"`, `"imgpack"`).
    pub format: String,
    /// Size of the virtual disk.
    pub virtual_size: u64,
    /// Bytes of non-zero 4 KiB blocks.
    pub disk_size: u64,
    /// The image digest, `sha256-tree:<hex>`.
    pub digest: String,
    /// `"computed"` from the content, or `"stored"`: read from a version 2 archive's footer.
    pub digest_source: &'static str,
    /// Wall time.
    pub seconds: f64,
}

/// Computes the image digest of the file at `path` (`-` for standard input).
pub fn digest(path: &Path, options: &DigestOptions) -> Result<DigestReport> {
    with_pool(options.threads, || {
        let start = Instant::now();
        let (format, found, digest_source) = if is_archive(path)? {
            digest_archive(path, options)?
        } else {
            let opened = input::open(
                path,
                &OpenOptions {
                    read_mode: options.read_mode,
                    limits: options.limits,
                    spill_dir: options.temp_dir.clone().unwrap_or_else(std::env::temp_dir),
                    control: options.control.clone(),
                },
            )?;
            let format = opened.format_name();
            let found = match opened.body {
                Body::Source(source) => {
                    input::limits::check_virtual_size(
                        source.virtual_size(),
                        options.limits.max_virtual_size,
                    )?;
                    digest_source(source.as_ref(), LEAF_SIZE, &options.control)
                }
                Body::Stream(reader) => {
                    digest_stream(reader, options.limits.max_virtual_size, &options.control)
                }
            }
            .map_err(|e| e.in_file(path))?;
            (format, found, "computed")
        };
        Ok(DigestReport {
            input: path.display().to_string(),
            format,
            virtual_size: found.virtual_size,
            disk_size: found.disk_size,
            digest: found.digest.to_string(),
            digest_source,
            seconds: start.elapsed().as_secs_f64(),
        })
    })
}

/// Whether `path` is an imgpack archive (standard input never is: archives need random access).
fn is_archive(path: &Path) -> Result<bool> {
    if path == Path::new("-") {
        return Ok(false);
    }
    let file = std::fs::File::open(path).context("opening the input", path)?;
    let file = FileAt::new(file).context("reading the input", path)?;
    Ok(input::detect_file(&file).is_ok_and(|format| format == Format::Imgpack))
}

/// The digest of an archive: stored (version 2) or recomputed from its chunks.
fn digest_archive(path: &Path, options: &DigestOptions) -> Result<(String, DiskDigest, &'static str)> {
    let reader = ArchiveReader::open_path(path)?;
    let stored = reader.image_digest();
    if let (Some(digest), false) = (stored, options.verify) {
        let found = DiskDigest {
            digest,
            virtual_size: reader.virtual_size(),
            disk_size: reader.disk_size(),
        };
        return Ok(("imgpack".into(), found, "stored"));
    }
    let span = reader.geometry().chunk_size().max(LEAF_SIZE);
    let found =
        digest_source(&ArchiveDisk::new(&reader), span, &options.control).map_err(|e| e.in_file(path))?;
    if let Some(stored) = stored.filter(|&s| s != found.digest) {
        return Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "the archive's content has digest {}, its footer records {stored}",
                found.digest
            ),
        )
        .in_file(path));
    }
    Ok(("imgpack".into(), found, "computed"))
}
