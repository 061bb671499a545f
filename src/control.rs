//! What a caller uses to watch and stop long work: a progress callback and a cancel flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// Receives progress while an image is converted or extracted. Called from worker threads.
pub trait Progress: Send + Sync {
    /// `done` bytes of the virtual disk of `total` (if known yet) are handled, of which
    /// `disk_size` bytes held data so far.
    fn update(&self, done: u64, total: Option<u64>, disk_size: u64);
}

/// Cancellation and progress for one operation. The default does neither.
#[derive(Clone, Default)]
pub struct Control {
    /// Set to `true` (by a signal handler or another thread) to stop the operation; it then
    /// fails with `ErrorKind::Interrupted` and leaves no output.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Progress receiver.
    pub progress: Option<Arc<dyn Progress>>,
}

impl Control {
    /// An error if cancellation was requested.
    pub fn check(&self) -> Result<()> {
        match &self.cancel {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(Error::interrupted()),
            _ => Ok(()),
        }
    }

    /// Reports progress, if anyone listens.
    pub fn report(&self, done: u64, total: Option<u64>, disk_size: u64) {
        if let Some(p) = &self.progress {
            p.update(done, total, disk_size);
        }
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("cancel", &self.cancel)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}
