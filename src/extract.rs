//! `extract`: an archive back to the raw disk, as a sparse file or a byte stream.
//!
//! To a file, stored chunks are decoded in parallel and only their non-zero blocks are written
//! (positional writes), so zero regions stay holes. To a stream, windows of chunks are decoded
//! in parallel and written in order with the zeros between them. Every chunk is checked against
//! its crc32, and in a version 2 archive its SHA-256, before any of it is written.
//!
//! With [`ExtractOptions::sha256`] the SHA-256 of the whole raw disk is computed while writing,
//! as `sha256sum` of the output would print it: a sequential pass over every byte, holes
//! included (zero runs are fed from a static block of zeros, never read or allocated). To a
//! file, one thread hashes the chunks in disk order while the workers decode the next ones.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::archive::chunk::{expand_payload, update_with_content};
use crate::archive::digest::{to_hex, update_zeros};
use crate::archive::format::payload_runs;
use crate::archive::format::ChunkRecord;
use crate::archive::reader::ArchiveReader;
use crate::control::Control;
use crate::error::{Error, IoContext, Result};
use crate::output::AtomicFile;
use crate::pipeline::with_pool;
use crate::read_at::ReadAt;
use crate::sys;

/// Stored chunks decoded per parallel window.
const WINDOW: usize = 32;

/// Payload bytes of decoded chunks handed to the hashing thread at a time (`sha256`).
const HASH_WINDOW_BYTES: u64 = 32 << 20;

/// Options for [`extract`].
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Worker threads; `None` uses the shared pool. Default `None`.
    pub threads: Option<usize>,
    /// Also compute the SHA-256 of the raw disk written (`sha256sum` of the output), at the
    /// cost of a sequential pass over every byte, holes included. Default `false`.
    pub sha256: bool,
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
    /// With [`ExtractOptions::sha256`]: the SHA-256 of the raw disk, lowercase hex as
    /// `sha256sum` prints it (absent from the JSON otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
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
    let mut sha256 = None;
    if output == Path::new("-") {
        let out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        let mut out = HashingWriter {
            out,
            hasher: options.sha256.then(Sha256::new),
        };
        stream_disk(reader, &mut out, &options.control).map_err(|e| e.in_file(archive))?;
        out.flush()
            .map_err(|e| Error::io("writing to standard output", e))?;
        sha256 = out.hasher.map(|h| to_hex(&h.finalize()));
    } else {
        let file = AtomicFile::create(output)?;
        file.file()
            .set_len(reader.virtual_size())
            .context("sizing the output", output)?;
        if options.sha256 {
            let sum =
                write_disk_hashed(reader, file.file(), &options.control).map_err(|e| e.in_file(archive))?;
            sha256 = Some(sum);
        } else {
            write_disk(reader, file.file(), &options.control).map_err(|e| e.in_file(archive))?;
        }
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
        sha256,
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
            write_payload(file, record, base, chunk_len, payload)
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

/// Writes the non-zero blocks of one decoded chunk into `file` at their disk offsets.
fn write_payload(
    file: &File,
    record: &ChunkRecord,
    base: u64,
    chunk_len: usize,
    payload: &[u8],
) -> Result<()> {
    let mut taken = 0;
    for (start, len) in payload_runs(record, chunk_len) {
        let at = base + start as u64;
        file.write_all_at(&payload[taken..taken + len], at)
            .map_err(|e| Error::io("writing the disk", e).at(at))?;
        taken += len;
    }
    Ok(())
}

/// [`write_disk`] that also returns the SHA-256 of the whole disk (lowercase hex). Windows of
/// chunks are decoded and written in parallel; a hashing thread takes each window's payloads
/// in disk order, with the zeros between them, while the workers go on to the next window.
fn write_disk_hashed<R: ReadAt>(reader: &ArchiveReader<R>, file: &File, control: &Control) -> Result<String> {
    let chunk_size = reader.geometry().chunk_size();
    let total = reader.virtual_size();
    let per_window = (HASH_WINDOW_BYTES / chunk_size).max(2) as usize;
    let (tx, rx) = sync_channel::<Vec<(&ChunkRecord, Vec<u8>)>>(1);
    std::thread::scope(|scope| {
        let hasher_thread = scope.spawn(move || {
            let mut hasher = Sha256::new();
            let mut position = 0u64;
            for window in rx {
                for (record, payload) in window {
                    let start = record.chunk * chunk_size;
                    let chunk_len = reader.chunk_len(record);
                    update_zeros(&mut hasher, start - position);
                    update_with_content(&mut hasher, &record.zero_blocks, &payload, chunk_len);
                    position = start + chunk_len as u64;
                }
            }
            update_zeros(&mut hasher, total - position);
            to_hex(&hasher.finalize())
        });
        let written = (|| -> Result<()> {
            for window in reader.records().chunks(per_window) {
                control.check()?;
                let decoded: Vec<(&ChunkRecord, Vec<u8>)> = window
                    .par_iter()
                    .map(|record| {
                        let base = record.chunk * chunk_size;
                        let chunk_len = reader.chunk_len(record);
                        let payload = reader.with_payload(record, |payload| {
                            write_payload(file, record, base, chunk_len, payload)?;
                            Ok(payload.to_vec())
                        })?;
                        sys::start_writeback(file, base, chunk_len as u64);
                        Ok((record, payload))
                    })
                    .collect::<Result<_>>()?;
                let done = window.last().map_or(0, |r| (r.chunk + 1) * chunk_size).min(total);
                if tx.send(decoded).is_err() {
                    break;
                }
                control.report(done, Some(total), reader.disk_size());
            }
            Ok(())
        })();
        drop(tx);
        let sum = hasher_thread.join().expect("hashing thread panicked");
        written?;
        control.report(total, Some(total), reader.disk_size());
        Ok(sum)
    })
}

/// A writer that also hashes what it writes, when it has a hasher.
struct HashingWriter<W: Write> {
    out: W,
    hasher: Option<Sha256>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
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
