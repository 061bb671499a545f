//! Where a library keeps its files: uploads and archives behind one small trait,
//! [`Objects`], with two backends chosen by the library's location: a local directory
//! ([`LocalObjects`], as it always was) and an S3-compatible bucket under a prefix
//! ([`S3Objects`](s3::S3Objects), feature `s3`, for `s3://BUCKET/PREFIX`).
//!
//! Both keep the same layout ([`keys`]): `incoming/<account>/<name>` for uploads and
//! `images/<image-id>.imgpack` for archives, which are never rewritten once registered.
//! Every key is built from a validated account id, image id or upload name only.
//!
//! The operations are what the library does with files: store an upload atomically
//! ([`Objects::put_upload`]), open one for a registration ([`Objects::open_upload`]), write
//! an archive that appears only when complete ([`Objects::create_archive`]), open one for
//! random access ([`Objects::open_archive`]), delete, list, and clean up after registrations
//! that died ([`Objects::discard_scratch`]: scratch files, or multipart uploads).

#[cfg(feature = "s3")]
pub mod in_place;
pub mod keys;
pub mod local;
#[cfg(feature = "s3")]
pub mod s3;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::lease::HostIdentity;
use crate::control::Control;
use crate::error::{Error, IoContext, Result};
use crate::input::Input;
use crate::read_at::{FileAt, ReadAt};
use crate::sink::ArchiveSink;

pub use local::LocalObjects;

/// What a library does with its files; see the module docs.
pub trait Objects: Send + Sync {
    /// The library's location as the user gave it (a directory or `s3://BUCKET/PREFIX`).
    fn location(&self) -> String;

    /// The directory, for a library on the local file system.
    fn local_root(&self) -> Option<&Path>;

    /// Stores `body` (`size` bytes, if known, for progress) as upload `name` of `account`
    /// (both already validated), atomically: a failure or interruption leaves no upload.
    /// Returns the bytes stored.
    fn put_upload(
        &self,
        account: &str,
        name: &str,
        body: &mut dyn Read,
        size: Option<u64>,
        control: &Control,
    ) -> Result<u64>;

    /// Aborts the multipart uploads left by `images upload` processes that died (S3: each
    /// records its upload in a marker with a lease, judged by `host` at `now` as a
    /// registration's is); returns how many. A local library has none: its uploads are
    /// unnamed files that vanish with their process.
    fn reap_interrupted_uploads(&self, host: &HostIdentity, now: i64) -> Result<usize>;

    /// Opens upload `name` of `account` for a registration.
    fn open_upload(&self, account: &str, name: &str) -> Result<Box<dyn StoredUpload>>;

    /// Prepares registration `id`'s scratch space; returns where spill files should go
    /// (`None`: the system's temporary directory).
    fn prepare(&self, id: &str) -> Result<Option<PathBuf>>;

    /// Starts archive `id`, which appears (read-only) only when the sink is finished.
    fn create_archive(&self, id: &str) -> Result<ArchiveOut>;

    /// Opens archive `id` for random access; `None` if it does not exist.
    fn open_archive(&self, id: &str) -> Result<Option<ArchiveSource>>;

    /// Deletes archive `id`; a missing one is not an error.
    fn delete_archive(&self, id: &str) -> Result<()>;

    /// The ids of the archives stored.
    fn archive_ids(&self) -> Result<Vec<String>>;

    /// The ids of registrations with scratch state left (directories, multipart uploads).
    fn scratch_ids(&self) -> Result<Vec<String>>;

    /// Removes registration `id`'s scratch state: its scratch directory, or aborts its
    /// multipart upload. Never touches a completed archive.
    fn discard_scratch(&self, id: &str) -> Result<()>;

    /// Stores a small object (a chunk's frame, an image index) at `key`, relative to the
    /// library and checked by [`keys::check_object_key`], atomically and durably.
    fn put_object(&self, key: &str, bytes: &[u8]) -> Result<()>;

