//! [`VirtualArchive`]: an image's self-contained archive, presented byte for byte from its
//! index object and its frame objects, so that [`ArchiveReader`](crate::archive::reader::ArchiveReader)
//! (which checks the crc32 and SHA-256 of every chunk it decodes) reads a deduplicated image
//! as it reads a file.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use super::index::{FrameRef, ImageIndex};
use super::prefetch::{FrameJob, Prefetch};
use super::{chunk_key, hex};
use crate::error::{Error, ErrorKind};
use crate::library::objects::Objects;
use crate::read_at::ReadAt;

/// Frames kept after a read: a reader usually asks for a frame's bytes once, but a few
/// recent ones cover overlapping and neighbouring reads.
const CACHED_FRAMES: usize = 8;

/// The bytes of an image's self-contained archive over its index and the chunk store.
pub struct VirtualArchive {
    index: ImageIndex,
    objects: Arc<dyn Objects>,
    name: String,
    cache: Mutex<VecDeque<(usize, Arc<Vec<u8>>)>>,
    /// Frames fetched (object stores) or read into the page cache (local) ahead of the reader.
    prefetch: Option<Prefetch>,
}

impl std::fmt::Debug for VirtualArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualArchive")
            .field("name", &self.name)
            .finish()
    }
}

impl VirtualArchive {
    /// The archive of `index` (the object `name`), reading frames from `objects`.
    pub fn new(index: ImageIndex, objects: Arc<dyn Objects>, name: String) -> Self {
        let prefetch = Prefetch::start(Arc::clone(&objects));
        VirtualArchive {
            index,
            objects,
            name,
            cache: Mutex::new(VecDeque::new()),
            prefetch,
        }
    }

    /// The index object's name (`LIBRARY/images/<id>.index`), as errors give it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parsed index.
    pub fn index(&self) -> &ImageIndex {
        &self.index
    }

    /// Frame `i`'s bytes if the prefetcher has them (and schedules the frames after it).
    fn prefetched(&self, i: usize) -> Option<Vec<u8>> {
        let frames = &self.index.frames;
        let job = |n: usize| {
            frames.get(n).map(|frame| FrameJob {
                index: n,
                key: chunk_key(&hex(&frame.sha256), frame.gen),
                len: u64::from(frame.len),
            })
        };
        let bytes = self.prefetch.as_ref()?.take(i, job)?;
        (bytes.len() as u64 == u64::from(frames[i].len)).then_some(bytes)
    }

    /// Reads frame `i`'s object, whose length must be `out`'s (the record's), into `out`.
    fn frame_into(&self, i: usize, out: &mut [u8]) -> crate::error::Result<()> {
        if let Some(bytes) = self.prefetched(i).filter(|b| b.len() == out.len()) {
            out.copy_from_slice(&bytes);
            return Ok(());
        }
        let frame: &FrameRef = &self.index.frames[i];
        let key = chunk_key(&hex(&frame.sha256), frame.gen);
        let found = self
            .objects
            .read_object_into(&key, out)
            .map_err(|e| Error::new(e.kind(), format!("{}: {e}", self.name)))?;
        if !found {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("{}: chunk object {key} is missing", self.name),
            ));
        }
        Ok(())
    }

    /// Frame `i`'s bytes, from the cache or its object (whose length must be the record's).
    fn frame(&self, i: usize) -> crate::error::Result<Arc<Vec<u8>>> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((_, bytes)) = cache.iter().find(|(n, _)| *n == i) {
                return Ok(Arc::clone(bytes));
            }
        }
        if let Some(bytes) = self.prefetched(i) {
            return Ok(self.cached(i, bytes));
        }
        let frame: &FrameRef = &self.index.frames[i];
        let key = chunk_key(&hex(&frame.sha256), frame.gen);
        let bytes = self
            .objects
            .get_object(&key, u64::from(frame.len))?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("{}: chunk object {key} is missing", self.name),
                )
            })?;
        if bytes.len() as u64 != u64::from(frame.len) {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{}: chunk object {key} holds {} bytes, its record says {}",
                    self.name,
                    bytes.len(),
                    frame.len
                ),
            ));
        }
        Ok(self.cached(i, bytes))
    }

    /// Keeps frame `i`'s `bytes` among the last few read.
    fn cached(&self, i: usize, bytes: Vec<u8>) -> Arc<Vec<u8>> {
        let bytes = Arc::new(bytes);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHED_FRAMES {
                cache.pop_front();
            }
            cache.push_back((i, Arc::clone(&bytes)));
        }
        bytes
    }
}

impl ReadAt for VirtualArchive {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= self.size())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the archive")
            })?;
        let header_len = self.index.header.len() as u64;
        let mut position = offset;
        while position < end {
            let done = (position - offset) as usize;
            let out = &mut buf[done..];
            let copied = if position < header_len {
                copy_from(&self.index.header, position, out)
            } else if position >= self.index.index_offset {
                copy_from(&self.index.tail, position - self.index.index_offset, out)
            } else {
                let i = self.index.frames.partition_point(|f| f.offset <= position) - 1;
                let frame = &self.index.frames[i];
                let frame_len = frame.len as usize;
                if position == frame.offset && out.len() >= frame_len {
                    // A whole frame (what ArchiveReader asks for, once per chunk): read
                    // straight into the caller's buffer, with no cache and no copy.
                    self.frame_into(i, &mut out[..frame_len])
                        .map_err(io::Error::other)?;
                    frame_len
                } else {
                    let bytes = self.frame(i).map_err(io::Error::other)?;
                    copy_from(&bytes, position - frame.offset, out)
                }
            };
            position += copied as u64;
        }
        Ok(())
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let available = self.size().saturating_sub(offset).min(buf.len() as u64) as usize;
        self.read_exact_at(&mut buf[..available], offset)?;
        Ok(available)
    }

    fn size(&self) -> u64 {
        self.index.archive_len()
    }
}

/// Copies what `out` can hold of `from` starting at `at`; returns how much.
fn copy_from(from: &[u8], at: u64, out: &mut [u8]) -> usize {
    let from = &from[at as usize..];
    let n = from.len().min(out.len());
    out[..n].copy_from_slice(&from[..n]);
    n
}
