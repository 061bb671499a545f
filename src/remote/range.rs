//! [`S3ReadAt`]: random access to an object by ranged GETs, so the archive reader and the
//! image readers (which take any [`ReadAt`]) read objects in place.
//!
//! Reads go through a cache of fixed-size blocks ([`BLOCK_SIZE`], at most [`CACHED_BLOCKS`]
//! kept, least recently fetched evicted), so the many small reads of neighbouring chunks
//! coalesce into one ranged GET per block. A miss fetches the missing blocks of the read
//! together, plus [`READ_AHEAD`] blocks when that reader runs forward, as parallel GETs: at
//! most `READ_AHEAD + 1` requests in flight per reading thread. Each block is fetched once even when several threads want it: the first one
//! fetches, the others wait on the block's slot.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;

use super::{object_path, redact, S3Client};
use crate::error::{Error, ErrorKind, Result};
use crate::read_at::ReadAt;

/// Bytes per cached block: each block is one ranged GET, and a request costs a round trip
/// and, on some servers, work in proportion to the object, so blocks are large (8-16 MiB is
/// what S3's own guidance suggests for ranged downloads).
pub const BLOCK_SIZE: u64 = 8 << 20;
/// Blocks kept in the cache (96 MiB).
pub const CACHED_BLOCKS: usize = 12;
/// Blocks fetched ahead of a forward-running read.
pub const READ_AHEAD: u64 = 4;
/// Forward-running readers recognised at once.
const STREAMS: usize = 16;

type Fetched = std::result::Result<Bytes, String>;

/// One block: empty until its fetch ends.
#[derive(Default)]
struct Slot {
    state: Mutex<Option<Fetched>>,
    ready: Condvar,
}

impl Slot {
    fn fill(&self, value: Fetched) {
        if let Ok(mut state) = self.state.lock() {
            *state = Some(value);
        }
        self.ready.notify_all();
    }

    fn wait(&self) -> Fetched {
        let Ok(mut state) = self.state.lock() else {
            return Err("a block fetch panicked".to_string());
        };
        loop {
            if let Some(value) = state.as_ref() {
                return value.clone();
            }
            state = match self.ready.wait(state) {
                Ok(state) => state,
                Err(_) => return Err("a block fetch panicked".to_string()),
            };
        }
    }
}

#[derive(Default)]
struct Cache {
    blocks: HashMap<u64, Arc<Slot>>,
    order: VecDeque<u64>,
    /// The block after each recent fetch: a miss at one of them means that reader runs
    /// forward (several threads each walk their own part of an archive).
    heads: VecDeque<u64>,
}

/// An object read by ranged GETs through a block cache.
pub struct S3ReadAt {
    client: S3Client,
    size: u64,
    /// The object's name and which version of it the HEAD found (boxed, to keep the enums
    /// that hold an `S3ReadAt` small).
    version: Box<Version>,
    cache: Mutex<Cache>,
}

/// An object's path and URL, and the ETag and last-modified time (milliseconds) of one
/// version of it.
struct Version {
    path: ObjectPath,
    url: String,
    etag: Option<String>,
    last_modified_ms: i64,
}

impl std::fmt::Debug for S3ReadAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3ReadAt")
            .field("url", &self.version.url)
            .field("size", &self.size)
            .finish()
    }
}

impl S3ReadAt {
    /// Opens `key` (one HEAD for its length); `Ok(None)` if there is no such object.
    pub fn open(client: &S3Client, key: &str) -> Result<Option<S3ReadAt>> {
        let Some(meta) = client.head_meta(key)? else {
            return Ok(None);
        };
        Ok(Some(S3ReadAt {
            client: client.clone(),
            size: meta.size,
            version: Box::new(Version {
                path: object_path(key)?,
                url: client.url(key),
                etag: meta.e_tag,
                last_modified_ms: meta.last_modified.timestamp_millis(),
            }),
            cache: Mutex::new(Cache::default()),
        }))
    }

    /// The ETag the store gave this version of the object, if any.
    pub fn etag(&self) -> Option<&str> {
        self.version.etag.as_deref()
    }