    /// The small object at `key`, at most `limit` bytes (a larger one is an error); `None` if
    /// there is none.
    fn get_object(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>>;

    /// Deletes the object at `key`; a missing one is not an error.
    fn delete_object(&self, key: &str) -> Result<()>;

    /// The objects under the directory-like `prefix`, as library-relative keys with lengths.
    fn list_objects(&self, prefix: &str) -> Result<Vec<(String, u64)>>;

    /// Stores a small object like [`put_object`](Self::put_object), atomically (a reader sees
    /// all of it or nothing) but not necessarily durably until [`sync_objects`](Self::sync_objects)
    /// names it: a registration writes its frames this way and makes them durable all at once
    /// before its image can become available. An object store's PUT is durable when answered.
    fn put_object_unsynced(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.put_object(key, bytes)
    }

    /// Makes the objects written by [`put_object_unsynced`](Self::put_object_unsynced) at
    /// `keys` durable (their bytes and their names).
    fn sync_objects(&self, keys: &[String]) -> Result<()> {
        let _ = keys;
        Ok(())
    }

    /// Fetches the object at `key`, expected to be `len` bytes long, ahead of its read: its
    /// bytes where they must be carried (an object store), or `None` once a local file has
    /// been handed to the kernel's read-ahead, so that the later read finds it in the page
    /// cache without this copy. A hint: anything unexpected gives `None`, and the read itself
    /// reports it.
    fn prefetch_object(&self, key: &str, len: u64) -> Option<Vec<u8>> {
        self.get_object(key, len)
            .ok()
            .flatten()
            .filter(|bytes| bytes.len() as u64 == len)
    }

    /// Reads the object at `key`, which must be exactly `buf.len()` bytes long, into `buf`
    /// (one read where the backend allows: no buffer of its own, no copy); `false` if there
    /// is no such object.
    fn read_object_into(&self, key: &str, buf: &mut [u8]) -> Result<bool> {
        let Some(bytes) = self.get_object(key, buf.len() as u64)? else {
            return Ok(false);
        };
        if bytes.len() != buf.len() {
            return Err(object_length_error(key, bytes.len() as u64, buf.len()));
        }
        buf.copy_from_slice(&bytes);
        Ok(true)
    }
}

/// An upload opened for registration.
pub trait StoredUpload: Send {
    /// The bytes to convert (consumed once).
    fn body(&mut self) -> Result<UploadBody>;

    /// Which upload this is, as found when opened: a local file's device, inode, size and
    /// times, an object's ETag, size and last-modified time. The same file (or object
    /// version) always gives the same identity, a file stored again under the same name a
    /// new one; the catalog refuses to make two images of one identity.
    fn identity(&self) -> String;

    /// Removes the upload (after its image is registered). A new upload stored under the same
    /// name meanwhile is left alone where the backend can tell.
    fn remove(&self) -> io::Result<()>;
}

/// How a registration reads an upload.
pub enum UploadBody {
    /// Through the engine's usual input: a local file read in place, or a stream (a
    /// streaming GET) whose layers are peeled as it arrives.
    Input(Input),
    /// An image format that needs random access, read from the object store in place (by
    /// ranged GETs, or from a temporary file as the download fills it) instead of being
    /// spilled whole first; with the upload's name.
    #[cfg(feature = "s3")]
    Ranged(in_place::InPlaceUpload, crate::input::detect::Format, String),
    /// An upload that is an imgpack archive, read in place by ranged GETs; with its name.
    #[cfg(feature = "s3")]
    Archive(crate::remote::S3ReadAt, String),
}

/// Where an archive being registered goes: a [`LocalArchive`](local::LocalArchive) file or a
/// multipart upload.
pub enum ArchiveOut {
    /// A file in the library directory.
    Local(local::LocalArchive),
    /// The archive without its frames, kept in memory for a deduplicated image's index.
    Index(super::chunks::IndexSink),
    /// A multipart upload into the bucket.
    #[cfg(feature = "s3")]
    S3(crate::remote::MultipartSink),
}

impl Write for ArchiveOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ArchiveOut::Local(sink) => sink.write(buf),
            ArchiveOut::Index(sink) => sink.write(buf),
            #[cfg(feature = "s3")]
            ArchiveOut::S3(sink) => sink.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ArchiveOut::Local(sink) => sink.flush(),
            ArchiveOut::Index(sink) => sink.flush(),
            #[cfg(feature = "s3")]
            ArchiveOut::S3(sink) => sink.flush(),
        }
    }
}

impl ArchiveSink for ArchiveOut {
    fn name(&self) -> String {
        match self {
            ArchiveOut::Local(sink) => sink.name(),
            ArchiveOut::Index(sink) => sink.name(),
            #[cfg(feature = "s3")]
            ArchiveOut::S3(sink) => sink.name(),
        }
    }

