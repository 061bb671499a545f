//! [`Export`]: the disk a server offers, independent of the protocol: the archive's chunks
//! through the [`ChunkCache`], under an optional copy-on-write [`Overlay`].
//!
//! Reads come out as [`Piece`]s (data, or a range of zeros) so that the protocol layer can
//! send holes as holes; block status comes out as extents of the `base:allocation` kind.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use super::cache::{ChunkBytes, ChunkCache};
use super::stats::ServeStats;
use crate::archive::format::BLOCK_SIZE;
use crate::error::{Error, ErrorKind, Result};
use crate::overlay::{BlockState, Overlay};
use crate::read_at::ReadAt;

/// Largest piece of overlay data read at once (bounds a connection's buffer).
const OVERLAY_PIECE: usize = 1 << 20;

/// One consecutive part of a read.
#[derive(Debug)]
pub enum Piece<'a> {
    /// These bytes.
    Data(&'a [u8]),
    /// This many zero bytes.
    Zero(u64),
}

/// Why a read stopped.
#[derive(Debug)]
pub enum ReadFailure {
    /// The export could not produce the bytes (a damaged chunk, an I/O error): the client
    /// gets an error for this request.
    Export(Error),
    /// Handing a piece to the client failed: the connection is gone.
    Client(io::Error),
}

/// The allocation state of a range, as `base:allocation` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Holds data.
    Data,
    /// Reads as zeros and takes no space.
    Zero,
}

/// A served disk.
pub struct Export<R: ReadAt> {
    cache: Arc<ChunkCache<R>>,
    overlay: Option<Overlay>,
    stats: Arc<ServeStats>,
    read_ahead_chunks: u64,
    /// Where recent reads ended, from every connection: a client reading sequentially over
    /// several connections (nbdcopy, qemu with multi-conn) interleaves its requests, so one
    /// connection's history alone would not see the sequence.
    recent_ends: Mutex<VecDeque<u64>>,
}

/// Most bytes one block-status query looks at in an overlay.
const MAX_OVERLAY_STATUS: u64 = 128 << 20;

/// How many recent read ends are remembered.
const RECENT_READS: usize = 32;

