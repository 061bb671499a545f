//! One registration's side of deduplication: [`DedupSession`] answers the pipeline's
//! look-ups from the catalog (pinning what it reuses) and stores each new frame (its catalog
//! row and reference first, then the object), and [`IndexSink`] receives the archive without
//! its frames, from which the index object is made.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::Serialize;

use super::{chunk_key, hex, index_key, new_generation, ChunkRow, ImageIndex};
use crate::archive::chunk::{EncodedChunk, StoredFrame};
use crate::archive::digest::Sha256Hash;
use crate::error::{Error, Result};
use crate::library::objects::Objects;
use crate::library::record::catalog_error;
use crate::library::SharedStore;
use crate::pipeline::hook::{ChunkLookup, FrameStore};
use crate::sink::ArchiveSink;

/// What a deduplicated registration stored and reused. Bytes are the chunks' uncompressed
/// payload: their non-zero 4 KiB blocks, so `new_bytes + reused_bytes` is the image's
/// `disk_size`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DedupStats {
    /// Chunks whose frame was compressed and uploaded.
    pub new_chunks: u64,
    /// Chunks whose frame the library already held.
    pub reused_chunks: u64,
    /// Uncompressed bytes of the new chunks.
    pub new_bytes: u64,
    /// Uncompressed bytes of the reused chunks.
    pub reused_bytes: u64,
    /// Compressed bytes actually written (the new frames).
    pub new_stored_bytes: u64,
}

/// Frame uploads in flight at most: an object store answers each PUT after a round trip, so a
/// few at once keep the writer thread from waiting on every one.
const UPLOADS_IN_FLIGHT: usize = 4;

/// New frames recorded per catalog transaction at most, and their bytes held meanwhile: one
/// commit per batch instead of one per frame, with memory bounded whatever the chunk size.
const BATCH_FRAMES: usize = 32;
const BATCH_BYTES: usize = 32 << 20;

/// The frames and generations of one registration, in record order.
#[derive(Default)]
struct Progress {
    gens: Vec<u64>,
    stats: DedupStats,
    /// New frames not yet recorded in the catalog (nor uploaded), and their bytes.
    batch: Vec<(ChunkRow, Vec<u8>)>,
    batch_bytes: usize,
    /// The keys of every frame object uploaded so far, to be made durable before the index.
    uploaded: Vec<String>,
}

/// Deduplicates one registration (image `image`) against the library.
pub struct DedupSession {
    image: String,
    /// The account registering: frames are reused within it only.
    owner: String,
    store: SharedStore,
    objects: Arc<dyn Objects>,
    progress: Mutex<Progress>,
    uploads: Mutex<Uploads>,
}

/// A few threads putting frame objects; the first failure is kept and stops the registration.
struct Uploads {
    queue: Option<SyncSender<(String, Vec<u8>)>>,
    threads: Vec<JoinHandle<()>>,
    failure: Arc<Mutex<Option<Error>>>,
}

impl Uploads {
    fn start(objects: &Arc<dyn Objects>) -> Uploads {
        let (queue, jobs) = sync_channel::<(String, Vec<u8>)>(UPLOADS_IN_FLIGHT);
        let jobs = Arc::new(Mutex::new(jobs));
        let failure = Arc::new(Mutex::new(None));
        let threads = (0..UPLOADS_IN_FLIGHT)
            .map(|_| {
                let (jobs, objects, failure) = (Arc::clone(&jobs), Arc::clone(objects), Arc::clone(&failure));
                std::thread::spawn(move || loop {
                    let job = jobs.lock().ok().and_then(|jobs| jobs.recv().ok());
                    let Some((key, frame)) = job else { return };
                    if let Err(e) = objects.put_object_unsynced(&key, &frame) {
                        if let Ok(mut first) = failure.lock() {
                            first.get_or_insert(e);
                        }
                    }
                })
            })
            .collect();
        Uploads {
            queue: Some(queue),
            threads,
            failure,
        }
    }

    /// The first upload failure so far, if any.
    fn failed(&self) -> Option<Error> {
        let failure = self.failure.lock().ok()?;
        failure.as_ref().map(|e| Error::new(e.kind(), e.to_string()))
    }

    /// Queues one upload (waiting while `UPLOADS_IN_FLIGHT` are queued); fails once any
    /// upload has failed.
    fn send(&self, key: String, frame: Vec<u8>) -> Result<()> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| catalog_error("a frame was stored after the registration finished"))?;
        queue
            .send((key, frame))
            .map_err(|_| catalog_error("the frame upload threads are gone"))
    }

    /// Waits for every upload; the first failure, if any.
    fn wait(&mut self) -> Result<()> {
        self.queue = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        match self.failed() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        let _ = self.wait();
    }
}

impl DedupSession {
    /// A session for image `image` of account `owner`, whose record exists (`creating`).
    pub(crate) fn new(image: &str, owner: &str, store: SharedStore, objects: Arc<dyn Objects>) -> Self {
        DedupSession {
            image: image.to_string(),
            owner: owner.to_string(),
            store,
            uploads: Mutex::new(Uploads::start(&objects)),
            objects,
            progress: Mutex::new(Progress::default()),
        }
    }

