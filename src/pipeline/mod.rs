//! The conversion pipeline: chunks of the virtual disk are read, zero-scanned and compressed in
//! parallel on the rayon pool, each worker taking the next chunk as soon as it is free, while a
//! writer thread appends the encoded chunks to the archive in order (`run`'s doc says how
//! memory stays bounded without a barrier between windows).
//!
//! Two producers feed it: [`encode_source`] (`source.rs`) walks a random-access
//! [`DiskSource`](crate::input::DiskSource), asking it where data is so that holes cost
//! nothing; [`encode_stream`] (`stream.rs`) takes a byte stream (a decompressor, stdin) that a
//! reader thread cuts into chunk buffers, recycled to bound memory. Memory in flight is about
//! two windows of chunks plus one chunk of scratch per worker.
//!
//! Each job is a span ([`span`]: a chunk, or the chunks of one 1 MiB leaf when chunks are
//! smaller): the worker encodes its chunks and hashes its leaves, and the writer thread feeds
//! the leaf hashes, in order, to the image digest ([`TreeHasher`]) that the archive's footer
//! records. The digest costs no extra pass over the data at the default chunk size, where the
//! chunk's SHA-256 is its leaf's.
//!
//! [`digest`] hashes a disk the same way without writing an archive (`imgpack digest`).
//!
//! [`encode`] is the entry point the operations use: it takes an opened input's [`Body`] and
//! picks the producer. [`with_pool`] runs work on a dedicated pool of a given thread count (or on
//! the shared one); every parallel operation (convert, extract, verify) goes through it.

pub mod digest;
pub mod hook;
mod source;
mod span;
mod stream;

pub use hook::{ChunkLookup, DedupHooks, FrameStore};
pub use source::{encode_source, DataChunks};
pub use stream::encode_stream;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Condvar, Mutex, MutexGuard};

use rayon::prelude::*;

use crate::archive::chunk::ChunkEncoder;
use crate::archive::digest::TreeHasher;
use crate::archive::format::Geometry;
use crate::archive::writer::{ArchiveSummary, ArchiveWriter};
use crate::control::Control;
use crate::error::{Error, ErrorKind, Result};
use crate::input::limits::check_virtual_size;
use crate::input::Body;
pub(crate) use span::{encode_span, span_size, EncodedSpan};

/// How chunks are encoded.
#[derive(Debug, Clone, Copy)]
pub struct EncodeSettings {
    /// Chunk geometry of the archive.
    pub geometry: Geometry,
    /// zstd level.
    pub level: i32,
    /// Chunks per window: how many the producer hands out at once; at most two windows are
    /// between being handed out and written, which bounds memory in flight.
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
    encode_hooked(body, out, settings, limits, control, None)
}

