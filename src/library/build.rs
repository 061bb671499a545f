//! Building a server disk from an image, as the server build system does.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::record::catalog_error;
use super::{policy, BuildReport, Library};
use crate::archive::reader::ArchiveReader;
use crate::control::Control;
use crate::error::{Error, ErrorKind, IoContext, Result};
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
        let record = self.show(caller, id)?;
        if !policy::usable_status(record.status) {
            return Err(catalog_error(format!(
                "{id} is {}; servers can only be built from available or deprecated images",
                record.status
            )));
        }
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
        let archive_name = match self.objects.local_root() {
            Some(_) => self.archive_path(id),
            None => PathBuf::from(format!("{}/images/{id}.imgpack", self.objects.location())),
        };
        let opened = self.objects.open_archive(id).and_then(|source| match source {
            Some(source) => ArchiveReader::open(source).map_err(|e| e.in_file(&archive_name)),
            None => Err(Error::new(ErrorKind::Io, "the archive is missing").in_file(&archive_name)),
        });
        let reader = match opened {
            Ok(reader) => reader,
            // Destroyed since it was read: say so rather than name a missing file.
            Err(_) if !self.status_of(id)?.is_some_and(policy::usable_status) => {
                return Err(catalog_error(format!("{id} was destroyed meanwhile")));
            }
            Err(e) => return Err(e),
        };
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