impl<R: ReadAt + 'static> Export<R> {
    /// The export of `cache`'s archive, writable into `overlay` if there is one.
    pub fn new(
        cache: ChunkCache<R>,
        overlay: Option<Overlay>,
        cache_size: u64,
        stats: Arc<ServeStats>,
    ) -> Self {
        let chunk_size = cache.archive().geometry().chunk_size();
        // Enough chunks ahead to keep the decoders busy (8 MiB), never more than a quarter of
        // the cache, so read-ahead does not evict what it is about to serve.
        let read_ahead_chunks = ((8 << 20) / chunk_size)
            .clamp(2, 16)
            .min(cache_size / 4 / chunk_size);
        Export {
            cache: Arc::new(cache),
            overlay,
            stats,
            read_ahead_chunks,
            recent_ends: Mutex::new(VecDeque::with_capacity(RECENT_READS)),
        }
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.cache.archive().virtual_size()
    }

    /// Whether writes are accepted (an overlay is attached).
    pub fn writable(&self) -> bool {
        self.overlay.is_some()
    }

    /// The counters.
    pub fn stats(&self) -> &ServeStats {
        &self.stats
    }

    /// Hands `offset..offset + len` (inside the disk) to `emit` as consecutive pieces.
    pub fn read(
        &self,
        offset: u64,
        len: u64,
        emit: &mut dyn FnMut(Piece<'_>) -> io::Result<()>,
    ) -> std::result::Result<(), ReadFailure> {
        match &self.overlay {
            None => self.read_base(offset, len, emit),
            Some(overlay) => {
                let mut buf = Vec::new();
                for run in overlay.runs(offset, len) {
                    match run.state {
                        BlockState::Base => self.read_base(run.offset, run.len, emit)?,
                        BlockState::Zero => emit(Piece::Zero(run.len)).map_err(ReadFailure::Client)?,
                        BlockState::Data => {
                            let mut pos = run.offset;
                            let end = run.offset + run.len;
                            while pos < end {
                                let take = (end - pos).min(OVERLAY_PIECE as u64) as usize;
                                buf.resize(take, 0);
                                overlay.read_data(pos, &mut buf).map_err(ReadFailure::Export)?;
                                emit(Piece::Data(&buf)).map_err(ReadFailure::Client)?;
                                pos += take as u64;
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Decodes (and so checks) every stored chunk of the base that `offset..offset + len`
    /// reads, so that a reply that cannot report an error half-way knows it will not need to.
    pub fn check_readable(&self, offset: u64, len: u64) -> Result<()> {
        let base_runs: Vec<(u64, u64)> = match &self.overlay {
            None => vec![(offset, len)],
            Some(overlay) => overlay
                .runs(offset, len)
                .into_iter()
                .filter(|run| run.state == BlockState::Base)
                .map(|run| (run.offset, run.len))
                .collect(),
        };
        let chunk_size = self.chunk_size();
        for (offset, len) in base_runs.into_iter().filter(|&(_, len)| len > 0) {
            let (first, last) = (offset / chunk_size, (offset + len - 1) / chunk_size);
            self.cache.prefetch(first + 1..=last, false);
            for chunk in first..=last {
                self.cache.get(chunk)?;
            }
        }
        Ok(())
    }

    /// Notes a read of `offset..offset + len`; if it continues a recent read (within a chunk
    /// of where one ended), starts decoding the chunks after it on the decoder threads.
    pub fn read_ahead(&self, offset: u64, len: u64) {
        let end = offset + len;
        let chunk_size = self.chunk_size();
        let sequential = {
            let mut recent = self.recent_ends.lock().unwrap_or_else(|e| e.into_inner());
            let sequential = recent
                .iter()
                .any(|&e| offset <= e.saturating_add(chunk_size) && offset.saturating_add(chunk_size) >= e);
            if recent.len() == RECENT_READS {
                recent.pop_front();
            }
            recent.push_back(end);
            sequential
        };
        if !sequential || self.read_ahead_chunks == 0 || end >= self.size() {
            return;
        }
        let next = end.div_ceil(chunk_size);
        self.cache.prefetch(next..next + self.read_ahead_chunks, true);
    }

    /// The allocation of `offset..offset + len` as runs `(length, state)`, at most `max` of
    /// them (the last run may then end before the range does).
    pub fn extents(&self, offset: u64, len: u64, max: usize) -> Vec<(u64, Allocation)> {
        let mut out: Vec<(u64, Allocation)> = Vec::new();
        let mut push = |run_len: u64, state: Allocation| -> bool {
            if let Some((l, s)) = out.last_mut() {
                if *s == state {
                    *l += run_len;
                    return true;
                }
            }
            if out.len() == max {
                return false;
            }
            out.push((run_len, state));
            true
        };
        let runs = match &self.overlay {
            // The overlay's runs are found block by block; a prefix of the range is a valid
            // answer: at most 128 MiB and `max` runs (each gives at least one extent unless
            // it merges with the one before), so a fragmented 4 GiB query neither lists a
            // million runs nor holds the map's lock over a million blocks.
            Some(overlay) => overlay.runs_at_most(offset, len.min(MAX_OVERLAY_STATUS), max),
            None => vec![crate::overlay::Run {
                offset,
                len,
                state: BlockState::Base,
            }],
        };
        for run in runs {
            let more = match run.state {
                BlockState::Data => push(run.len, Allocation::Data),
                BlockState::Zero => push(run.len, Allocation::Zero),
                BlockState::Base => self.base_extents(run.offset, run.len, &mut push),
            };
            if !more {
                break;
            }
        }
        out
    }

    /// Writes `data` at `offset` into the overlay.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let overlay = self.overlay()?;
        overlay.write(offset, data, &|at, buf| self.fill_from_base(at, buf))?;
        ServeStats::add(&self.stats.bytes_written, data.len() as u64);
        Ok(())
    }

    /// Makes `offset..offset + len` read as zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let overlay = self.overlay()?;
        overlay.write_zeroes(offset, len, &|at, buf| self.fill_from_base(at, buf))?;
        ServeStats::add(&self.stats.bytes_written, len);
        Ok(())
    }

    /// Discards `offset..offset + len` (whole blocks then read as zeros).
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.overlay()?.trim(offset, len)
    }

    /// Makes completed writes durable.
    pub fn flush(&self) -> Result<()> {
        match &self.overlay {
            Some(overlay) => overlay.flush(),
            None => Ok(()),
        }
    }

    fn overlay(&self) -> Result<&Overlay> {
        self.overlay
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "the export is read-only"))
    }

    fn chunk_size(&self) -> u64 {
        self.cache.archive().geometry().chunk_size()
    }

    /// Fills `buf` with the base's bytes at `offset`.
    fn fill_from_base(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut filled = 0;
        let result = self.read_base(offset, buf.len() as u64, &mut |piece| {
            match piece {
                Piece::Data(bytes) => buf[filled..filled + bytes.len()].copy_from_slice(bytes),
                Piece::Zero(n) => buf[filled..filled + n as usize].fill(0),
            }
            filled += match piece {
                Piece::Data(bytes) => bytes.len(),
                Piece::Zero(n) => n as usize,
            };
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(ReadFailure::Export(e)) => Err(e),
            Err(ReadFailure::Client(e)) => Err(Error::io("reading the base", e)),
        }
    }

    /// Reads the base archive's `offset..offset + len`: chunks that are not stored and zero
    /// blocks become zero pieces; the other chunks the range touches are decoded in parallel.
    fn read_base(
        &self,
        offset: u64,
        len: u64,
        emit: &mut dyn FnMut(Piece<'_>) -> io::Result<()>,
    ) -> std::result::Result<(), ReadFailure> {
        if len == 0 {
            return Ok(());
        }
        let chunk_size = self.chunk_size();
        let end = offset + len;
        let (first, last) = (offset / chunk_size, (end - 1) / chunk_size);
        self.cache.prefetch(first + 1..=last, false);
        for chunk in first..=last {
            let chunk_start = chunk * chunk_size;
            let from = offset.max(chunk_start);
            let to = end.min(chunk_start + chunk_size);
            let Some(bytes) = self.cache.get(chunk).map_err(ReadFailure::Export)? else {
                emit(Piece::Zero(to - from)).map_err(ReadFailure::Client)?;
                continue;
            };
            self.emit_chunk(
                chunk,
                &bytes,
                (from - chunk_start) as usize,
                (to - chunk_start) as usize,
                emit,
            )
            .map_err(ReadFailure::Client)?;
        }
        Ok(())
    }

    /// Emits bytes `from..to` of a decoded chunk, zero blocks as zero pieces.
    fn emit_chunk(
        &self,
        chunk: u64,
        bytes: &ChunkBytes,
        from: usize,
        to: usize,
        emit: &mut dyn FnMut(Piece<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let record = self
            .cache
            .archive()
            .record_of(chunk)
            .expect("a decoded chunk is stored");
        let mut pos = from;
        while pos < to {
            let zero = record.is_zero_block(pos / BLOCK_SIZE);
            let mut next = ((pos / BLOCK_SIZE + 1) * BLOCK_SIZE).min(to);
            while next < to && record.is_zero_block(next / BLOCK_SIZE) == zero {
                next = ((next / BLOCK_SIZE + 1) * BLOCK_SIZE).min(to);
            }
            if zero {
                emit(Piece::Zero((next - pos) as u64))?;
            } else {
                emit(Piece::Data(&bytes[pos..next]))?;
            }
            pos = next;
        }
        Ok(())
    }

    /// Pushes the base's allocation over `offset..offset + len`; `false` once `push` is full.
    fn base_extents(&self, offset: u64, len: u64, push: &mut dyn FnMut(u64, Allocation) -> bool) -> bool {
        let chunk_size = self.chunk_size();
        let archive = self.cache.archive();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let chunk = pos / chunk_size;
            let chunk_start = chunk * chunk_size;
            let chunk_end = end.min(chunk_start + chunk_size);
            let Some(record) = archive.record_of(chunk) else {
                if !push(chunk_end - pos, Allocation::Zero) {
                    return false;
                }
                pos = chunk_end;
                continue;
            };
            while pos < chunk_end {
                let block = ((pos - chunk_start) as usize) / BLOCK_SIZE;
                let next = (chunk_start + (block as u64 + 1) * BLOCK_SIZE as u64).min(chunk_end);
                let state = if record.is_zero_block(block) {
                    Allocation::Zero
                } else {
                    Allocation::Data
                };
                if !push(next - pos, state) {
                    return false;
                }
                pos = next;
            }
        }
        true
    }
}
