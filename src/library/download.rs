//! Downloading an image: its archive exported as raw, qcow2, VMDK, VHD or VHDX
//! ([`Library::download`]), for whoever may build servers from it.

use std::path::Path;
use std::time::Instant;

use super::record::catalog_error;
use super::{policy, Library};
use crate::archive::reader::ArchiveReader;
use crate::error::Result;
use crate::export::{export_reader, ExportOptions, ExportReport};
use crate::pipeline::with_pool;
use crate::read_at::FileAt;

impl Library {
    /// Writes image `id` to `output` (a path, or `-` for standard output where the format
    /// streams) in `options.format`. Allowed exactly where [`Library::build`] is: images the
    /// caller may use, in `available` or `deprecated` status; others' private images are
    /// answered as unknown ids. The output appears only when complete.
    pub fn download(
        &self,
        caller: &str,
        id: &str,
        output: &Path,
        options: &ExportOptions,
    ) -> Result<ExportReport> {
        let start = Instant::now();
        let record = self.show(caller, id)?;
        if !policy::usable_status(record.status) {
            return Err(catalog_error(format!(
                "{id} is {}; only available or deprecated images can be downloaded",
                record.status
            )));
        }
        let reader = match self.open_image_archive(id) {
            Ok(reader) => reader,
            // Destroyed since it was read: say so rather than name a missing file.
            Err(_) if !self.status_of(id)?.is_some_and(policy::usable_status) => {
                return Err(catalog_error(format!("{id} was destroyed meanwhile")));
            }
            Err(e) => return Err(e),
        };
        // DIGEST CHECK (issue 14, part 3): once archives and the catalog carry the image
        // digest, compare the archive's digest with `record`'s here and refuse a mismatch
        // before anything is written; and have the export verify the content it writes against
        // it before the output is committed (leaving nothing on a mismatch).
        let name = format!("{id} ({})", self.archive_path(id).display());
        with_pool(options.threads, || {
            export_reader(&reader, Path::new(&name), output, options, start)
        })
    }

    /// Opens image `id`'s archive: the one place a download reads the image store, so a
    /// store elsewhere (an object store) replaces only this function.
    fn open_image_archive(&self, id: &str) -> Result<ArchiveReader<FileAt>> {
        ArchiveReader::open_path(&self.archive_path(id))
    }
}