/// [`encode`] with the deduplication hook: with `hooks`, chunks the lookup finds are not
/// compressed, every frame goes to `hooks.frames` and `out` receives only the header, the
/// index and the footer (see [`hook`]).
pub fn encode_hooked<W: Write + Send>(
    body: Body,
    out: W,
    settings: EncodeSettings,
    limits: EncodeLimits,
    control: &Control,
    hooks: Option<&DedupHooks>,
) -> Result<(W, ArchiveSummary)> {
    let geometry = settings.geometry;
    let prepare = |writer: ArchiveWriter<W>| match hooks {
        Some(_) => writer.frames_elsewhere(),
        None => writer,
    };
    match body {
        Body::Source(source) => {
            let virtual_size = source.virtual_size();
            check_virtual_size(virtual_size, limits.max_virtual_size)?;
            let writer = ArchiveWriter::new(out, geometry, Some(virtual_size), limits.max_compressed_size)?;
            let (writer, tree) = encode_source(source.as_ref(), prepare(writer), settings, control, hooks)?;
            writer.finish(virtual_size, tree.finish(virtual_size)?)
        }
        Body::Stream(reader) => {
            let writer = ArchiveWriter::new(out, geometry, None, limits.max_compressed_size)?;
            let (writer, tree, virtual_size) = encode_stream(
                reader,
                prepare(writer),
                settings,
                control,
                limits.max_virtual_size,
                hooks,
            )?;
            writer.finish(virtual_size, tree.finish(virtual_size)?)
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
    /// The deduplication hook's frame store, which takes each chunk before its buffer
    /// comes back (see [`hook`]).
    store: Option<std::sync::Arc<dyn FrameStore>>,
}

impl FramePool {
    pub(crate) fn new(settings: &EncodeSettings) -> Self {
        FramePool {
            free: Mutex::new(Vec::new()),
            limit: settings.window * 2,
            store: None,
        }
    }

    /// The pool, handing each written chunk to `hooks`' frame store first.
    pub(crate) fn with_hooks(mut self, hooks: Option<&DedupHooks>) -> Self {
        self.store = hooks.map(|h| std::sync::Arc::clone(&h.frames));
        self
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

    /// Keeps the frame buffer of a written chunk, up to the limit.
    fn give_back(&self, frame: Vec<u8>) {
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.limit {
                free.push(frame);
            }
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

/// Drives jobs from `produce` (which hands them out a window at a time) through `encode` on
/// the rayon pool, with no barrier between windows: each worker takes the next job as soon as it
/// is free, and a writer thread appends the encoded chunks in job order, holding back the few
/// that finish early, and adds their leaf hashes to the image digest it returns. At most two
/// windows of jobs are between being handed out and written ([`Gate`]), which bounds memory as
/// the windowed design did.
pub(crate) fn run<W, J, P, E>(
    mut writer: ArchiveWriter<W>,
    settings: EncodeSettings,
    control: &Control,
    total: Option<u64>,
    frames: &FramePool,
    produce: P,
    encode: E,
) -> Result<(ArchiveWriter<W>, TreeHasher)>
where
    W: Write + Send,
    J: Send,
    P: FnMut() -> Result<Option<Vec<J>>> + Send,
    E: Fn(J) -> Result<EncodedSpan> + Sync + Send,
{
    let chunk_size = settings.geometry.chunk_size();
    let gate = Gate::new(settings.window as u64 * 2);
    let produce_failure = Mutex::new(None);
    let (tx, rx) = channel::<(u64, Result<EncodedSpan>)>();
    std::thread::scope(|scope| {
        let gate = &gate;
        let writer_thread = scope.spawn(move || -> Result<(ArchiveWriter<W>, TreeHasher)> {
            let mut tree = TreeHasher::new();
            let result = write_in_order(
                &mut writer,
                &mut tree,
                rx,
                gate,
                frames,
                |writer, last_chunk| {
                    let done = (last_chunk + 1).saturating_mul(chunk_size);
                    control.report(total.map_or(done, |t| done.min(t)), total, writer.disk_size());
                },
                settings.window as u64,
            );
            gate.stop(); // whatever happened, nobody waits for this writer any more
            result.map(|()| (writer, tree))
        });
        let jobs = Jobs {
            produce,
            pending: Vec::new().into_iter(),
            next: 0,
            gate,
            failure: &produce_failure,
        };
        jobs.par_bridge().for_each_with(tx, |tx, (seq, job)| {
            // After a failure elsewhere, the remaining jobs are skipped, not encoded.
            let encoded = if gate.is_stopped() {
                Ok(EncodedSpan::default())
            } else {
                encode(job)
            };
            if encoded.is_err() {
                gate.stop();
            }
            let _ = tx.send((seq, encoded)); // the writer may have stopped: its error wins
        });
        let (writer, tree) = writer_thread.join().expect("archive writer thread panicked")?;
        if let Some(e) = produce_failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        if let Some(t) = total {
            control.report(t, total, writer.disk_size());
        }
        Ok((writer, tree))
    })
}

/// The writer thread's loop: appends encoded chunks in job order, holding back those that
/// arrive early, adds their leaf hashes to `tree`, and returns each written frame to `frames`.
/// Calls `progress` every `progress_every` jobs. Stops at the first error, in job order.
fn write_in_order<W: Write>(
    writer: &mut ArchiveWriter<W>,
    tree: &mut TreeHasher,
    encoded: Receiver<(u64, Result<EncodedSpan>)>,
    gate: &Gate,
    frames: &FramePool,
    mut progress: impl FnMut(&ArchiveWriter<W>, u64),
    progress_every: u64,
) -> Result<()> {
    let mut early = BTreeMap::new();
    let mut next = 0u64;
    for (seq, result) in encoded {
        early.insert(seq, result);
        while let Some(result) = early.remove(&next) {
            next += 1;
            let span = result?;
            for (leaf, hash) in &span.leaves {
                tree.add_leaf(*leaf, hash)?;
            }
            let last_chunk = span.chunks.last().map(|c| c.chunk);
            for chunk in span.chunks {
                writer.add(&chunk)?;
                if let Some(store) = &frames.store {
                    store.store(&chunk)?;
                }
                frames.give_back(chunk.frame);
            }
            if let Some(last_chunk) = last_chunk {
                if next.is_multiple_of(progress_every.max(1)) {
                    progress(writer, last_chunk);
                }
            }
            gate.advance(next);
        }
    }
    Ok(())
}

/// How far handing out jobs may run ahead of writing them: job `n` waits until fewer than
/// `limit` jobs before it are unwritten. Stopping (an error, or the writer gone) releases every
/// waiter.
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
    stopped: AtomicBool,
    limit: u64,
}

struct GateState {
    written: u64,
    stopped: bool,
}

impl Gate {
    fn new(limit: u64) -> Self {
        Gate {
            state: Mutex::new(GateState {
                written: 0,
                stopped: false,
            }),
            changed: Condvar::new(),
            stopped: AtomicBool::new(false),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until job `seq` may be handed out; `false` once the pipeline has stopped.
    fn wait_for_room(&self, seq: u64) -> bool {
        let mut state = self.lock();
        while !state.stopped && seq >= state.written.saturating_add(self.limit) {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        !state.stopped
    }

    /// Records that the first `written` jobs are written.
    fn advance(&self, written: u64) {
        self.lock().written = written;
        self.changed.notify_all();
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// The jobs of a run, numbered in order, drawn a window at a time from `produce` by whichever
/// worker is free (through `par_bridge`, which serialises calls to `next`).
struct Jobs<'a, J, P> {
    produce: P,
    pending: std::vec::IntoIter<J>,
    next: u64,
    gate: &'a Gate,
    /// Where an error of `produce` goes (the iterator can only end).
    failure: &'a Mutex<Option<Error>>,
}

impl<J, P> Iterator for Jobs<'_, J, P>
where
    P: FnMut() -> Result<Option<Vec<J>>>,
{
    type Item = (u64, J);

    fn next(&mut self) -> Option<(u64, J)> {
        if !self.gate.wait_for_room(self.next) {
            return None;
        }
        let job = match self.pending.next() {
            Some(job) => job,
            None => match (self.produce)() {
                Ok(Some(window)) => {
                    self.pending = window.into_iter();
                    self.pending.next()?
                }
                Ok(None) => return None,
                Err(e) => {
                    *self
                        .failure
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(e);
                    self.gate.stop();
                    return None;
                }
            },
        };
        let seq = self.next;
        self.next += 1;
        Some((seq, job))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use super::*;

    fn settings(window: usize) -> EncodeSettings {
        EncodeSettings {
            geometry: Geometry::for_chunk_size(64 << 10).unwrap(),
            level: 1,
            window,
        }
    }

    /// A span of one chunk and no leaves (these tests are about order, not digests).
    fn span_of(chunk: Option<crate::archive::chunk::EncodedChunk>) -> EncodedSpan {
        EncodedSpan {
            chunks: chunk.into_iter().collect(),
            leaves: Vec::new(),
        }
    }

    /// Chunk `n` of a test disk: distinct, compressible, never all zero.
    fn chunk_bytes(n: u64) -> Vec<u8> {
        (0..64usize << 10)
            .map(|i| (i as u64 / 512 + n) as u8 | 1)
            .collect()
    }

    /// Runs `chunks` chunks through [`run`] with `encode_delay(n)` ms of sleep in chunk `n`.
    /// Returns the archive and the highest chunk handed out while chunk `slow` was unfinished.
    fn archive_of(
        chunks: u64,
        window: usize,
        slow: u64,
        encode_delay: impl Fn(u64) -> u64 + Sync,
    ) -> (Vec<u8>, u64) {
        let settings = settings(window);
        let writer = ArchiveWriter::new(Vec::new(), settings.geometry, None, u64::MAX).unwrap();
        let frames = FramePool::new(&settings);
        let control = Control::default();
        let slow_done = AtomicBool::new(false);
        let highest_while_slow = AtomicU64::new(0);
        let mut next = 0u64;
        let produce = || -> Result<Option<Vec<u64>>> {
            let window: Vec<u64> = (next..chunks.min(next + settings.window as u64)).collect();
            next += window.len() as u64;
            Ok((!window.is_empty()).then_some(window))
        };
        let encode = |n: u64| -> Result<EncodedSpan> {
            if !slow_done.load(Ordering::SeqCst) {
                highest_while_slow.fetch_max(n, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(encode_delay(n)));
            let encoded = ChunkEncoder::new(settings.level)?.encode(settings.geometry, n, &chunk_bytes(n));
            if n == slow {
                slow_done.store(true, Ordering::SeqCst);
            }
            Ok(span_of(encoded?))
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let result = pool.install(|| run(writer, settings, &control, None, &frames, produce, encode));
        let Ok((writer, tree)) = result else {
            panic!("the run failed");
        };
        let size = chunks * (64 << 10);
        let (bytes, _) = writer.finish(size, tree.finish(size).unwrap()).unwrap();
        (bytes, highest_while_slow.load(Ordering::SeqCst))
    }

    #[test]
    fn chunks_that_finish_out_of_order_are_written_in_order() {
        let in_order = {
            let settings = settings(4);
            let mut writer = ArchiveWriter::new(Vec::new(), settings.geometry, None, u64::MAX).unwrap();
            let mut encoder = ChunkEncoder::new(1).unwrap();
            for n in 0..24 {
                let chunk = encoder
                    .encode(settings.geometry, n, &chunk_bytes(n))
                    .unwrap()
                    .unwrap();
                writer.add(&chunk).unwrap();
            }
            let size = 24 * (64 << 10);
            writer
                .finish(size, TreeHasher::new().finish(size).unwrap())
                .unwrap()
                .0
        };
        // Even chunks are slow, so odd ones overtake them.
        let (scrambled, _) = archive_of(24, 4, 0, |n| if n % 2 == 0 { 5 } else { 0 });
        assert_eq!(scrambled, in_order);
    }

    #[test]
    fn hand_out_never_runs_more_than_two_windows_ahead_of_writing() {
        // Chunk 3 is slow: without the gate the other workers would run on through all 200.
        // With windows of 4, chunk n is handed out only once n < written + 8 <= 3 + 8.
        let (_, highest) = archive_of(200, 4, 3, |n| if n == 3 { 300 } else { 1 });
        assert!(
            highest <= 10,
            "chunk {highest} was handed out while chunk 3 was unwritten"
        );
    }

    #[test]
    fn an_encode_error_stops_the_run_and_is_returned() {
        let settings = settings(4);
        let writer = ArchiveWriter::new(Vec::new(), settings.geometry, None, u64::MAX).unwrap();
        let frames = FramePool::new(&settings);
        let mut next = 0u64;
        let produce = || -> Result<Option<Vec<u64>>> {
            next += 4;
            Ok(Some((next - 4..next).collect())) // endless: only the error can stop it
        };
        let encode = |n: u64| -> Result<EncodedSpan> {
            if n == 50 {
                return Err(Error::corrupt(n, "chunk 50 is bad"));
            }
            Ok(span_of(ChunkEncoder::new(1)?.encode(
                settings.geometry,
                n,
                &chunk_bytes(n),
            )?))
        };
        let result = run(
            writer,
            settings,
            &Control::default(),
            None,
            &frames,
            produce,
            encode,
        );
        let Err(err) = result else {
            panic!("an endless run with a bad chunk must fail");
        };
        assert_eq!(err.offset(), Some(50));
    }
}
