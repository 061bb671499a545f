//! Recovery after a crash: registrations whose process is gone become `failed`, and the
//! scratch directories and archives that no live image needs are removed.

use std::io;
use std::path::Path;

use super::record::unix_now;
use super::{id, Changes, Library, Status};
use crate::error::{Error, Result};

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
        self.sweep()?;
        Ok(recovered)
    }

    /// Removes scratch directories of images no longer `creating`, and archives of images that
    /// are `failed` or `deleted` (left by a process that died between two steps).
    fn sweep(&self) -> Result<()> {
        let tmp = self.root.join("tmp");
        for entry in read_dir_names(&tmp)? {
            if id::is_image_id(&entry) && self.status_of(&entry)? != Some(Status::Creating) {
                let _ = std::fs::remove_dir_all(tmp.join(&entry));
            }
        }
        let images = self.root.join("images");
        for entry in read_dir_names(&images)? {
            let Some(id) = entry.strip_suffix(".imgpack").filter(|id| id::is_image_id(id)) else {
                continue;
            };
            if matches!(self.status_of(id)?, Some(Status::Failed | Status::Deleted)) {
                let _ = std::fs::remove_file(images.join(&entry));
            }
        }
        Ok(())
    }

    pub(super) fn status_of(&self, id: &str) -> Result<Option<Status>> {
        Ok(self.store()?.get(id)?.map(|r| r.status))
    }

    pub(super) fn remove_outputs(&self, id: &str) {
        let _ = std::fs::remove_dir_all(self.scratch_dir(id));
        let _ = std::fs::remove_file(self.archive_path(id));
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("reading the library directory", e).in_file(dir)),
    };
    Ok(entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect())
}
