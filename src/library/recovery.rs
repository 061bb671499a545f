//! Recovery after a crash: registrations whose process is gone become `failed`, their
//! multipart uploads are aborted, and the scratch directories and archives that no live image
//! needs are removed.

use super::record::unix_now;
use super::{Changes, Library, Status};
use crate::error::Result;

impl Library {
    /// Marks `creating` images whose registering process is gone (or whose lease expired) as
    /// `failed`, and removes scratch files and archives that no live image needs. Returns the
    /// ids marked failed. [`Library::open`] calls it.
    pub fn recover(&self) -> Result<Vec<String>> {
        let now = unix_now();
        let creating = self.store()?.creating()?;
        let mut recovered = Vec::new();
        for (id, lease) in creating {
            let Some(why) = self.host.why_stale(&lease, now) else {
                continue;
            };
            let changes = Changes {
                reason: Some(format!("registration interrupted: {why}; the source was kept")),
                ..Changes::default()
            };
            if self
                .store()?
                .compare_and_set(&id, &[Status::Creating], Some(Status::Failed), &changes)?
            {
                self.remove_outputs(&id);
                recovered.push(id);
            }
        }
        self.objects.reap_interrupted_uploads(&self.host, now)?;
        if !recovered.is_empty() {
            // Their pinned frames go back to the collector (`images gc` would also do it).
            self.store()?.release_dead_images()?;
        }
        self.sweep()?;
        Ok(recovered)
    }

    /// Removes the scratch state (directories, multipart uploads) of images no longer
    /// `creating`, and archives of images that are `failed` or `deleted` (left by a process
    /// that died between two steps).
    fn sweep(&self) -> Result<()> {
        for id in self.objects.scratch_ids()? {
            if self.status_of(&id)? != Some(Status::Creating) {
                let _ = self.objects.discard_scratch(&id);
            }
        }
        for id in self.objects.archive_ids()? {
            if matches!(self.status_of(&id)?, Some(Status::Failed | Status::Deleted)) {
                let _ = self.objects.delete_archive(&id);
            }
        }
        Ok(())
    }

    pub(super) fn status_of(&self, id: &str) -> Result<Option<Status>> {
        Ok(self.store()?.get(id)?.map(|r| r.status))
    }

    /// Removes everything a failed registration left: scratch state (aborting a multipart
    /// upload) and an archive that was completed after all.
    pub(super) fn remove_outputs(&self, id: &str) {
        let _ = self.objects.discard_scratch(id);
        let _ = self.objects.delete_archive(id);
        if let Ok(key) = super::chunks::index_key(id) {
            let _ = self.objects.delete_object(&key);
        }
    }
}
