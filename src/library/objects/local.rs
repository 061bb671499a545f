//! [`LocalObjects`]: a library in a local directory, as it always was. Uploads are opened so
//! that no path trick can redirect the read (see `source.rs`), archives are written unnamed in
//! the registration's scratch directory `tmp/<id>/`, fsynced, made read-only and renamed into
//! `images/` only when complete, and spill files go to that scratch directory.

use std::fs::Permissions;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::super::lease::HostIdentity;
use super::{keys, ArchiveOut, ArchiveSource, Objects, StoredUpload, UploadBody};
use crate::control::Control;
use crate::error::{Error, IoContext, Result};
use crate::input::Input;
use crate::output::AtomicFile;
use crate::read_at::FileAt;
use crate::sink::{ArchiveSink, FileSink};
use crate::sys::sync_dir;

use super::super::source::{open_upload_file, Upload};

/// A library directory: `incoming/`, `images/`, `tmp/` (and the catalog beside them).
#[derive(Debug)]
pub struct LocalObjects {
    root: PathBuf,
}

impl LocalObjects {
    /// The library at `root`, creating its directories where missing.
    pub fn open(root: &Path) -> Result<LocalObjects> {
        for dir in [
            root.to_path_buf(),
            root.join(keys::INCOMING),
            root.join(keys::IMAGES),
            root.join(keys::SCRATCH),
        ] {
            std::fs::create_dir_all(&dir).context("creating the library directory", &dir)?;
        }
        Ok(LocalObjects {
            root: root.to_path_buf(),
        })
    }

    fn archive_path(&self, id: &str) -> Result<PathBuf> {
        Ok(self.root.join(keys::archive(id)?))
    }

    fn scratch_dir(&self, id: &str) -> PathBuf {
        self.root.join(keys::SCRATCH).join(id)
    }

    fn incoming_dir(&self, account: &str) -> Result<PathBuf> {
        let dir = self.root.join(keys::INCOMING).join(account);
        std::fs::create_dir_all(&dir).context("creating the incoming directory", &dir)?;
        Ok(dir)
    }
}

impl Objects for LocalObjects {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn put_upload(
        &self,
        account: &str,
        name: &str,
        body: &mut dyn Read,
        size: Option<u64>,
        control: &Control,
    ) -> Result<u64> {
        keys::upload(account, name)?;
        let target = self.incoming_dir(account)?.join(name);
        let out = AtomicFile::create(&target)?;
        let mut writer = io::BufWriter::with_capacity(1 << 20, out.file());
        let copied = super::copy_with_progress(body, &mut writer, size, control)?;
        writer.flush().context("writing the upload", &target)?;
        drop(writer);
        out.commit()?;
        Ok(copied)
    }

    fn reap_interrupted_uploads(&self, _host: &HostIdentity, _now: i64) -> Result<usize> {
        Ok(0)
    }

    fn open_upload(&self, account: &str, name: &str) -> Result<Box<dyn StoredUpload>> {
        keys::upload(account, name)?;
        let upload = open_upload_file(&self.incoming_dir(account)?, name)?;
        Ok(Box::new(upload))
    }

    fn prepare(&self, id: &str) -> Result<Option<PathBuf>> {
        let scratch = self.scratch_dir(id);
        std::fs::create_dir(&scratch).context("creating the scratch directory", &scratch)?;
        Ok(Some(scratch))
    }

    fn create_archive(&self, id: &str) -> Result<ArchiveOut> {
        let staged = self.scratch_dir(id).join(format!("{id}{}", keys::ARCHIVE_SUFFIX));
        Ok(ArchiveOut::Local(LocalArchive {
            sink: FileSink::create(&staged)?,
            staged,
            target: self.archive_path(id)?,
        }))
    }

