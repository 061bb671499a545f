//! The conversion pipeline: chunks of the virtual disk are read, zero-scanned and compressed in
//! parallel on the rayon pool, in windows of a bounded number of chunks, while a writer thread
//! appends the previous window to the archive in order.
//!
//! Two producers feed it: [`encode_source`] walks a random-access [`DiskSource`], asking it
//! where data is so that holes cost nothing; [`encode_stream`] takes a byte stream (a
//! decompressor, stdin) that a reader thread cuts into chunk buffers, recycled to bound memory.
//! Memory in flight is about two windows of chunks plus one chunk of scratch per worker.
//!
//! [`encode`] is the entry point the operations use: it takes an opened input's [`Body`] and
//! picks the producer. [`with_pool`] runs work on a dedicated pool of a given thread count (or on
//! the shared one); every parallel operation (convert, extract, verify) goes through it.

use std::cell::RefCell;
use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::archive::chunk::{ChunkEncoder, EncodedChunk};
use crate::archive::format::Geometry;
use crate::archive::writer::{ArchiveSummary, ArchiveWriter};
use crate::control::Control;
use crate::error::{Error, ErrorKind, Result};
use crate::input::blockmap::check_virtual_size;
use crate::input::{Body, DiskSource};
use crate::units::format_size;

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
struct FramePool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Buffers kept at most: what two windows in flight need.
    limit: usize,
}

impl FramePool {
    fn new(settings: &EncodeSettings) -> Self {
        FramePool {
            free: Mutex::new(Vec::new()),
            limit: settings.window * 2,
        }
    }

    /// A buffer to compress into (empty if none is free).
    fn take(&self) -> Vec<u8> {
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
fn with_worker<T>(level: i32, f: impl FnOnce(&mut ChunkEncoder, &mut Vec<u8>) -> Result<T>) -> Result<T> {
    WORKER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(encoder, _)| encoder.level()) != Some(level) {
            *slot = Some((ChunkEncoder::new(level)?, Vec::new()));
        }
        let (encoder, scratch) = slot.as_mut().expect("worker initialised above");
        f(encoder, scratch)
    })
}

/// Encodes every chunk of `source` that may hold data into `writer`.
pub fn encode_source<W: Write + Send>(
    source: &dyn DiskSource,
    writer: ArchiveWriter<W>,
    settings: EncodeSettings,
    control: &Control,
) -> Result<ArchiveWriter<W>> {
    let virtual_size = source.virtual_size();
    let geometry = settings.geometry;
    let chunk_size = geometry.chunk_size();
    let mut windows = DataChunks::new(source, chunk_size);
    let frames = FramePool::new(&settings);
    let produce = || -> Result<Option<Vec<u64>>> {
        control.check()?;
        windows.next_window(settings.window)
    };
    let encode = |chunk: u64| -> Result<Option<EncodedChunk>> {
        control.check()?;
        with_worker(settings.level, |encoder, scratch| {
            let len = geometry.chunk_len(chunk, virtual_size);
            let offset = chunk * chunk_size;
            let data = source.read(offset, len, scratch)?;
            let encoded = encoder.encode_into(geometry, chunk, data, frames.take())?;
            source.confirm_read(offset, len)?;
            Ok(encoded)
        })
    };
    run(
        writer,
        settings,
        control,
        Some(virtual_size),
        &frames,
        produce,
        encode,
    )
}

/// Walks the chunks of a [`DiskSource`] that may hold data, skipping the rest without work.
pub struct DataChunks<'a> {
    source: &'a dyn DiskSource,
    chunk_size: u64,
    position: u64,
}

impl<'a> DataChunks<'a> {
    /// Starts at the beginning of `source`, in chunks of `chunk_size`.
    pub fn new(source: &'a dyn DiskSource, chunk_size: u64) -> Self {
        DataChunks {
            source,
            chunk_size,
            position: 0,
        }
    }

    /// The next (up to) `max` chunk numbers that may hold data, or `None` at the end.
    pub fn next_window(&mut self, max: usize) -> Result<Option<Vec<u64>>> {
        let virtual_size = self.source.virtual_size();
        let mut window = Vec::with_capacity(max);
        while window.len() < max && self.position < virtual_size {
            match self.source.next_data(self.position)? {
                Some(offset) if offset < virtual_size => {
                    let chunk = offset.max(self.position) / self.chunk_size;
                    window.push(chunk);
                    self.position = (chunk + 1).saturating_mul(self.chunk_size);
                }
                _ => self.position = virtual_size,
            }
        }
        Ok((!window.is_empty()).then_some(window))
    }
}

/// A chunk number and the chunk's bytes, cut from a stream.
type StreamChunk = (u64, Vec<u8>);

