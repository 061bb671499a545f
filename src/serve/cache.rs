//! [`ChunkCache`]: the archive's chunks decoded on demand, kept in a bounded LRU cache, with
//! read-ahead on a small pool of decoder threads.
//!
//! A chunk is decoded at most once at a time: a second reader of a chunk being decoded waits
//! for it instead of decoding it again. Every decode checks the chunk's crc (the archive
//! reader's `read_payload_checked`, and the chunk's SHA-256 too with [`ChunkCheck::Full`])
//! before a byte of it is handed out; a failed decode is not cached,
//! so each request for a damaged chunk fails on its own and the rest keep being served.
//!
//! Memory: the cache holds at most `capacity` bytes of decoded chunks; at most `threads`
//! chunks are decoded at once (connection threads and read-ahead share the permits), each
//! needing its chunk plus its compressed frame; spare buffers kept for reuse total at most
//! an eighth of the capacity (none when a chunk is larger than that). So memory is about
//! `capacity x 9/8 + threads x (chunk + frame)`, plus, briefly, a chunk evicted while a
//! connection still copies a reply out of it. [`serve`](super::serve) raises a cache that
//! cannot hold [`MIN_CACHED_CHUNKS`] chunks, so concurrent readers do not evict each other's
//! chunks before using them.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::stats::ServeStats;
use crate::archive::chunk::{expand_payload, ChunkDecoder};
use crate::archive::reader::{ArchiveReader, ChunkCheck};
use crate::error::{Error, ErrorKind, Result};
use crate::read_at::ReadAt;

/// The default cache size (64 MiB).
pub const DEFAULT_CACHE_SIZE: u64 = 64 << 20;

/// A decoded chunk: its logical bytes (zero blocks filled in).
pub type ChunkBytes = Arc<ChunkBuffer>;

thread_local! {
    /// Each decoding thread's zstd context and frame buffer, reused across chunks.
    static DECODER: RefCell<Option<(ChunkDecoder, Vec<u8>)>> = const { RefCell::new(None) };
}

/// Chunks the cache holds at least (a smaller cache is raised to this).
pub const MIN_CACHED_CHUNKS: u64 = 2;

/// Buffers kept for reuse once no chunk holds them, within a byte budget.
pub struct Spares {
    buffers: Vec<Vec<u8>>,
    bytes: u64,
    limit: u64,
}

impl Spares {
    fn new(limit: u64) -> Self {
        Spares {
            buffers: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    fn take(&mut self) -> Vec<u8> {
        let buffer = self.buffers.pop().unwrap_or_default();
        self.bytes -= buffer.capacity() as u64;
        buffer
    }

    /// Keeps `buffer` if it fits the budget; otherwise it is freed.
    fn give(&mut self, buffer: Vec<u8>) {
        let size = buffer.capacity() as u64;
        if size > 0 && self.bytes + size <= self.limit {
            self.bytes += size;
            self.buffers.push(buffer);
        }
    }
}

/// Counts the decodes running at once (connection threads and read-ahead alike).
struct Permits {
    free: Mutex<usize>,
    released: Condvar,
}

impl Permits {
    fn acquire(&self) -> PermitGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.released.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        PermitGuard(self)
    }
}

struct PermitGuard<'a>(&'a Permits);

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.released.notify_one();
    }
}

/// A decoded chunk's buffer; when the last reader lets go of it, it goes back to the spares
/// (within their byte budget) for the next decode. Chunks are large and short-lived (evicted as
/// clients move on): allocating each anew left the allocator's arenas fragmented, and a
/// whole-disk copy grew the process ~50% past the cache size; anonymous maps per chunk fixed
/// that but serialised the decoders on the kernel's map lock (page faults against
/// map/unmap). Reuse gives both: no churn, and no faults.
pub struct ChunkBuffer {
    bytes: Vec<u8>,
    spares: Arc<Mutex<Spares>>,
}

impl std::ops::Deref for ChunkBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for ChunkBuffer {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.bytes);
        self.spares.lock().unwrap_or_else(|e| e.into_inner()).give(buffer);
    }
}

