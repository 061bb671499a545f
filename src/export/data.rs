//! Moving the disk's data from the archive into an output, on every core.
//!
//! Two ways, one per kind of format:
//! - [`write_positional`]: the output's layout is planned before any data is decoded (every
//!   uncompressed format: an allocated block's place in the file follows from the archive's
//!   index), so stored chunks are decoded in one parallel loop and their non-zero runs written
//!   straight to their places with positional writes; what is never written stays a hole.
//!   The writes go around the page cache (O_DIRECT, [`sys::DirectWriter`]) where the file
//!   system takes it: each decoded payload is copied into a page-aligned buffer, and a run
//!   whose place in the file is page-aligned is handed to the device from there. A run that
//!   is not (a sub-page tail, a VHD bitmap's neighbour) goes through the page cache.
//! - [`walk_clusters`]: the output is written in disk order with pieces whose size is known
//!   only once made (compressed qcow2 clusters, streamOptimized grains). Windows of about
//!   32 MiB of the disk are decoded in parallel, every non-zero cluster of the window is handed
//!   to `work` in parallel (compression), and the results are emitted in order, on one thread
//!   while the other workers decode and compress the next window. Memory is one window plus
//!   the results of two, whatever the disk's size; windows with no stored chunk are never
//!   visited, so a sparse disk costs what its data costs.

use std::cell::RefCell;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::archive::chunk::expand_payload;
use crate::archive::format::payload_runs;
use crate::archive::reader::ArchiveReader;
use crate::control::Control;
use crate::error::{Error, ErrorKind, Result};
use crate::read_at::ReadAt;
use crate::sys::{self, AlignedBuffer, DirectWriter};
use crate::zero::is_zero;

thread_local! {
    /// Each worker's page-aligned copy of the payload it is writing.
    static ALIGNED: RefCell<AlignedBuffer> = RefCell::new(AlignedBuffer::default());
}

/// The archive being exported, with its name for errors.
pub struct Disk<'a, R: ReadAt> {
    /// The open archive.
    pub reader: &'a ArchiveReader<R>,
    /// Its path, named by errors in its chunks.
    pub path: &'a Path,
}

/// Bytes of disk decoded per window of [`walk_clusters`] (more when a cluster or chunk is larger).
const WINDOW_BYTES: u64 = 32 << 20;

/// Writes every stored run of the archive into `file`, the bytes of guest block `b` (of
/// `block_size` bytes) going to `place(b)` plus their offset in the block. Zero regions are not
/// written. A chunk that fails its check stops the work before any of its bytes is written.
pub fn write_positional<R: ReadAt>(
    disk: &Disk<R>,
    file: &File,
    block_size: u64,
    place: &(dyn Fn(u64) -> Option<u64> + Sync),
    control: &Control,
) -> Result<()> {
    let reader = disk.reader;
    let chunk_size = reader.geometry().chunk_size();
    let total = reader.virtual_size();
    let records = reader.records();
    let written = AtomicUsize::new(0);
    // Buffered by default: on a quiet machine the page cache wins (qcow2 of the Debian disk
    // 1.2-1.3 s buffered against 4.6-5.1 s direct, VHDX 1.3-1.6 s against 2.4-2.7 s; README
    // "Export"); O_DIRECT saved kernel time only when the machine was loaded.
    // IMGPACK_EXPORT_DIRECT=1 writes around the page cache instead.
    let writer = if std::env::var_os("IMGPACK_EXPORT_DIRECT").is_some() {
        DirectWriter::new(file)
    } else {
        DirectWriter::buffered(file)
    };
    let write_chunk = |record: &crate::archive::format::ChunkRecord| -> Result<()> {
        control.check()?;
        let base = record.chunk * chunk_size;
        let chunk_len = reader.chunk_len(record);
        // Output errors come back through `placed`, so that only the archive's own errors
        // (a damaged chunk) are named after the archive.
        let mut placed = Ok(());
        reader
            .with_payload(record, |payload| {
                let runs = payload_runs(record, chunk_len);
                placed = if writer.is_direct() {
                    // O_DIRECT needs page-aligned memory: a copy into the worker's buffer.
                    ALIGNED.with(|cell| {
                        let mut aligned = cell.borrow_mut();
                        aligned.resized(payload.len()).copy_from_slice(payload);
                        place_runs(aligned.as_slice(), runs, base, block_size, place, &writer)
                    })
                } else {
                    place_runs(payload, runs, base, block_size, place, &writer)
                };
                Ok(())
            })
            .map_err(|e| e.in_file(disk.path))?;
        placed?;
        // The chunk's own place (not its block's start): with blocks larger than a chunk
        // (VHD, VHDX) the block's start would flush the same range over and over. Direct
        // writes are on the device already.
        if let (false, Some(host)) = (writer.is_direct(), place(base / block_size)) {
            sys::start_writeback(file, host + base % block_size, chunk_len as u64);
        }
        let done = written.fetch_add(1, Ordering::Relaxed) + 1;
        let share = (u128::from(total) * done as u128 / records.len() as u128) as u64;
        control.report(share, Some(total), reader.disk_size());
        Ok(())
    };
    let run = || records.par_iter().try_for_each(write_chunk);
    // A direct write blocks its worker until the device has the data; twice as many workers
    // as cores keep the cores decoding while others wait on the device.
    // (Measured on the Debian archive, VHDX: 4 workers on 2 cores 4.8-4.9 s, 2 workers 5.4 s.)
    let writers = 2 * rayon::current_num_threads();
    let pool = writer
        .is_direct()
        .then(|| rayon::ThreadPoolBuilder::new().num_threads(writers).build().ok())
        .flatten();
    match pool {
        Some(pool) => pool.install(run)?,
        None => run()?,
    }
    control.report(total, Some(total), reader.disk_size());
    Ok(())
}

