//! [`AtomicFile`]: an output that appears at its final path complete or not at all.
//!
//! The file is created unnamed in the destination's directory (O_TMPFILE), so if the process
//! is killed, even with SIGKILL, nothing is left behind. [`AtomicFile::commit`] fsyncs it, links
//! it under a temporary name and renames that over the destination. Where the file system
//! has no O_TMPFILE, a named temporary file (tempfile) is used instead, removed on drop.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::sys;

enum Backing {
    Unnamed(File),
    Named(tempfile::NamedTempFile),
}

/// A file being written that becomes visible at `target` only on [`AtomicFile::commit`].
pub struct AtomicFile {
    backing: Backing,
    target: PathBuf,
    dir: PathBuf,
}

impl AtomicFile {
    /// Starts a new output destined for `target`, in `target`'s directory (so the final rename
    /// never crosses file systems).
    pub fn create(target: &Path) -> Result<Self> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if target.is_dir() {
            return Err(Error::invalid_argument("the output path is a directory").in_file(target));
        }
        let backing = match sys::open_unnamed(&dir).context("creating the output", &dir)? {
            Some(file) => Backing::Unnamed(file),
            None => Backing::Named(
                tempfile::Builder::new()
                    .prefix(".imgpack-tmp-")
                    .tempfile_in(&dir)
                    .context("creating the temporary output", &dir)?,
            ),
        };
        Ok(AtomicFile {
            backing,
            target: target.to_path_buf(),
            dir,
        })
    }

    /// The file to write into.
    pub fn file(&self) -> &File {
        match &self.backing {
            Backing::Unnamed(f) => f,
            Backing::Named(t) => t.as_file(),
        }
    }

    /// A writer appending to the file from its start, which starts writeback to disk every
    /// [`WRITEBACK_STEP`] bytes (see [`sys::start_writeback`]), so that [`AtomicFile::commit`]'s
    /// fsync has little left to flush.
    pub fn appender(&self) -> Appender<'_> {
        Appender {
            file: self.file(),
            position: 0,
            flushed: 0,
        }
    }

    /// Where the file will appear.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes the data to disk and puts the file at its target path, replacing what was there.
    pub fn commit(self) -> Result<()> {
        self.file()
            .sync_all()
            .context("flushing the output to disk", &self.target)?;
        let target = self.target;
        match self.backing {
            Backing::Unnamed(file) => {
                let temp = self
                    .dir
                    .join(format!(".imgpack-tmp-{}-{}", std::process::id(), unique()));
                sys::link_unnamed(&file, &temp).context("naming the output", &temp)?;
                if let Err(e) = std::fs::rename(&temp, &target) {
                    let _ = std::fs::remove_file(&temp);
                    return Err(Error::io("moving the output into place", e).in_file(&target));
                }
            }
            Backing::Named(temp) => {
                temp.persist(&target)
                    .map_err(|e| Error::io("moving the output into place", e.error).in_file(&target))?;
            }
        }
        sys::sync_dir(&self.dir).context("flushing the output directory", &self.dir)
    }
}

/// How many bytes an [`Appender`] writes before it starts their writeback.
pub const WRITEBACK_STEP: u64 = 8 << 20;

/// Sequential writes into an [`AtomicFile`], from [`AtomicFile::appender`].
pub struct Appender<'a> {
    file: &'a File,
    position: u64,
    flushed: u64,
}

impl Write for Appender<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.position += n as u64;
        if self.position - self.flushed >= WRITEBACK_STEP {
            sys::start_writeback(self.file, self.flushed, self.position - self.flushed);
            self.flushed = self.position;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (u64::from(nanos) << 16) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_appears_until_commit_and_nothing_lingers_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        {
            let out = AtomicFile::create(&target).unwrap();
            out.file().write_all(b"partial").unwrap();
            assert!(!target.exists());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let out = AtomicFile::create(&target).unwrap();
        out.file().write_all(b"whole").unwrap();
        out.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_appender_writes_everything_in_order_across_writeback_steps() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let out = AtomicFile::create(&target).unwrap();
        let expected: Vec<u8> = (0..WRITEBACK_STEP as usize * 2 + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut appender = out.appender();
        for piece in expected.chunks(1_000_003) {
            appender.write_all(piece).unwrap();
        }
        out.commit().unwrap();
        assert!(std::fs::read(&target).unwrap() == expected);
    }
}