/// Decoded chunks of one archive, shared by every connection.
pub struct ChunkCache<R: ReadAt> {
    archive: Arc<ArchiveReader<R>>,
    capacity: u64,
    check: ChunkCheck,
    state: Mutex<CacheState>,
    decoded: Condvar,
    pool: rayon::ThreadPool,
    stats: Arc<ServeStats>,
    spares: Arc<Mutex<Spares>>,
    permits: Permits,
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<u64, (ChunkBytes, u64)>,
    by_age: BTreeMap<u64, u64>,
    tick: u64,
    used: u64,
    decoding: HashSet<u64>,
    queued: usize,
}

impl<R: ReadAt + 'static> ChunkCache<R> {
    /// A cache of at most `capacity` bytes over `archive`, with `threads` read-ahead decoders,
    /// checking each chunk as `check` says.
    pub fn new(
        archive: ArchiveReader<R>,
        capacity: u64,
        threads: usize,
        check: ChunkCheck,
        stats: Arc<ServeStats>,
    ) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("imgpack-decode-{i}"))
            .build()
            .map_err(|e| Error::new(ErrorKind::Io, "cannot start the decoder threads").with_source(e))?;
        Ok(ChunkCache {
            archive: Arc::new(archive),
            capacity,
            check,
            state: Mutex::new(CacheState::default()),
            decoded: Condvar::new(),
            pool,
            stats,
            spares: Arc::new(Mutex::new(Spares::new(capacity / 8))),
            permits: Permits {
                free: Mutex::new(threads.max(1)),
                released: Condvar::new(),
            },
        })
    }

    /// The archive served.
    pub fn archive(&self) -> &ArchiveReader<R> {
        &self.archive
    }

    /// Chunk `chunk`'s bytes, from the cache or decoded now; `None` if it is not stored (it
    /// reads as zeros). An error if the chunk fails its checks.
    pub fn get(&self, chunk: u64) -> Result<Option<ChunkBytes>> {
        if self.archive.record_of(chunk).is_none() {
            return Ok(None);
        }
        let mut state = self.lock();
        let mut counted = false;
        loop {
            if let Some(bytes) = state.touch(chunk) {
                if !counted {
                    ServeStats::add(&self.stats.cache_hits, 1);
                }
                return Ok(Some(bytes));
            }
            if !counted {
                ServeStats::add(&self.stats.cache_misses, 1);
                counted = true;
            }
            if !state.decoding.contains(&chunk) {
                break;
            }
            state = self.decoded.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.decoding.insert(chunk);
        drop(state);
        self.decode_and_insert(chunk).map(Some)
    }

    /// Starts decoding each of `chunks` that is stored and neither cached nor being decoded,
    /// on the decoder threads, without waiting; chunks beyond what the pool can take are
    /// skipped (read-ahead is a hint).
    pub fn prefetch(self: &Arc<Self>, chunks: impl IntoIterator<Item = u64>, read_ahead: bool) {
        let limit = self.pool.current_num_threads() * 2;
        for chunk in chunks {
            if self.archive.record_of(chunk).is_none() {
                continue;
            }
            let mut state = self.lock();
            if state.queued >= limit {
                return;
            }
            if state.entries.contains_key(&chunk) || state.decoding.contains(&chunk) {
                continue;
            }
            state.decoding.insert(chunk);
            state.queued += 1;
            drop(state);
            if read_ahead {
                ServeStats::add(&self.stats.chunks_read_ahead, 1);
            }
            let cache = Arc::clone(self);
            self.pool.spawn(move || {
                // A failure is reported to the reader that asks for the chunk.
                let _ = cache.decode_and_insert(chunk);
                cache.lock().queued -= 1;
            });
        }
    }

    /// Decodes `chunk` (marked as decoding by the caller), caches it, and wakes the waiters.
    fn decode_and_insert(&self, chunk: u64) -> Result<ChunkBytes> {
        let decoded = self.decode(chunk);
        let mut state = self.lock();
        state.decoding.remove(&chunk);
        if let Ok(bytes) = &decoded {
            state.insert(chunk, Arc::clone(bytes), self.capacity);
        }
        drop(state);
        self.decoded.notify_all();
        decoded
    }

    fn decode(&self, chunk: u64) -> Result<ChunkBytes> {
        let record = self
            .archive
            .record_of(chunk)
            .ok_or_else(|| Error::new(ErrorKind::Io, format!("chunk {chunk} is not stored")))?;
        let chunk_len = self.archive.chunk_len(record);
        let _permit = self.permits.acquire();
        let mut payload = self.spare();
        let result = DECODER.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some((ChunkDecoder::new()?, Vec::new()));
            }
            let (decoder, frame) = slot.as_mut().expect("initialised above");
            self.archive
                .read_payload_checked(record, self.check, decoder, frame, &mut payload)
        });
        ServeStats::add(&self.stats.bytes_fetched, u64::from(record.stored_len));
        if let Err(e) = result {
            ServeStats::add(&self.stats.bad_chunks, 1);
            return Err(e);
        }
        // A chunk without zero blocks is its payload; others are laid out with their zeros.
        let bytes = if payload.len() == chunk_len {
            payload
        } else {
            let mut out = self.spare();
            out.resize(chunk_len, 0);
            expand_payload(record, &payload, &mut out);
            self.give_back(payload);
            out
        };
        ServeStats::add(&self.stats.chunks_decoded, 1);
        ServeStats::add(&self.stats.bytes_decoded, chunk_len as u64);
        Ok(Arc::new(ChunkBuffer {
            bytes,
            spares: Arc::clone(&self.spares),
        }))
    }

    /// A buffer from the spares, or a new one; its contents are to be overwritten.
    fn spare(&self) -> Vec<u8> {
        self.spares.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn give_back(&self, buffer: Vec<u8>) {
        self.spares.lock().unwrap_or_else(|e| e.into_inner()).give(buffer);
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // The state stays consistent between statements, so a panic elsewhere (there should be
        // none) does not make it unusable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CacheState {
    /// The cached bytes of `chunk`, marked most recently used.
    fn touch(&mut self, chunk: u64) -> Option<ChunkBytes> {
        self.tick += 1;
        let tick = self.tick;
        let (bytes, age) = self.entries.get_mut(&chunk)?;
        self.by_age.remove(age);
        *age = tick;
        self.by_age.insert(tick, chunk);
        Some(Arc::clone(bytes))
    }

    /// Caches `bytes` as `chunk`, evicting the least recently used chunks to stay within
    /// `capacity` (a chunk larger than the whole cache is not kept).
    fn insert(&mut self, chunk: u64, bytes: ChunkBytes, capacity: u64) {
        let len = bytes.len() as u64;
        if len > capacity || self.entries.contains_key(&chunk) {
            return;
        }
        while self.used + len > capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some((evicted, _)) = self.entries.remove(&oldest) {
                self.used -= evicted.len() as u64;
            }
        }
        self.tick += 1;
        self.by_age.insert(self.tick, chunk);
        self.entries.insert(chunk, (bytes, self.tick));
        self.used += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_oldest_and_stays_within_capacity() {
        let mut state = CacheState::default();
        let spares = Arc::new(Mutex::new(Spares::new(25)));
        let buffer = |bytes: Vec<u8>| -> ChunkBytes {
            Arc::new(ChunkBuffer {
                bytes,
                spares: Arc::clone(&spares),
            })
        };
        let chunk = |n: u8| buffer(vec![n; 10]);
        state.insert(1, chunk(1), 25);
        state.insert(2, chunk(2), 25);
        assert!(state.touch(1).is_some()); // 2 is now the oldest
        state.insert(3, chunk(3), 25);
        assert!(state.touch(2).is_none());
        assert_eq!(state.touch(1).unwrap()[0], 1);
        assert_eq!(state.touch(3).unwrap()[0], 3);
        assert_eq!(state.used, 20);
        state.insert(4, buffer(vec![0u8; 30]), 25); // larger than the cache: not kept
        assert!(state.touch(4).is_none());
        assert_eq!(state.used, 20);
        // The evicted buffer is kept for reuse; the 30-byte one is over the 25-byte budget.
        assert_eq!(spares.lock().unwrap().buffers.len(), 1);
        assert_eq!(spares.lock().unwrap().bytes, 10);
    }

    #[test]
    fn spares_stay_within_their_byte_budget() {
        let mut spares = Spares::new(100);
        spares.give(vec![0; 60]);
        spares.give(vec![0; 60]); // over the budget: freed
        spares.give(vec![0; 200]); // larger than the budget: freed
        assert_eq!((spares.buffers.len(), spares.bytes), (1, 60));
        assert_eq!(spares.take().capacity(), 60);
        assert_eq!(spares.bytes, 0);
        assert_eq!(spares.take().capacity(), 0);
    }
}
