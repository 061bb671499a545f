//! What `imgpack serve IMAGE-ID` serves from a library: the archive of an image the caller may
//! build from, under the same visibility and status rules as `images build` (see [`super::policy`]).
//!
//! This is the one place the serve command learns where an image's bytes are; pointing the
//! library at an object store changes what this returns, not the server.

use super::record::{catalog_error, ImageRecord};
use super::{policy, Library};
use crate::archive::reader::ArchiveReader;
use crate::error::Result;
use crate::read_at::FileAt;

impl Library {
    /// The record and the opened archive of image `id`, if `caller` may build servers from
    /// it (its own or another's public image, `available` or `deprecated`). Others' private
    /// images are answered as unknown.
    pub fn serve_source(&self, caller: &str, id: &str) -> Result<(ImageRecord, ArchiveReader<FileAt>)> {
        let record = self.show(caller, id)?;
        if !policy::usable_status(record.status) {
            return Err(catalog_error(format!(
                "{id} is {}; only available or deprecated images can be served",
                record.status
            )));
        }
        match ArchiveReader::open_path(&self.archive_path(id)) {
            Ok(archive) => Ok((record, archive)),
            // Destroyed since it was read: say so rather than name a missing file.
            Err(_) if !self.status_of(id)?.is_some_and(policy::usable_status) => {
                Err(catalog_error(format!("{id} was destroyed meanwhile")))
            }
            Err(e) => Err(e),
        }
    }
}
