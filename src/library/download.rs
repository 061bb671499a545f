//! Downloading an image: its archive exported as raw, qcow2, VMDK, VHD or VHDX
//! ([`Library::download`]), for whoever may build servers from it.

use std::path::Path;
use std::time::Instant;

use super::Library;
use crate::error::{Error, ErrorKind, Result};
use crate::export::{export_reader, ExportOptions, ExportReport};
use crate::pipeline::digest::content_digest;
use crate::pipeline::with_pool;

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
        let usable = self.open_usable(
            caller,
            id,
            "only available or deprecated images can be downloaded",
        )?;
        let (record, reader) = (usable.record, usable.archive);
        let name = usable.archive_name.display().to_string();
        with_pool(options.threads, || {
            // The content must be the disk registered: every chunk's SHA-256 is checked as it
            // is decoded, and here the image digest those SHA-256s make (no decoding at the
            // default 1 MiB chunks) against the catalog's, before anything is written.
            if let Some(recorded) = &record.digest {
                let content = content_digest(&reader, &options.control)?.to_string();
                if &content != recorded {
                    return Err(Error::new(
                        ErrorKind::Checksum,
                        format!(
                            "{id}: the archive's content has digest {content}, not the {recorded} recorded"
                        ),
                    )
                    .in_file(Path::new(&name)));
                }
            }
            export_reader(&reader, Path::new(&name), output, options, start)
        })
    }
}
