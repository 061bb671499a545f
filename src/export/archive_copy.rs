//! `-O imgpack`: the archive itself, byte for byte. An archive is already the single-file
//! form; its bytes are copied in order (so standard output takes it too), after every chunk
//! was decoded and checked against its record (crc32, and in version 2 the SHA-256): a copy
//! is handed to someone else, and a damaged frame must be refused here rather than found by
//! them. Nothing is decoded twice into memory beyond one chunk per worker.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use super::{sha256, ExportOptions, ExportReport};
use crate::archive::reader::ArchiveReader;
use crate::error::{Error, IoContext, Result};
use crate::output::AtomicFile;
use crate::read_at::ReadAt;

/// Bytes copied per read: large enough that an object store answers few ranged reads.
const COPY_BLOCK: usize = 4 << 20;

/// Copies `reader`'s archive to `output` (a path, or `-`), checking every chunk first.
pub(super) fn copy_archive<R: ReadAt>(
    reader: &ArchiveReader<R>,
    input: &Path,
    output: &Path,
    options: &ExportOptions,
    start: Instant,
) -> Result<ExportReport> {
    let control = &options.control;
    reader
        .records()
        .par_iter()
        .try_for_each(|record| {
            control.check()?;
            reader.with_payload(record, |_| Ok(()))
        })
        .map_err(|e| e.in_file(input))?;
    let (bytes_written, sha256) = if output == Path::new("-") {
        let mut out = sha256::Hashing::new(std::io::stdout().lock(), options.sha256);
        let written = copy_bytes(reader.source(), input, &mut out, options)?;
        out.flush()
            .map_err(|e| Error::io("writing to standard output", e))?;
        (written, out.hex())
    } else {
        let file = AtomicFile::create(output)?;
        let written =
            copy_bytes(reader.source(), input, &mut file.file(), options).map_err(|e| e.in_file(output))?;
        control.check()?;
        let sha256 = if options.sha256 {
            Some(sha256::of_file(file.file(), control).map_err(|e| e.in_file(output))?)
        } else {
            None
        };
        file.commit()?;
        (written, sha256)
    };
    Ok(ExportReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        format: "imgpack".to_string(),
        subformat: None,
        cluster_size: None,
        compat: None,
        compression_type: None,
        virtual_size: reader.virtual_size(),
        bytes_written,
        seconds: start.elapsed().as_secs_f64(),
        sha256,
        note: None,
    })
}

/// Writes every byte of `source` to `out`, in order; returns the count.
fn copy_bytes<R: ReadAt>(
    source: &R,
    input: &Path,
    out: &mut impl Write,
    options: &ExportOptions,
) -> Result<u64> {
    let len = source.size();
    let mut buf = vec![0u8; COPY_BLOCK.min(len as usize)];
    let mut at = 0u64;
    while at < len {
        options.control.check()?;
        let n = (len - at).min(buf.len() as u64) as usize;
        source
            .read_exact_at(&mut buf[..n], at)
            .context("reading the archive", input)
            .map_err(|e| e.at(at))?;
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("writing the archive copy", e))?;
        at += n as u64;
    }
    Ok(len)
}
