//! The conversion pipeline: chunks of the virtual disk are read, zero-scanned and compressed in
//! parallel on the rayon pool, in windows of a bounded number of chunks, while a writer thread
//! appends the previous window to the archive in order.
//!
//! Two producers feed it: [`encode_source`] (`source.rs`) walks a random-access [`DiskSource`],
//! asking it where data is so that holes cost nothing; [`encode_stream`] (`stream.rs`) takes a
//! byte stream (a decompressor, stdin) that a reader thread cuts into chunk buffers, recycled to
//! bound memory.
//! Memory in flight is about two windows of chunks plus one chunk of scratch per worker.
//!
//! [`encode`] is the entry point the operations use: it takes an opened input's [`Body`] and
//! picks the producer. [`with_pool`] runs work on a dedicated pool of a given thread count (or on
//! the shared one); every parallel operation (convert, extract, verify) goes through it.

mod source;
mod stream;

pub use source::{encode_source, DataChunks};
pub use stream::encode_stream;

use std::cell::RefCell;
use std::io::Write;
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;

use rayon::prelude::*;

use crate::archive::chunk::{ChunkEncoder, EncodedChunk};
use crate::archive::format::Geometry;
use crate::archive::writer::{ArchiveSummary, ArchiveWriter};
use crate::control::Control;
use crate::error::{Error, ErrorKind, Result};
use crate::input::blockmap::check_virtual_size;
use crate::input::Body;

/// How chunks are encoded.
#[derive(Debug, Clone, Copy)]
pub struct EncodeSettings {
    /// Chunk geometry of the archive.
    pub geometry: Geometry,
    /// zstd level.
    pub level: i32,
    /// Chunks per window: the unit of parallel work and of memory in flight.
    pub window: usize,
}

impl EncodeSettings {
    /// Settings with a window sized for the current rayon pool.
    pub fn new(geometry: Geometry, level: i32) -> Self {
        let window = (rayon::current_num_threads() * 16).clamp(32, 64);
        EncodeSettings {
            geometry,
            level,
            window,
        }
    }
}

/// The limits an archive is written under.
#[derive(Debug, Clone, Copy)]
pub struct EncodeLimits {
    /// Largest archive allowed, counting every byte; the writer stops as soon as it would pass.
    pub max_compressed_size: u64,
    /// Largest virtual disk accepted: checked up front for a random-access source, while
    /// decoding for a stream.
    pub max_virtual_size: u64,
}

/// Encodes an opened input's `body` into an archive written to `out`; returns `out` and what
/// was written.
pub fn encode<W: Write + Send>(
    body: Body,
    out: W,
    settings: EncodeSettings,
    limits: EncodeLimits,
    control: &Control,
) -> Result<(W, ArchiveSummary)> {
    let geometry = settings.geometry;
    match body {
        Body::Source(source) => {
            let virtual_size = source.virtual_size();
            check_virtual_size(virtual_size, limits.max_virtual_size)?;
            let writer = ArchiveWriter::new(out, geometry, Some(virtual_size), limits.max_compressed_size)?;
            let writer = encode_source(source.as_ref(), writer, settings, control)?;
            writer.finish(virtual_size)
        }
        Body::Stream(reader) => {
            let writer = ArchiveWriter::new(out, geometry, None, limits.max_compressed_size)?;
            let (writer, virtual_size) =
                encode_stream(reader, writer, settings, control, limits.max_virtual_size)?;
            writer.finish(virtual_size)
        }
    }
}

/// Runs `f` on a dedicated pool of `threads` workers, or on the shared rayon pool (one thread
/// per core) when `threads` is `None`.
pub fn with_pool<T: Send>(threads: Option<usize>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    match threads {
        None => f(),
        Some(0) => Err(Error::invalid_argument("the thread count must be at least 1")),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::Io, format!("cannot start {n} worker threads")).with_source(e)
            })?
            .install(f),
    }
}

/// Frame buffers the writer thread hands back once it has written them, for the workers to
/// compress into again. Without it every chunk's frame is a fresh allocation of about a chunk,
/// which the allocator keeps returning to the kernel and faulting back in, zeroed, page by page.
pub(crate) struct FramePool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Buffers kept at most: what two windows in flight need.
    limit: usize,
}

impl FramePool {
    pub(crate) fn new(settings: &EncodeSettings) -> Self {
        FramePool {
            free: Mutex::new(Vec::new()),
            limit: settings.window * 2,
        }
    }

    /// A buffer to compress into (empty if none is free).
    pub(crate) fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .map(|mut free| free.pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Keeps the frames of written chunks, up to the limit.
    fn give_back(&self, chunks: Vec<EncodedChunk>) {
        if let Ok(mut free) = self.free.lock() {
            let room = self.limit.saturating_sub(free.len());
            free.extend(chunks.into_iter().take(room).map(|chunk| chunk.frame));
        }
    }
}

thread_local! {
    /// Each worker's encoder (one zstd context, reused) and read buffer.
    static WORKER: RefCell<Option<(ChunkEncoder, Vec<u8>)>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's encoder at `level` and its scratch buffer. `f` must not start
/// rayon work (it would re-enter the same thread-local).
pub(crate) fn with_worker<T>(
    level: i32,
    f: impl FnOnce(&mut ChunkEncoder, &mut Vec<u8>) -> Result<T>,
) -> Result<T> {
    WORKER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(encoder, _)| encoder.level()) != Some(level) {
            *slot = Some((ChunkEncoder::new(level)?, Vec::new()));
        }
        let (encoder, scratch) = slot.as_mut().expect("worker initialised above");
        f(encoder, scratch)
    })
}

/// Drives windows from `produce` through `encode` on the rayon pool and hands each encoded
/// window to a writer thread, which appends it in order while the next window is encoded.
pub(crate) fn run<W, J, P, E>(
    mut writer: ArchiveWriter<W>,
    settings: EncodeSettings,
    control: &Control,
    total: Option<u64>,
    frames: &FramePool,
    mut produce: P,
    encode: E,
) -> Result<ArchiveWriter<W>>
where
    W: Write + Send,
    J: Send,
    P: FnMut() -> Result<Option<Vec<J>>>,
    E: Fn(J) -> Result<Option<EncodedChunk>> + Sync + Send,
{
    let chunk_size = settings.geometry.chunk_size();
    let (tx, rx) = sync_channel::<Vec<EncodedChunk>>(1);
    std::thread::scope(|scope| {
        let writer_thread = scope.spawn(move || -> Result<ArchiveWriter<W>> {
            for window in rx {
                for chunk in &window {
                    writer.add(chunk)?;
                }
                if let Some(last) = window.last() {
                    let done = (last.chunk + 1).saturating_mul(chunk_size);
                    control.report(total.map_or(done, |t| done.min(t)), total, writer.disk_size());
                }
                frames.give_back(window);
            }
            Ok(writer)
        });
        let mut failure = None;
        loop {
            let window = match produce() {
                Ok(Some(window)) => window,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let encoded: Result<Vec<Option<EncodedChunk>>> = window.into_par_iter().map(&encode).collect();
            match encoded {
                Ok(chunks) => {
                    if tx.send(chunks.into_iter().flatten().collect()).is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let writer = writer_thread.join().expect("archive writer thread panicked")?;
        match failure {
            Some(e) => Err(e),
            None => {
                if let Some(t) = total {
                    control.report(t, total, writer.disk_size());
                }
                Ok(writer)
            }
        }
    })
}
