//! [`AtomicFile`]: an output that appears at its final path complete or not at all.
//!
//! The file is created unnamed in the destination's directory (O_TMPFILE), so if the process
//! is killed, even with SIGKILL, nothing is left behind. [`AtomicFile::commit`] fsyncs it, links
//! it under a temporary name and renames that over the destination. Where the file system
//! has no O_TMPFILE, a named temporary file (tempfile) is used instead, removed on drop.

use std::fs::File;
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
        let dir = parent_dir(target);
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

    /// The directory the file will appear in.
    pub fn dir(&self) -> &Path {
        &self.dir
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

/// The directory a path lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
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
    use std::io::Write;

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
}