    /// Which object and which version of it this is, as one line: its URL, ETag, length and
    /// last-modified time. A store writes a new ETag or time for every PUT, so an upload
    /// stored again under the same key gets a new identity; the URL keeps two uploads of the
    /// same bytes under two names apart (ETag and length alike, and last-modified times of
    /// one second's resolution).
    pub fn identity(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.version.url,
            self.version.etag.as_deref().unwrap_or("-"),
            self.size,
            self.version.last_modified_ms
        )
    }

    /// `s3://BUCKET/KEY`.
    pub fn url(&self) -> &str {
        &self.version.url
    }

    fn block_range(&self, block: u64) -> Range<u64> {
        let start = block * BLOCK_SIZE;
        start..(start + BLOCK_SIZE).min(self.size)
    }

    /// The slots of `blocks`, fetching those not cached (with read-ahead) first.
    fn slots(&self, blocks: Range<u64>) -> io::Result<Vec<Arc<Slot>>> {
        let last_block = (self.size.max(1) - 1) / BLOCK_SIZE;
        let mut to_fetch = Vec::new();
        let slots = {
            let mut cache = self.cache.lock().map_err(|_| poisoned())?;
            let first_missing = blocks.clone().find(|b| !cache.blocks.contains_key(b));
            let mut wanted = blocks.clone();
            if let Some(first) = first_missing {
                if let Some(at) = cache.heads.iter().position(|&head| head == first) {
                    cache.heads.remove(at);
                    wanted.end = (blocks.end + READ_AHEAD).min(last_block + 1);
                }
            }
            for block in wanted {
                if let std::collections::hash_map::Entry::Vacant(entry) = cache.blocks.entry(block) {
                    let slot = Arc::new(Slot::default());
                    entry.insert(Arc::clone(&slot));
                    cache.order.push_back(block);
                    to_fetch.push((block, slot));
                }
            }
            if let Some((last, _)) = to_fetch.last() {
                cache.heads.push_back(last + 1);
                if cache.heads.len() > STREAMS {
                    cache.heads.pop_front();
                }
            }
            let slots: Vec<Arc<Slot>> = blocks.map(|b| Arc::clone(&cache.blocks[&b])).collect();
            while cache.order.len() > CACHED_BLOCKS.max(to_fetch.len()) {
                if let Some(old) = cache.order.pop_front() {
                    cache.blocks.remove(&old);
                }
            }
            slots
        };
        if !to_fetch.is_empty() {
            self.fetch(&to_fetch);
        }
        Ok(slots)
    }

    /// Fetches blocks into their slots; on failure every slot gets the error and leaves the
    /// cache, so a later read asks again.
    fn fetch(&self, blocks: &[(u64, Arc<Slot>)]) {
        let ranges: Vec<Range<u64>> = blocks.iter().map(|(b, _)| self.block_range(*b)).collect();
        // One request per block, all at once: a block already coalesces every read inside it,
        // and parallel requests fill a link that one request leaves idle between round trips.
        let store = self.client.store();
        let result = self.client.block_on(async {
            futures::future::try_join_all(
                ranges
                    .iter()
                    .map(|range| store.get_range(&self.version.path, range.clone())),
            )
            .await
        });
        let failure = match result {
            Ok(parts) if parts.len() == ranges.len() => {
                let mut failure = None;
                for ((range, (block, slot)), bytes) in ranges.iter().zip(blocks).zip(parts) {
                    if bytes.len() as u64 != range.end - range.start {
                        let why = format!(
                            "reading {} bytes {}-{}: the store sent {} bytes",
                            self.version.url,
                            range.start,
                            range.end,
                            bytes.len()
                        );
                        failure.get_or_insert((*block, why.clone()));
                        slot.fill(Err(why));
                    } else {
                        slot.fill(Ok(bytes));
                    }
                }
                failure.map(|(_, why)| why)
            }
            Ok(parts) => Some(format!(
                "reading {}: {} ranges asked, {} answered",
                self.version.url,
                ranges.len(),
                parts.len()
            )),
            Err(e) => Some(redact(&format!("reading {}: {e}", self.version.url))),
        };
        if let Some(why) = failure {
            for (_, slot) in blocks {
                let unfilled = slot.state.lock().map(|state| state.is_none()).unwrap_or(true);
                if unfilled {
                    slot.fill(Err(why.clone()));
                }
            }
            if let Ok(mut cache) = self.cache.lock() {
                for (block, _) in blocks {
                    cache.blocks.remove(block);
                    cache.order.retain(|b| b != block);
                }
            }
        }
    }
}

fn poisoned() -> io::Error {
    io::Error::other("the block cache was poisoned by a panic")
}

impl ReadAt for S3ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = self.read_at_most(buf, offset)?;
        if n < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends at byte {}", self.version.url, self.size),
            ));
        }
        Ok(())
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let end = offset.saturating_add(buf.len() as u64).min(self.size);
        let blocks = offset / BLOCK_SIZE..(end - 1) / BLOCK_SIZE + 1;
        let slots = self.slots(blocks.clone())?;
        for (block, slot) in blocks.zip(slots) {
            let bytes = slot
                .wait()
                .map_err(|why| io::Error::other(Error::new(ErrorKind::Io, why)))?;
            let block_start = block * BLOCK_SIZE;
            let from = offset.max(block_start);
            let to = end.min(block_start + bytes.len() as u64);
            if from >= to {
                continue;
            }
            let source = &bytes[(from - block_start) as usize..(to - block_start) as usize];
            let at = (from - offset) as usize;
            buf[at..at + source.len()].copy_from_slice(source);
        }
        Ok((end - offset) as usize)
    }

    fn size(&self) -> u64 {
        self.size
    }
}
