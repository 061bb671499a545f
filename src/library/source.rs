//! Where a registration's bytes come from: an upload in a local library's
//! `incoming/<account>/`, opened so that no path trick (symbolic links, hard links, `..`, a
//! swapped file) can make the library read or remove another file, and the checks on the
//! names and texts a caller supplies.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode as FileMode, OFlags};

use super::objects::UploadBody;
use super::record::catalog_error;
use super::store::upload_registered;
use super::{Changes, ImageRecord, Library, SourceType, Status};
use crate::error::{Error, Result};

/// The bytes being converted, and what the record says about them.
pub(super) struct SourceInput {
    pub(super) body: UploadBody,
    pub(super) name: String,
    pub(super) source_type: SourceType,
    /// Which upload this is ([`StoredUpload::identity`](super::objects::StoredUpload::identity)),
    /// recorded in the catalog so it becomes one image only; `None` for a snapshot.
    pub(super) identity: Option<String>,
}

/// An opened upload, with the directory it was found in, so the very same file is removed.
pub(super) struct Upload {
    pub(super) dir: OwnedFd,
    pub(super) name: String,
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) file: File,
    /// Device, inode, size and the modification and change times in nanoseconds, as found
    /// when opened: a file stored again under the same name differs in one of them.
    pub(super) identity: String,
}

impl Upload {
    /// Removes the upload from `incoming/` if the name still refers to the file registered
    /// (a new upload under the same name is left alone), and flushes the directory.
    pub(super) fn remove(&self) -> io::Result<()> {
        match rustix::fs::statat(&self.dir, self.name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if stat.st_dev == self.dev && stat.st_ino == self.ino => {
                rustix::fs::unlinkat(&self.dir, self.name.as_str(), AtFlags::empty())?;
                rustix::fs::fsync(&self.dir)?;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Library {
    /// Records in the catalog that the `creating` image `record` is made from the upload of
    /// `identity`, before any work is done. If another image was already made from that very
    /// upload (a registrar that opened it just before it was registered and removed), the
    /// record is withdrawn (`deleted`, so it lists nowhere) and the registration refused:
    /// one upload is one image, whatever the timing.
    pub(super) fn claim_upload(&self, record: &ImageRecord, identity: Option<&str>) -> Result<()> {
        let Some(identity) = identity else {
            return Ok(());
        };
        let claimed = self.store()?.claim_upload(&record.id, identity);
        let other = match claimed {
            Ok(None) => return Ok(()),
            Ok(Some(other)) => other,
            Err(e) => {
                let _ = self.withdraw(&record.id, "its upload could not be recorded");
                return Err(e);
            }
        };
        self.withdraw(
            &record.id,
            &format!("a second registration of the upload of {other}"),
        )?;
        Err(upload_registered(&record.source, &other))
    }

    /// Takes a `creating` record that never did any work out of the catalog's listings.
    fn withdraw(&self, id: &str, why: &str) -> Result<()> {
        let changes = Changes {
            reason: Some(format!("withdrawn: {why}")),
            ..Changes::default()
        };
        if self
            .store()?
            .compare_and_set(id, &[Status::Creating], Some(Status::Deleted), &changes)?
        {
            Ok(())
        } else {
            Err(catalog_error(format!(
                "{id}: the catalog no longer expects this registration"
            )))
        }
    }
}

/// Opens `name` in the incoming directory `dir_path`: a regular file with no other hard link,
/// never through a symbolic link, together with that directory.
pub(super) fn open_upload_file(dir_path: &Path, name: &str) -> Result<Upload> {
    check_source_name(name)?;
    let dir = rustix::fs::open(
        dir_path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        FileMode::empty(),
    )
    .map_err(|e| Error::io("opening the incoming directory", e.into()).in_file(dir_path))?;
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        FileMode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => Error::invalid_argument(format!(
            "{name:?} in your incoming directory is a symbolic link; upload the file itself"
        )),
        rustix::io::Errno::NOENT => {
            Error::invalid_argument(format!("there is no file {name:?} in your incoming directory"))
        }
        e => Error::io(format!("opening {name:?} in your incoming directory"), e.into()),
    })?;
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {name:?}"), e))?;
    if !meta.file_type().is_file() {
        return Err(Error::invalid_argument(format!(
            "{name:?} in your incoming directory is not a regular file"
        )));
    }
    if meta.nlink() != 1 {
        return Err(Error::invalid_argument(format!(
            "{name:?} in your incoming directory has other hard links; upload a copy"
        )));
    }
    let identity = format!(
        "file:{}:{}:{}:{}.{:09}:{}.{:09}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    Ok(Upload {
        dir,
        name: name.to_string(),
        dev: meta.dev(),
        ino: meta.ino(),
        file,
        identity,
    })
}

/// Refuses anything but one plain file name: no path, no `.`/`..`, nothing hidden in it.
pub fn check_source_name(name: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(Error::invalid_argument(format!(
            "source {name:?} {why}; give a file name in your incoming directory"
        )))
    };
    if name.is_empty() {
        return refuse("is empty");
    }
    if name == "." || name == ".." {
        return refuse("is not a file name");
    }
    if name.contains('/') {
        return refuse("is a path");
    }
    if name.len() > 255 || name.chars().any(char::is_control) {
        return refuse("is not a valid file name");
    }
    Ok(())
}

pub(super) fn check_text(field: &str, value: &str, min: usize, max: usize) -> Result<()> {
    if value.chars().count() < min {
        return Err(Error::invalid_argument(format!("the {field} must not be empty")));
    }
    if value.len() > max {
        return Err(Error::invalid_argument(format!(
            "the {field} is longer than {max} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid_argument(format!(
            "the {field} holds control characters"
        )));
    }
    Ok(())
}

pub(super) fn check_username(name: &str) -> Result<()> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "username {name:?} must be 1-32 letters, digits, '_', '-' or '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_are_single_file_names() {
        for good in ["slackware.img", "a", "..hidden", "disk .raw"] {
            assert!(check_source_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "../x", "/etc/passwd", "a/b", "x\0y", "x\ny"] {
            assert!(check_source_name(bad).is_err(), "{bad:?}");
        }
    }
}