    fn spill_dir(&self) -> Option<PathBuf> {
        match self {
            ArchiveOut::Local(sink) => sink.spill_dir(),
            ArchiveOut::Index(sink) => sink.spill_dir(),
            #[cfg(feature = "s3")]
            ArchiveOut::S3(sink) => sink.spill_dir(),
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            ArchiveOut::Local(sink) => sink.finish(),
            ArchiveOut::Index(sink) => sink.finish(),
            #[cfg(feature = "s3")]
            ArchiveOut::S3(sink) => sink.finish(),
        }
    }
}

/// A stored archive opened for random access.
pub enum ArchiveSource {
    /// A file.
    File(FileAt),
    /// A deduplicated image: its index and the chunk store.
    Dedup(Box<super::chunks::VirtualArchive>),
    /// An object read by ranged GETs.
    #[cfg(feature = "s3")]
    S3(crate::remote::S3ReadAt),
}

impl ArchiveSource {
    /// Opens an archive named by a path, or (feature `s3`) an object `s3://BUCKET/KEY` read
    /// by ranged GETs.
    pub fn open(location: &Path) -> Result<ArchiveSource> {
        #[cfg(feature = "s3")]
        if let Some(object) = crate::remote::open_url(location)? {
            return Ok(ArchiveSource::S3(object));
        }
        let file = std::fs::File::open(location).context("opening the archive", location)?;
        Ok(ArchiveSource::File(
            FileAt::new(file).context("reading the archive", location)?,
        ))
    }
}

impl ReadAt for ArchiveSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            ArchiveSource::File(file) => file.read_exact_at(buf, offset),
            ArchiveSource::Dedup(archive) => archive.read_exact_at(buf, offset),
            #[cfg(feature = "s3")]
            ArchiveSource::S3(object) => object.read_exact_at(buf, offset),
        }
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            ArchiveSource::File(file) => file.read_at_most(buf, offset),
            ArchiveSource::Dedup(archive) => archive.read_at_most(buf, offset),
            #[cfg(feature = "s3")]
            ArchiveSource::S3(object) => object.read_at_most(buf, offset),
        }
    }

    fn size(&self) -> u64 {
        match self {
            ArchiveSource::File(file) => file.size(),
            ArchiveSource::Dedup(archive) => archive.size(),
            #[cfg(feature = "s3")]
            ArchiveSource::S3(object) => object.size(),
        }
    }
}

/// The backend for a library location: `s3://BUCKET/PREFIX` (feature `s3`) or a directory
/// (created with its layout if missing).
pub fn open(location: &Path) -> Result<Box<dyn Objects>> {
    #[cfg(feature = "s3")]
    if let Some(objects) = s3::S3Objects::open(location)? {
        return Ok(Box::new(objects));
    }
    if is_remote(location) {
        return Err(Error::unsupported(
            "this imgpack was built without the s3 feature; it cannot open s3:// libraries",
        ));
    }
    Ok(Box::new(LocalObjects::open(location)?))
}

/// Whether `location` names a library in an object store rather than a directory.
pub fn is_remote(location: &Path) -> bool {
    location.to_str().is_some_and(|s| s.starts_with("s3://"))
}

/// Copies `body` into `out` in 1 MiB steps, checking for cancellation and reporting progress
/// (of `size` bytes, if known).
pub(crate) fn copy_with_progress(
    body: &mut dyn Read,
    out: &mut dyn Write,
    size: Option<u64>,
    control: &Control,
) -> Result<u64> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        control.check()?;
        let n = crate::input::read_full(&mut &mut *body, &mut buffer)
            .map_err(|e| io_error("reading the upload", e))?;
        if n == 0 {
            return Ok(copied);
        }
        out.write_all(&buffer[..n])
            .map_err(|e| io_error("storing the upload", e))?;
        copied += n as u64;
        control.report(copied, size, 0);
    }
}

/// An I/O error as an imgpack error: one that carries an imgpack error comes back out whole,
/// any other is described as `what` failing.
/// An object whose length is not the `expected` one its reader was told.
pub(crate) fn object_length_error(key: &str, actual: u64, expected: usize) -> Error {
    Error::new(
        crate::error::ErrorKind::Corrupt,
        format!("object {key} holds {actual} bytes, its record says {expected}"),
    )
}

fn io_error(what: &str, e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        Error::from(e)
    } else {
        Error::io(what, e)
    }
}