    fn uploads(&self) -> Result<std::sync::MutexGuard<'_, Uploads>> {
        self.uploads
            .lock()
            .map_err(|_| catalog_error("a deduplication session was poisoned by a panic"))
    }

    fn progress(&self) -> Result<std::sync::MutexGuard<'_, Progress>> {
        self.progress
            .lock()
            .map_err(|_| catalog_error("a deduplication session was poisoned by a panic"))
    }

    /// Records the batched new frames (rows `pending`, with this image's references) in one
    /// transaction, *then* queues their uploads: an object without a row is garbage to the
    /// collector, so the row must exist before the object does.
    fn flush(&self, progress: &mut Progress) -> Result<()> {
        if progress.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut progress.batch);
        progress.batch_bytes = 0;
        let rows: Vec<ChunkRow> = batch.iter().map(|(row, _)| row.clone()).collect();
        crate::library::lock(&self.store)?.add_pending_chunks(&self.image, &self.owner, &rows)?;
        let uploads = self.uploads()?;
        for (row, frame) in batch {
            let key = chunk_key(&row.sha, row.gen);
            progress.uploaded.push(key.clone());
            uploads.send(key, frame)?;
        }
        Ok(())
    }

    /// After the pipeline: uploads the last frames, makes every frame durable, stores the
    /// index object made from `archive` (the archive without frames) and marks this image's
    /// new frames `stored`. Returns the counts.
    ///
    /// Frames are written without an fsync each and made durable here at once, before
    /// anything can use them: they become reusable (`stored`) and the image `available` only
    /// after this returns, so a crash before leaves only frames of a failed image.
    pub fn finish(&self, archive: &[u8]) -> Result<DedupStats> {
        let mut progress = self.progress()?;
        self.flush(&mut progress)?;
        self.uploads()?.wait()?;
        self.objects.sync_objects(&progress.uploaded)?;
        let object = ImageIndex::encode(archive, &progress.gens)?;
        let key = index_key(&self.image)?;
        ImageIndex::parse(&object, &key)?; // what readers will check, checked before storing
        self.objects.put_object(&key, &object)?;
        crate::library::lock(&self.store)?.mark_chunks_stored(&self.image)?;
        Ok(progress.stats)
    }
}

impl ChunkLookup for DedupSession {
    fn find(&self, sha256: &Sha256Hash, payload_len: u64) -> Result<Option<StoredFrame>> {
        let row = crate::library::lock(&self.store)?.reuse_chunk(&self.image, &self.owner, &hex(sha256))?;
        let _ = payload_len; // the SHA-256 names the content; its length adds nothing
        Ok(row.map(|row| StoredFrame {
            len: row.frame_len,
            crc: row.crc,
            tag: row.gen,
        }))
    }
}

impl FrameStore for DedupSession {
    fn store(&self, chunk: &EncodedChunk) -> Result<()> {
        let mut progress = self.progress()?;
        let gen = match chunk.reused {
            Some(stored) => {
                progress.stats.reused_chunks += 1;
                progress.stats.reused_bytes += chunk.payload_len;
                stored.tag
            }
            None => {
                let row = ChunkRow {
                    sha: hex(&chunk.sha256),
                    gen: new_generation()?,
                    frame_len: u32::try_from(chunk.frame.len())
                        .map_err(|_| Error::invalid_argument("compressed chunk over 4 GiB"))?,
                    crc: chunk.payload_crc,
                };
                let gen = row.gen;
                progress.stats.new_chunks += 1;
                progress.stats.new_bytes += chunk.payload_len;
                progress.stats.new_stored_bytes += chunk.frame.len() as u64;
                progress.batch_bytes += chunk.frame.len();
                progress.batch.push((row, chunk.frame.clone()));
                if progress.batch.len() >= BATCH_FRAMES || progress.batch_bytes >= BATCH_BYTES {
                    self.flush(&mut progress)?;
                }
                gen
            }
        };
        progress.gens.push(gen);
        Ok(())
    }
}

/// Receives the archive without frames (header, index, footer) in memory.
pub struct IndexSink {
    bytes: Arc<Mutex<Vec<u8>>>,
    name: String,
    spill_dir: Option<PathBuf>,
}

impl IndexSink {
    /// A sink named `name` in reports; `bytes` holds what was written once it is finished.
    pub fn new(name: String, spill_dir: Option<PathBuf>, bytes: Arc<Mutex<Vec<u8>>>) -> Self {
        IndexSink {
            bytes,
            name,
            spill_dir,
        }
    }
}

impl Write for IndexSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes
            .lock()
            .map_err(|_| io::Error::other("index buffer poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ArchiveSink for IndexSink {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn spill_dir(&self) -> Option<PathBuf> {
        self.spill_dir.clone()
    }

    fn finish(self) -> Result<()> {
        Ok(())
    }
}
