//! Changing and deleting an image: ownership, the metadata checks, the deprecation rule, and
//! compare-and-swap status changes that re-decide when another process got there first.

use super::record::catalog_error;
use super::source::{check_text, check_username};
use super::{not_found, policy, Changes, ImageRecord, ImageUpdate, Library, Status};
use crate::error::{Error, Result};

impl Library {
    /// The caller's own image, refusing others' without revealing private ones.
    pub(super) fn owned(&self, caller: &str, id: &str) -> Result<ImageRecord> {
        let record = self.show(caller, id)?;
        if !policy::owns(&record, caller) {
            return Err(catalog_error(format!(
                "{id} belongs to another account; only its owner can change it"
            )));
        }
        if record.status == Status::Deleted {
            return Err(catalog_error(format!("{id} is deleted")));
        }
        Ok(record)
    }

    /// Changes an image's metadata, visibility or deprecation (owner only; `official` is
    /// the operator's alone). Each change is applied only if the status is still what was read.
    pub fn update(&self, caller: &str, id: &str, update: &ImageUpdate) -> Result<ImageRecord> {
        self.owned(caller, id)?;
        if update.official.is_some() && caller != self.settings.operator {
            return Err(catalog_error(
                "only the operator account can mark images official",
            ));
        }
        if let Some(name) = &update.name {
            check_text("name", name, 1, 255)?;
        }
        if let Some(description) = &update.description {
            check_text("description", description, 0, 1024)?;
        }
        if let Some(username) = update.username.as_deref().filter(|u| !u.is_empty()) {
            check_username(username)?;
        }
        let changes = Changes {
            name: update.name.clone(),
            description: update.description.clone(),
            arch: update.arch,
            mode: update.mode,
            public: update.public,
            official: update.official,
            username: update.username.clone().map(|u| Some(u).filter(|u| !u.is_empty())),
            ..Changes::default()
        };
        if changes.is_empty() && update.deprecated.is_none() {
            return Err(Error::invalid_argument("nothing to update"));
        }
        // The status is compared and swapped in the store; when another process changed it
        // between our read and our write, read again and re-decide (deprecating an image that
        // just became deprecated is then a no-op, not an error).
        for _ in 0..8 {
            let record = self.owned(caller, id)?;
            let (expected, to) = policy::update_transition(id, record.status, update.deprecated)?;
            if self.store()?.compare_and_set(id, &expected, to, &changes)? {
                return self.store()?.get(id)?.ok_or_else(|| not_found(id));
            }
        }
        let now = self.store()?.get(id)?.map_or(Status::Deleted, |r| r.status);
        Err(catalog_error(format!(
            "{id} kept changing (now {now}); the update was not applied"
        )))
    }

    /// Deletes an image (owner only): status `deleted`, archive removed.
    pub fn destroy(&self, caller: &str, id: &str) -> Result<ImageRecord> {
        let record = self.owned(caller, id)?;
        if !policy::transition_allowed(record.status, Status::Deleted) {
            return Err(catalog_error(format!(
                "{id} is {}; it cannot be destroyed now",
                record.status
            )));
        }
        let expected = policy::sources_of(Status::Deleted);
        if !self
            .store()?
            .compare_and_set(id, &expected, Some(Status::Deleted), &Changes::default())?
        {
            return Err(catalog_error(format!("{id} was changed or destroyed meanwhile")));
        }
        // Its frames' references go first, then its index: a kill in between leaves what
        // `images gc` removes (it releases the references of every deleted image too).
        self.store()?.release_dead_images()?;
        self.objects.delete_archive(id)?;
        self.objects.delete_object(&super::chunks::index_key(id)?)?;
        self.store()?.get(id)?.ok_or_else(|| not_found(id))
    }
}
