//! `extract`: an archive back to the raw disk, as a sparse file or a byte stream.
//!
//! To a file, stored chunks are decoded in parallel and only their non-zero blocks are written
//! (positional writes), so zero regions stay holes. To a stream, windows of chunks are decoded
//! in parallel and written in order with the zeros between them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::archive::chunk::expand_payload;
use crate::archive::format::payload_runs;
use crate::archive::reader::ArchiveReader;
use crate::control::Control;
use crate::error::{Error, IoContext, Result};
use crate::output::AtomicFile;
use crate::pipeline::with_pool;
use crate::read_at::ReadAt;
use crate::sys;

/// Stored chunks decoded per parallel window.
const WINDOW: usize = 32;

/// Options for [`extract`].
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Worker threads; `None` uses the shared pool. Default `None`.
    pub threads: Option<usize>,
    /// Cancellation and progress.
    pub control: Control,
}

/// What an extraction did. Field names are part of the CLI's `--json` contract.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExtractReport {
    /// The archive read.
    pub input: String,
    /// The raw disk written (`-` for standard output).
    pub output: String,
    /// Always `"imgpack"`: the format read.
    pub format: String,
    /// Size of the virtual disk.
    pub virtual_size: u64,
    /// Bytes of non-zero 4 KiB blocks.
    pub disk_size: u64,
    /// Size of the archive.
    pub compressed_size: u64,
    /// Chunk size of the archive.
    pub chunk_size: u64,
    /// Stored chunks.
    pub chunks: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Writes the disk in `archive` to `output` (a path, or `-` for standard output). A file
/// output is sparse and appears only when complete and every chunk passed its crc. With
/// feature `s3`, `archive` may be an object, `s3://BUCKET/KEY`.
pub fn extract(archive: &Path, output: &Path, options: &ExtractOptions) -> Result<ExtractReport> {
    with_pool(options.threads, || {
        let start = Instant::now();
        // An `s3://BUCKET/KEY` archive is read in place by ranged GETs.
        #[cfg(feature = "s3")]
        if let Some(object) = crate::remote::open_url(archive)? {
            let reader = ArchiveReader::open(object).map_err(|e| e.in_file(archive))?;
            return extract_from(&reader, archive, output, options, start);
        }
        let reader = ArchiveReader::open_path(archive)?;
        extract_from(&reader, archive, output, options, start)
    })
}

fn extract_from<R: ReadAt>(
    reader: &ArchiveReader<R>,
    archive: &Path,
    output: &Path,
    options: &ExtractOptions,
    start: Instant,
) -> Result<ExtractReport> {
    if output == Path::new("-") {
        let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        stream_disk(reader, &mut out, &options.control).map_err(|e| e.in_file(archive))?;
        out.flush()
            .map_err(|e| Error::io("writing to standard output", e))?;
    } else {
        let file = AtomicFile::create(output)?;
        file.file()
            .set_len(reader.virtual_size())
            .context("sizing the output", output)?;
        write_disk(reader, file.file(), &options.control).map_err(|e| e.in_file(archive))?;
        options.control.check()?;
        file.commit()?;
    }
    Ok(ExtractReport {
        input: archive.display().to_string(),
        output: output.display().to_string(),
        format: "imgpack".to_string(),
        virtual_size: reader.virtual_size(),
        disk_size: reader.disk_size(),
        compressed_size: reader.compressed_size(),
        chunk_size: reader.geometry().chunk_size(),
        chunks: reader.records().len() as u64,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes every stored block of the archive into `file` at its disk offset, leaving zero
/// regions untouched (holes in a fresh file). The file must already be at least the virtual
/// size long. A chunk that fails its crc stops the work before any of its bytes is written.
///
/// Chunks go to the workers as one parallel loop with no barrier between groups (writes are
/// positional, so their order does not matter), and each chunk's writeback to disk starts as
/// soon as it is written, so the fsync before commit has little left to flush.
pub(crate) fn write_disk<R: ReadAt>(reader: &ArchiveReader<R>, file: &File, control: &Control) -> Result<()> {
    let chunk_size = reader.geometry().chunk_size();
    let total = reader.virtual_size();
    let records = reader.records();
    let written = AtomicUsize::new(0);
    records.par_iter().try_for_each(|record| -> Result<()> {
        control.check()?;
        let base = record.chunk * chunk_size;
        let chunk_len = reader.chunk_len(record);
        reader.with_payload(record, |payload| {
            let mut taken = 0;
            for (start, len) in payload_runs(record, chunk_len) {
                let at = base + start as u64;
                file.write_all_at(&payload[taken..taken + len], at)
                    .map_err(|e| Error::io("writing the disk", e).at(at))?;
                taken += len;
            }
            Ok(())
        })?;
        sys::start_writeback(file, base, chunk_len as u64);
        let done = written.fetch_add(1, Ordering::Relaxed) + 1;
        let share = (u128::from(total) * done as u128 / records.len() as u128) as u64;
        control.report(share, Some(total), reader.disk_size());
        Ok(())
    })?;
    control.report(total, Some(total), reader.disk_size());
    Ok(())
}

/// Writes the whole disk, zeros included, to `out` in order.
#[doc(hidden)]
pub fn stream_disk<R: ReadAt>(
    reader: &ArchiveReader<R>,
    out: &mut impl Write,
    control: &Control,
) -> Result<()> {
    let chunk_size = reader.geometry().chunk_size();
    let total = reader.virtual_size();
    let mut position = 0u64;
    for window in reader.records().chunks(WINDOW) {
        control.check()?;
        let decoded: Vec<Vec<u8>> = window
            .par_iter()
            .map(|record| {
                reader.with_payload(record, |payload| {
                    let mut bytes = vec![0u8; reader.chunk_len(record)];
                    expand_payload(record, payload, &mut bytes);
                    Ok(bytes)
                })
            })
            .collect::<Result<_>>()?;
        for (record, bytes) in window.iter().zip(decoded) {
            let start = record.chunk * chunk_size;
            write_zeros(out, start - position)?;
            out.write_all(&bytes)
                .map_err(|e| Error::io("writing the disk", e))?;
            position = start + bytes.len() as u64;
        }
        control.report(position, Some(total), reader.disk_size());
    }
    write_zeros(out, total - position)?;
    control.report(total, Some(total), reader.disk_size());
    Ok(())
}

fn write_zeros(out: &mut impl Write, mut count: u64) -> Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while count > 0 {
        let n = count.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..n])
            .map_err(|e| Error::io("writing the disk", e))?;
        count -= n as u64;
    }
    Ok(())
}