    fn open_archive(&self, id: &str) -> Result<Option<ArchiveSource>> {
        let path = self.archive_path(id)?;
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("opening the archive", e).in_file(&path)),
        };
        let file = FileAt::new(file).context("reading the archive", &path)?;
        Ok(Some(ArchiveSource::File(file)))
    }

    fn delete_archive(&self, id: &str) -> Result<()> {
        let archive = self.archive_path(id)?;
        match std::fs::remove_file(&archive) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing the archive", e).in_file(&archive)),
        }
        let images = self.root.join(keys::IMAGES);
        sync_dir(&images).context("flushing the images directory", &images)
    }

    fn archive_ids(&self) -> Result<Vec<String>> {
        Ok(read_dir_names(&self.root.join(keys::IMAGES))?
            .iter()
            .filter_map(|name| keys::image_of(name, keys::ARCHIVE_SUFFIX))
            .map(str::to_string)
            .collect())
    }

    fn scratch_ids(&self) -> Result<Vec<String>> {
        Ok(read_dir_names(&self.root.join(keys::SCRATCH))?
            .into_iter()
            .filter(|name| super::super::id::is_image_id(name))
            .collect())
    }

    fn discard_scratch(&self, id: &str) -> Result<()> {
        let _ = std::fs::remove_dir_all(self.scratch_dir(id));
        Ok(())
    }

    fn put_object(&self, key: &str, bytes: &[u8]) -> Result<()> {
        keys::check_object_key(key)?;
        let target = self.root.join(key);
        let dir = crate::output::parent_dir(&target);
        std::fs::create_dir_all(&dir).context("creating an object directory", &dir)?;
        let out = AtomicFile::create(&target)?;
        out.file()
            .write_all(bytes)
            .context("writing an object", &target)?;
        // Objects are written once and never changed (frames are named by their content and
        // a generation, indexes by their image), read-only like an image's archive.
        out.file()
            .set_permissions(Permissions::from_mode(0o444))
            .context("making an object read-only", &target)?;
        out.commit()
    }

    fn put_object_unsynced(&self, key: &str, bytes: &[u8]) -> Result<()> {
        keys::check_object_key(key)?;
        let target = self.root.join(key);
        let dir = crate::output::parent_dir(&target);
        std::fs::create_dir_all(&dir).context("creating an object directory", &dir)?;
        // Written under a temporary name and renamed, so a reader never sees half an object;
        // the name is the key's own (a writer's keys are unique) plus this process's id.
        let file_name = target.file_name().and_then(|n| n.to_str()).unwrap_or("object");
        let temp = dir.join(format!(".imgpack-tmp-{}-{file_name}", std::process::id()));
        let written = std::fs::File::create_new(&temp)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                // Start the write-back now, so the one sync before the image goes live
                // finds little left to flush (as the archive writer does every 8 MiB).
                crate::sys::start_writeback(&file, 0, bytes.len() as u64);
                Ok(())
            })
            .and_then(|()| std::fs::rename(&temp, &target));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(Error::io("writing an object", e).in_file(&target));
        }
        Ok(())
    }

    fn sync_objects(&self, keys: &[String]) -> Result<()> {
        sync_files_and_dirs(&self.root, keys)
    }

    fn read_object_into(&self, key: &str, buf: &mut [u8]) -> Result<bool> {
        keys::check_object_key(key)?;
        let path = self.root.join(key);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("opening an object", e).in_file(&path)),
        };
        let len = file.metadata().context("reading an object", &path)?.len();
        if len != buf.len() as u64 {
            return Err(super::object_length_error(key, len, buf.len()).in_file(&path));
        }
        std::os::unix::fs::FileExt::read_exact_at(&file, buf, 0).context("reading an object", &path)?;
        Ok(true)
    }

    fn prefetch_object(&self, key: &str, len: u64) -> Option<Vec<u8>> {
        // Opening the file reads its directory entry and inode (the part of a cold read that
        // waits), then the kernel reads its data in the background.
        let file = keys::check_object_key(key)
            .ok()
            .and_then(|()| std::fs::File::open(self.root.join(key)).ok())?;
        // A frame is written and read whole: if its last byte is cached (a read that must
        // not wait succeeds), so is the rest, and asking for it again only walks the cache.
        let mut last = [0u8];
        let cached = len > 0
            && rustix::io::preadv2(
                &file,
                &mut [io::IoSliceMut::new(&mut last)],
                len - 1,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) == Ok(1);
        if !cached {
            let _ = rustix::fs::fadvise(
                &file,
                0,
                std::num::NonZeroU64::new(len),
                rustix::fs::Advice::WillNeed,
            );
        }
        None
    }

    fn get_object(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        keys::check_object_key(key)?;
        let path = self.root.join(key);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("opening an object", e).in_file(&path)),
        };
        let mut bytes = Vec::new();
        // One byte past the limit tells a file that is too long from one that fits.
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .context("reading an object", &path)?;
        if bytes.len() as u64 > limit {
            return Err(Error::new(
                crate::error::ErrorKind::Corrupt,
                format!("the object is larger than the {limit} bytes expected"),
            )
            .in_file(&path));
        }
        Ok(Some(bytes))
    }

    fn delete_object(&self, key: &str) -> Result<()> {
        keys::check_object_key(key)?;
        let path = self.root.join(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing an object", e).in_file(&path)),
        }
    }

    fn list_objects(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        keys::check_object_key(prefix)?;
        let mut found = Vec::new();
        let mut pending = vec![prefix.to_string()];
        while let Some(dir) = pending.pop() {
            let path = self.root.join(&dir);
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("listing objects", e).in_file(&path)),
            };
            for entry in entries.filter_map(|e| e.ok()) {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let key = format!("{dir}/{name}");
                match entry.file_type() {
                    Ok(kind) if kind.is_dir() => pending.push(key),
                    Ok(kind) if kind.is_file() => {
                        found.push((key, entry.metadata().map(|m| m.len()).unwrap_or(0)));
                    }
                    _ => {}
                }
            }
        }
        Ok(found)
    }
}

