//! [`ServeStats`]: what a served export did, counted as it happens, for `--json` events and the
//! summary at exit (a user can see that a boot touched 3% of the image).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters shared by every connection of one server. All are totals since it started.
#[derive(Debug, Default)]
pub struct ServeStats {
    pub(crate) connections: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) bytes_served: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) chunks_decoded: AtomicU64,
    pub(crate) chunks_read_ahead: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    pub(crate) bytes_fetched: AtomicU64,
    pub(crate) bytes_decoded: AtomicU64,
    pub(crate) bad_chunks: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
}

/// A snapshot of [`ServeStats`], as printed (JSON field names are these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Connections accepted.
    pub connections: u64,
    /// Requests handled in transmission.
    pub requests: u64,
    /// Bytes of the disk sent to clients (data and holes).
    pub bytes_served: u64,
    /// Bytes clients wrote into the overlay (writes and zeroed ranges).
    pub bytes_written: u64,
    /// Chunks decoded from the archive (read-ahead included).
    pub chunks_decoded: u64,
    /// Of those, chunks decoded ahead of a sequential reader.
    pub chunks_read_ahead: u64,
    /// Chunk lookups answered from the cache.
    pub cache_hits: u64,
    /// Chunk lookups that had to decode (or wait for another decode).
    pub cache_misses: u64,
    /// Bytes read from the archive's source (compressed frames).
    pub bytes_fetched: u64,
    /// Bytes of disk those chunks decoded to.
    pub bytes_decoded: u64,
    /// Chunk decodes that failed their checks (the request got EIO).
    pub bad_chunks: u64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: u64,
}

impl ServeStats {
    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections: get(&self.connections),
            requests: get(&self.requests),
            bytes_served: get(&self.bytes_served),
            bytes_written: get(&self.bytes_written),
            chunks_decoded: get(&self.chunks_decoded),
            chunks_read_ahead: get(&self.chunks_read_ahead),
            cache_hits: get(&self.cache_hits),
            cache_misses: get(&self.cache_misses),
            bytes_fetched: get(&self.bytes_fetched),
            bytes_decoded: get(&self.bytes_decoded),
            bad_chunks: get(&self.bad_chunks),
            protocol_errors: get(&self.protocol_errors),
        }
    }
}