/// Writes a chunk's payload, whose runs (offset in the chunk, length) are `runs`, at the places
/// of the blocks they fall in.
fn place_runs(
    payload: &[u8],
    runs: Vec<(usize, usize)>,
    base: u64,
    block_size: u64,
    place: &(dyn Fn(u64) -> Option<u64> + Sync),
    writer: &DirectWriter,
) -> Result<()> {
    let mut taken = 0usize;
    for (start, len) in runs {
        let mut guest = base + start as u64;
        let end = guest + len as u64;
        while guest < end {
            let block = guest / block_size;
            let in_block = guest % block_size;
            let piece = (end - guest).min(block_size - in_block) as usize;
            let host = place(block).ok_or_else(|| unplanned(block))? + in_block;
            writer
                .write_all_at(&payload[taken..taken + piece], host)
                .map_err(|e| Error::io("writing the output", e).at(host))?;
            taken += piece;
            guest += piece as u64;
        }
    }
    Ok(())
}

fn unplanned(block: u64) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("internal error: block {block} holds data but has no place in the output"),
    )
}

/// Hands every non-zero cluster of `cluster_size` bytes (the last one may be short) to `work`,
/// in parallel a window at a time, and each `Some` result to `emit` in disk order with the
/// cluster's number.
pub fn walk_clusters<R, T, W, E>(
    disk: &Disk<R>,
    cluster_size: u64,
    control: &Control,
    work: W,
    mut emit: E,
) -> Result<()>
where
    R: ReadAt,
    T: Send,
    W: Fn(u64, &[u8]) -> Result<Option<T>> + Sync,
    E: FnMut(u64, T) -> Result<()> + Send,
{
    let reader = disk.reader;
    let chunk_size = reader.geometry().chunk_size();
    let total = reader.virtual_size();
    let unit = cluster_size.max(chunk_size);
    let window_len = unit.max(WINDOW_BYTES / unit * unit);
    let records = reader.records();
    let mut buffer = Vec::new();
    let mut next = 0usize;
    // The previous window's results, emitted (serially, in order) while this window is decoded
    // and compressed on the other workers, so that writing never leaves a core idle.
    let mut ready: Vec<(u64, T)> = Vec::new();
    let mut ready_end = 0u64;
    while next < records.len() {
        control.check()?;
        let start = records[next].chunk * chunk_size / unit * unit;
        let end = (start + window_len).min(total);
        let (emitted, results) = rayon::join(
            || -> Result<()> {
                for (cluster, result) in ready.drain(..) {
                    emit(cluster, result)?;
                }
                Ok(())
            },
            || window_results(disk, &mut buffer, start..end, cluster_size, &work),
        );
        emitted?;
        if ready_end > 0 {
            control.report(ready_end, Some(total), reader.disk_size());
        }
        ready = results?;
        ready_end = end;
        while next < records.len() && records[next].chunk * chunk_size < end {
            next += 1;
        }
    }
    for (cluster, result) in ready {
        emit(cluster, result)?;
    }
    control.report(total, Some(total), reader.disk_size());
    Ok(())
}

/// Decodes the disk's bytes `range` (whole chunks) into `buffer` in parallel and hands every
/// non-zero cluster of it to `work` in parallel; returns the `Some` results in disk order.
fn window_results<R, T, W>(
    disk: &Disk<R>,
    buffer: &mut Vec<u8>,
    range: std::ops::Range<u64>,
    cluster_size: u64,
    work: &W,
) -> Result<Vec<(u64, T)>>
where
    R: ReadAt,
    T: Send,
    W: Fn(u64, &[u8]) -> Result<Option<T>> + Sync,
{
    let reader = disk.reader;
    let chunk_size = reader.geometry().chunk_size();
    let len = (range.end - range.start) as usize;
    buffer.resize(len, 0);
    let first_chunk = range.start / chunk_size;
    buffer[..len]
        .par_chunks_mut(chunk_size as usize)
        .enumerate()
        .try_for_each(|(k, bytes)| match reader.record_of(first_chunk + k as u64) {
            Some(record) => reader.with_payload(record, |payload| {
                expand_payload(record, payload, bytes);
                Ok(())
            }),
            None => {
                bytes.fill(0);
                Ok(())
            }
        })
        .map_err(|e| e.in_file(disk.path))?;
    let first_cluster = range.start / cluster_size;
    buffer[..len]
        .par_chunks(cluster_size as usize)
        .enumerate()
        .filter(|(_, bytes)| !is_zero(bytes))
        .map(|(k, bytes)| {
            let cluster = first_cluster + k as u64;
            Ok(work(cluster, bytes)?.map(|t| (cluster, t)))
        })
        .filter_map(Result::transpose)
        .collect()
}