impl StoredUpload for Upload {
    fn body(&mut self) -> Result<UploadBody> {
        // The very file already opened (and checked): a rename or symbolic link swapped in
        // meanwhile cannot redirect the read. Errors name the upload as the user knows it.
        let file = self
            .file
            .try_clone()
            .context("opening the upload", Path::new(&self.name))?;
        Ok(UploadBody::Input(Input::file(file, self.name.clone())))
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn remove(&self) -> io::Result<()> {
        hold_before_removing_upload();
        Upload::remove(self)
    }
}

/// An archive file staged in the scratch directory and moved into `images/`, read-only, when
/// finished.
pub struct LocalArchive {
    sink: FileSink,
    staged: PathBuf,
    target: PathBuf,
}

impl Write for LocalArchive {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sink.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

impl ArchiveSink for LocalArchive {
    fn name(&self) -> String {
        self.sink.name()
    }

    fn spill_dir(&self) -> Option<PathBuf> {
        self.sink.spill_dir()
    }

    fn finish(self) -> Result<()> {
        self.sink.finish()?;
        let staged = &self.staged;
        std::fs::set_permissions(staged, Permissions::from_mode(0o444))
            .context("making the archive read-only", staged)?;
        std::fs::rename(staged, &self.target).context("moving the archive into images/", &self.target)?;
        let images = crate::output::parent_dir(&self.target);
        sync_dir(&images).context("flushing the images directory", &images)
    }
}

/// Test-only: `IMGPACK_TEST_HOLD_BEFORE_REMOVE_MS` makes a registration wait that long after
/// its image became `available` and before it removes the upload, so a test can start a
/// second registration of the same upload exactly in that window (the one
/// `ONE_IMAGE_PER_UPLOAD` in the catalog closes). Never set it in production.
pub(crate) fn hold_before_removing_upload() {
    const HOLD_ENV: &str = "IMGPACK_TEST_HOLD_BEFORE_REMOVE_MS";
    if let Some(ms) = std::env::var(HOLD_ENV).ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms.min(60_000)));
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("reading the library directory", e).in_file(dir)),
    };
    Ok(entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect())
}

/// Makes the files at `keys` under `root` durable, bytes and names, with one `syncfs(2)` of
/// the filesystem holding them: a registration's frames are a thousand small files, and an
/// fsync of each (plus each directory) costs a journal commit apiece, tens of milliseconds on
/// a busy disk (measured: 88 ms per fsync at load 12, 1,023 of them for 739 frames), where
/// one `syncfs` commits them all at once. `syncfs` reports writeback errors (Linux >= 5.8).
fn sync_files_and_dirs(root: &Path, keys: &[String]) -> Result<()> {
    let Some(first) = keys.first() else {
        return Ok(());
    };
    keys::check_object_key(first)?;
    let dir = crate::output::parent_dir(&root.join(first));
    std::fs::File::open(&dir)
        .and_then(|dir| rustix::fs::syncfs(&dir).map_err(io::Error::from))
        .context("flushing the chunk objects to disk", &dir)
}
