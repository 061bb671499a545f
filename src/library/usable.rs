//! Opening an image for use — building a server from it, downloading it, serving it — under
//! one rule (see [`super::policy`]): the caller may use the image (its own, or another
//! account's public one; others' private images are answered as unknown ids) and it is
//! `available` or `deprecated`. The archive is opened from the library's store (a directory or
//! an object store), and its stored image digest must be the one the catalog recorded, so an
//! archive swapped or damaged in the store is refused before a byte of it is used.

use std::path::PathBuf;
use std::sync::Arc;

use super::objects::ArchiveSource;
use super::record::{catalog_error, ImageRecord};
use super::{chunks, policy, Library};
use crate::archive::reader::ArchiveReader;
use crate::error::{Error, ErrorKind, Result};

/// An image the caller may use, with its archive open.
pub struct UsableImage {
    /// The catalog's record.
    pub record: ImageRecord,
    /// The archive, read from the library's store.
    pub archive: ArchiveReader<ArchiveSource>,
    /// How errors name the archive: its path, or `s3://BUCKET/PREFIX/images/ID.imgpack`.
    pub archive_name: PathBuf,
}

impl Library {
    /// Image `id`'s archive: its index over the chunk store when it is deduplicated, else its
    /// self-contained archive; `None` if neither exists.
    pub(super) fn open_image_source(&self, id: &str) -> Result<Option<ArchiveSource>> {
        let key = chunks::index_key(id)?;
        match self.objects.get_object(&key, chunks::index::MAX_INDEX_OBJECT)? {
            Some(bytes) => {
                let name = format!("{}/{key}", self.objects.location());
                let index = chunks::ImageIndex::parse(&bytes, &name)?;
                let archive = chunks::VirtualArchive::new(index, Arc::clone(&self.objects), name);
                Ok(Some(ArchiveSource::Dedup(Box::new(archive))))
            }
            None => self.objects.open_archive(id),
        }
    }

    /// Opens image `id` for `caller` to use; `rule` ends the refusal of an unusable status
    /// ("{id} is failed; {rule}").
    pub fn open_usable(&self, caller: &str, id: &str, rule: &str) -> Result<UsableImage> {
        let record = self.show(caller, id)?;
        if !policy::usable_status(record.status) {
            return Err(catalog_error(format!("{id} is {}; {rule}", record.status)));
        }
        let mut archive_name = match self.objects.local_root() {
            Some(_) => self.archive_path(id),
            None => PathBuf::from(format!("{}/images/{id}.imgpack", self.objects.location())),
        };
        let opened = self.open_image_source(id).and_then(|source| match source {
            Some(source) => {
                if let ArchiveSource::Dedup(archive) = &source {
                    archive_name = PathBuf::from(archive.name());
                }
                ArchiveReader::open(source).map_err(|e| e.in_file(&archive_name))
            }
            None => Err(Error::new(ErrorKind::Io, "the archive is missing").in_file(&archive_name)),
        });
        let archive = match opened {
            Ok(archive) => archive,
            // Destroyed since it was read: say so rather than name a missing file.
            Err(_) if !self.status_of(id)?.is_some_and(policy::usable_status) => {
                return Err(catalog_error(format!("{id} was destroyed meanwhile")));
            }
            Err(e) => return Err(e),
        };
        if let Some(recorded) = &record.digest {
            let stored = archive.image_digest().map(|d| d.to_string());
            if stored.as_deref() != Some(recorded.as_str()) {
                return Err(Error::new(
                    ErrorKind::Checksum,
                    format!(
                        "{id}: the archive's image digest ({}) is not the one the catalog recorded ({recorded})",
                        stored.as_deref().unwrap_or("none")
                    ),
                )
                .in_file(&archive_name));
            }
        }
        Ok(UsableImage {
            record,
            archive,
            archive_name,
        })
    }
}
