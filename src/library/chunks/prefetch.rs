//! [`Prefetch`]: frames of a deduplicated image fetched ahead of the reader, several at once.
//! On an object store each frame is a request whose latency (tens of milliseconds on a
//! loopback S3 server) dwarfs its transfer, and a build's few workers asking one frame each
//! would leave the link idle. In a local directory a frame whose inode and data are not cached
//! costs a wait for the disk at its open and at its read: the fetchers open the files ahead
//! and hand them to the kernel's read-ahead ([`Objects::prefetch_object`]), keeping no bytes.
//!
//! When frame `i` is read, the frames `i + 1 ..= i + WINDOW` not read yet are queued for
//! `THREADS` fetcher threads after every read (locally `LOCAL_THREADS`, `LOCAL_REFILL` at a
//! time); a later read
//! of one of them takes its bytes if they are there (waiting if its fetch is under way). A
//! build's workers read from a few places at once, so nothing is dropped for being behind one
//! reader, only for being far behind every read.
//! Memory: at most `BUDGET` bytes of frames held or in flight. Anything unexpected in a
//! prefetched frame (an error, a missing object, a wrong length) is not reported from here:
//! the reader fetches that frame again itself, which reports it as a direct read does.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::library::objects::Objects;

/// Frames fetched ahead of the reader at most.
const WINDOW: usize = 128;
/// Frames read before the window is refilled, locally: each refill wakes fetchers, and waking
/// one per read costs more system time than a read from the page cache does. On an object
/// store a frame's round trip dwarfs that, and the window is refilled after every read.
const LOCAL_REFILL: usize = 32;
/// Fetches in flight at once.
const THREADS: usize = 32;
/// Local frames handed to the kernel's read-ahead at once (opening a file whose inode is not
/// cached waits for the disk; its data is then read in the background).
const LOCAL_THREADS: usize = 8;
/// Bytes of frames queued, in flight or waiting for their reader, at most.
const BUDGET: u64 = 64 << 20;

/// A frame to fetch: its index, object key and expected length.
#[derive(Clone)]
pub(super) struct FrameJob {
    pub index: usize,
    pub key: String,
    pub len: u64,
}

enum Slot {
    Queued,
    Fetching,
    Done(Option<Vec<u8>>),
}

#[derive(Default)]
struct State {
    /// Each scheduled frame's state and expected length.
    slots: HashMap<usize, (Slot, u64)>,
    queue: VecDeque<FrameJob>,
    /// Frames read already (each is read once by a build): not fetched again.
    read: std::collections::HashSet<usize>,
    /// The expected lengths of the frames in `slots`, summed.
    held: u64,
    stop: bool,
}

impl State {
    fn remove(&mut self, index: usize) -> Option<Slot> {
        let (slot, len) = self.slots.remove(&index)?;
        self.held -= len;
        Some(slot)
    }
}

struct Shared {
    objects: Arc<dyn Objects>,
    state: Mutex<State>,
    /// Signalled when frames are queued (or on stop): the fetchers wait on it.
    queued: Condvar,
    /// Signalled when a fetch ends (or on stop): a reader waiting for its frame waits on it.
    arrived: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fetcher threads and what they hold; stopped and joined on drop.
pub(super) struct Prefetch {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Frames read before the window is refilled.
    refill: usize,
}

impl Prefetch {
    /// Fetchers over `objects`; `None` if no thread could be started.
    pub fn start(objects: Arc<dyn Objects>) -> Option<Prefetch> {
        let (threads, refill) = match objects.local_root() {
            Some(_) => (LOCAL_THREADS, LOCAL_REFILL),
            None => (THREADS, 1),
        };
        let shared = Arc::new(Shared {
            objects,
            state: Mutex::new(State::default()),
            queued: Condvar::new(),
            arrived: Condvar::new(),
        });
        let threads: Vec<_> = (0..threads)
            .filter_map(|n| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("imgpack-prefetch-{n}"))
                    .spawn(move || fetch_loop(&shared))
                    .ok()
            })
            .collect();
        (!threads.is_empty()).then_some(Prefetch {
            shared,
            threads,
            refill,
        })
    }

    /// Takes frame `index`'s prefetched bytes (waiting while it is being fetched), if it was
    /// scheduled and arrived whole; then schedules the frames after it (`job(i)` describes
    /// frame `i`, `None` past the last).
    pub fn take(&self, index: usize, job: impl Fn(usize) -> Option<FrameJob>) -> Option<Vec<u8>> {
        let mut state = self.shared.lock();
        state.read.insert(index);
        let taken = loop {
            match state.slots.get(&index).map(|(slot, _)| slot) {
                None => break None,
                Some(Slot::Queued) => {
                    // Not started: the reader fetches it itself.
                    state.remove(index);
                    state.queue.retain(|j| j.index != index);
                    break None;
                }
                Some(Slot::Fetching) => {
                    state = self.shared.arrived.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                Some(Slot::Done(_)) => match state.remove(index) {
                    Some(Slot::Done(bytes)) => break bytes,
                    _ => break None,
                },
            }
        };
        // Frames far behind this read are not waited for by anyone: let them go.
        let behind: Vec<usize> = state
            .slots
            .iter()
            .filter(|(&i, (slot, _))| i + 4 * WINDOW < index && !matches!(slot, Slot::Fetching))
            .map(|(&i, _)| i)
            .collect();
        for i in behind {
            state.remove(i);
        }
        state.queue.retain(|j| j.index + 4 * WINDOW >= index);
        let ahead = state.slots.keys().filter(|&&i| i > index).count();
        let mut added = 0;
        for next in (ahead + self.refill <= WINDOW)
            .then_some(index + 1..=index + WINDOW)
            .into_iter()
            .flatten()
        {
            if state.slots.contains_key(&next) || state.read.contains(&next) {
                continue;
            }
            let Some(job) = job(next) else { break };
            if state.held + job.len > BUDGET {
                break;
            }
            state.held += job.len;
            state.slots.insert(next, (Slot::Queued, job.len));
            state.queue.push_back(job);
            added += 1;
        }
        drop(state);
        // A wake-up per queued frame, at most one per fetcher.
        for _ in 0..added.min(self.threads.len()) {
            self.shared.queued.notify_one();
        }
        taken
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.queued.notify_all();
        self.shared.arrived.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One fetcher: takes queued frames until stopped.
fn fetch_loop(shared: &Shared) {
    loop {
        let job = {
            let mut state = shared.lock();
            loop {
                if state.stop {
                    return;
                }
                if let Some(job) = state.queue.pop_front() {
                    if let Some((slot, _)) = state.slots.get_mut(&job.index) {
                        *slot = Slot::Fetching;
                        break job;
                    }
                    continue;
                }
                state = shared.queued.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let bytes = shared.objects.prefetch_object(&job.key, job.len);
        let mut state = shared.lock();
        // Kept only if still wanted (the reader may have passed it meanwhile).
        if let Some((slot, _)) = state.slots.get_mut(&job.index) {
            *slot = Slot::Done(bytes);
        }
        drop(state);
        shared.arrived.notify_all();
    }
}
