//! Building a server disk from an image, as the server build system does.

use std::path::Path;
use std::time::Instant;

use super::{BuildReport, Library};
use crate::control::Control;
use crate::error::{Error, IoContext, Result};
use crate::extract::write_disk;
use crate::output::AtomicFile;

impl Library {
    /// Writes image `id` onto a new server disk at `disk` (a sparse raw file of `disk_size`
    /// bytes, appearing only when complete), as the server build system does. Allowed for
    /// images the caller may use, in `available` or `deprecated` status.
    pub fn build(
        &self,
        caller: &str,
        id: &str,
        disk: &Path,
        disk_size: u64,
        control: &Control,
    ) -> Result<BuildReport> {
        let start = Instant::now();
        let usable = self.open_usable(
            caller,
            id,
            "servers can only be built from available or deprecated images",
        )?;
        let (record, reader, archive_name) = (usable.record, usable.archive, usable.archive_name);
        let check_fits = |virtual_size: u64| {
            if disk_size < virtual_size {
                return Err(Error::invalid_argument(format!(
                    "{id} needs a disk of at least {virtual_size} bytes ({} MB); it will not fit on a disk of {disk_size} bytes",
                    virtual_size.div_ceil(1 << 20)
                )));
            }
            Ok(())
        };
        check_fits(record.virtual_size)?;
        if std::fs::symlink_metadata(disk).is_ok() {
            return Err(
                Error::invalid_argument("the server disk already exists; builds write new disks")
                    .in_file(disk),
            );
        }
        check_fits(reader.virtual_size())?;
        let out = AtomicFile::create(disk)?;
        out.file()
            .set_len(disk_size)
            .context("sizing the server disk", disk)?;
        write_disk(&reader, out.file(), control).map_err(|e| e.in_file(&archive_name))?;
        control.check()?;
        out.commit()?;
        Ok(BuildReport {
            image: id.to_string(),
            disk: disk.display().to_string(),
            disk_size,
            virtual_size: reader.virtual_size(),
            data_size: reader.disk_size(),
            arch: record.arch,
            mode: record.mode,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}
