//! The deduplication hook: how a caller (a deduplicating image library) skips compressing
//! chunks it already stores and takes each new frame for itself, without the pipeline knowing
//! anything of libraries, catalogs or object stores.
//!
//! [`ChunkLookup`] is asked by the workers, with a chunk's SHA-256, *before* they compress it;
//! [`FrameStore`] receives every chunk on the writer thread, in order, after its index record is
//! written. With [`DedupHooks`] the archive writer writes no frames into its output (see
//! [`ArchiveWriter::frames_elsewhere`](crate::archive::writer::ArchiveWriter::frames_elsewhere)),
//! only the header, index and footer. Without hooks nothing changes and nothing is paid.

use std::sync::Arc;

use crate::archive::chunk::{EncodedChunk, StoredFrame};
use crate::archive::digest::Sha256Hash;
use crate::error::Result;

/// Finds a frame already stored for a chunk's content. Called from worker threads.
pub trait ChunkLookup: Send + Sync {
    /// The stored frame of the chunk content whose SHA-256 is `sha256` and whose payload (its
    /// non-zero blocks) is `payload_len` bytes, if the store holds one. An answer of `Some`
    /// must stay valid for as long as the archive being written needs it (a library pins
    /// the frame for the image before answering).
    fn find(&self, sha256: &Sha256Hash, payload_len: u64) -> Result<Option<StoredFrame>>;
}

/// Takes each chunk's frame. Called on the writer thread, in chunk order.
pub trait FrameStore: Send + Sync {
    /// Stores `chunk.frame` (a new frame: `chunk.reused` is `None`) or notes the stored frame
    /// it reuses. The frame buffer is recycled after the call returns.
    fn store(&self, chunk: &EncodedChunk) -> Result<()>;
}

/// Both sides of the hook, as [`ConvertOptions::dedup`](crate::convert::ConvertOptions::dedup) carries them.
#[derive(Clone)]
pub struct DedupHooks {
    /// Asked before each chunk is compressed.
    pub lookup: Arc<dyn ChunkLookup>,
    /// Receives every chunk in order.
    pub frames: Arc<dyn FrameStore>,
}

impl std::fmt::Debug for DedupHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DedupHooks")
    }
}
