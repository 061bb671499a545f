//! What `imgpack serve IMAGE-ID` serves from a library: the archive of an image the caller may
//! build from, under the same rules as `images build` ([`Library::open_usable`]), from the
//! library's store (a directory or an object store).

use super::objects::ArchiveSource;
use super::record::ImageRecord;
use super::Library;
use crate::archive::reader::ArchiveReader;
use crate::error::Result;

impl Library {
    /// The record and the opened archive of image `id`, if `caller` may build servers from
    /// it (its own or another's public image, `available` or `deprecated`). Others' private
    /// images are answered as unknown.
    pub fn serve_source(
        &self,
        caller: &str,
        id: &str,
    ) -> Result<(ImageRecord, ArchiveReader<ArchiveSource>)> {
        let usable = self.open_usable(caller, id, "only available or deprecated images can be served")?;
        Ok((usable.record, usable.archive))
    }
}