/// Encodes a byte stream into `writer`, refusing it once it exceeds `max_virtual_size`.
/// Returns the writer and the stream's length (the virtual size).
pub fn encode_stream<W: Write + Send, R: Read + Send>(
    reader: R,
    writer: ArchiveWriter<W>,
    settings: EncodeSettings,
    control: &Control,
    max_virtual_size: u64,
) -> Result<(ArchiveWriter<W>, u64)> {
    let geometry = settings.geometry;
    let chunk_size = geometry.chunk_size() as usize;
    let buffers = settings.window * 2;
    let (full_tx, full_rx) = sync_channel::<Result<StreamChunk>>(buffers);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(buffers + settings.window);
    let frames = FramePool::new(&settings);
    std::thread::scope(|scope| {
        let reader_thread = scope
            .spawn(move || read_chunks(reader, chunk_size, max_virtual_size, &full_tx, &empty_rx, control));
        let mut finished = false;
        let produce = || -> Result<Option<Vec<StreamChunk>>> {
            control.check()?;
            let mut window = Vec::with_capacity(settings.window);
            while !finished && window.len() < settings.window {
                // Wait for the first buffer, then take what is ready without waiting, so that
                // compression keeps pace with a slow decoder instead of waiting for a full window.
                let next = if window.is_empty() {
                    full_rx.recv().ok()
                } else {
                    full_rx.try_recv().ok()
                };
                match next {
                    Some(item) => window.push(item?),
                    None if window.is_empty() => finished = true,
                    None => break,
                }
            }
            Ok((!window.is_empty()).then_some(window))
        };
        let encode = |(chunk, buffer): (u64, Vec<u8>)| -> Result<Option<EncodedChunk>> {
            control.check()?;
            let encoded = with_worker(settings.level, |encoder, _| {
                encoder.encode_into(geometry, chunk, &buffer, frames.take())
            });
            let _ = empty_tx.send(buffer);
            encoded
        };
        let result = run(writer, settings, control, None, &frames, produce, encode);
        drop(full_rx); // unblocks the reader thread if the pipeline stopped early
        let length = reader_thread.join().expect("stream reader thread panicked");
        let writer = result?;
        Ok((writer, length?))
    })
}

/// The reader thread of [`encode_stream`]: fills chunk buffers from `reader` and sends them
/// in order; returns the stream's total length.
fn read_chunks<R: Read>(
    mut reader: R,
    chunk_size: usize,
    max_virtual_size: u64,
    full: &SyncSender<Result<StreamChunk>>,
    empty: &Receiver<Vec<u8>>,
    control: &Control,
) -> Result<u64> {
    let mut total = 0u64;
    for chunk in 0u64.. {
        let mut buffer = empty.try_recv().unwrap_or_default();
        buffer.resize(chunk_size, 0);
        let filled = match fill(&mut reader, &mut buffer) {
            Ok(n) => n,
            Err(e) => {
                let _ = full.send(Err(e.at_least(total)));
                return Ok(total);
            }
        };
        if filled == 0 {
            break;
        }
        total += filled as u64;
        if total > max_virtual_size {
            let err = Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the image's virtual size exceeds the limit of {} ({max_virtual_size} bytes); stopped decoding there",
                    format_size(max_virtual_size)
                ),
            );
            let _ = full.send(Err(err));
            return Ok(total);
        }
        buffer.truncate(filled);
        if control.check().is_err() || full.send(Ok((chunk, buffer))).is_err() {
            break;
        }
        if filled < chunk_size {
            break;
        }
    }
    Ok(total)
}

trait AtLeast {
    fn at_least(self, offset: u64) -> Error;
}

impl AtLeast for Error {
    /// Errors from a stream without their own position are placed at the uncompressed offset.
    fn at_least(self, offset: u64) -> Error {
        if self.offset().is_some() {
            self
        } else {
            let message = format!("{} (after {offset} bytes of decoded data)", self.message());
            let kind = self.kind();
            Error::new(kind, message).with_source(self)
        }
    }
}

/// Reads until `buffer` is full or the stream ends; returns the bytes read.
fn fill<R: Read>(reader: &mut R, buffer: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == IoErrorKind::Interrupted => continue,
            Err(e) => return Err(stream_error(e)),
        }
    }
    Ok(filled)
}

/// Decoders report damage as `io::Error`s wrapping an imgpack [`Error`]; unwrap those so the
/// kind and offset survive.
fn stream_error(e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        let inner = e.into_inner().expect("checked above");
        return *inner.downcast::<Error>().expect("checked above");
    }
    match e.kind() {
        IoErrorKind::InvalidData | IoErrorKind::UnexpectedEof => {
            Error::new(ErrorKind::Corrupt, format!("compressed stream is damaged: {e}")).with_source(e)
        }
        _ => Error::io("reading the input stream", e),
    }
}

/// Drives windows from `produce` through `encode` on the rayon pool and hands each encoded
/// window to a writer thread, which appends it in order while the next window is encoded.
fn run<W, J, P, E>(
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
