//! Raw disk images: the file's bytes are the disk's bytes.
//!
//! [`RawSource`] skips holes of sparse files with SEEK_DATA (falling back to reading where the
//! file system cannot tell), and reads data either through a memory map or with `pread` into
//! each worker's reused buffer ([`ReadMode`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{DiskSource, ReadMode};
use crate::error::{Error, IoContext, Result};
use crate::read_at::{FileAt, ReadAt};
use crate::sys::{self, Mapping};

/// A raw image file.
pub struct RawSource {
    path: PathBuf,
    file: FileAt,
    mapping: Option<Mapping>,
}

impl RawSource {
    /// Opens `path` as a raw image read with `mode`.
    pub fn open(path: &Path, mode: ReadMode) -> Result<Self> {
        let file = File::open(path).context("opening the input", path)?;
        Self::from_file(file, path, mode)
    }

    /// Wraps an already open file.
    pub fn from_file(file: File, path: &Path, mode: ReadMode) -> Result<Self> {
        let file = FileAt::new(file).context("reading the input's size", path)?;
        let mapping = match mode {
            ReadMode::Mmap if file.size() > 0 => {
                Some(Mapping::map(file.file()).context("memory-mapping the input", path)?)
            }
            _ => None,
        };
        Ok(RawSource {
            path: path.to_path_buf(),
            file,
            mapping,
        })
    }
}

impl DiskSource for RawSource {
    fn format(&self) -> &'static str {
        "raw"
    }

    fn virtual_size(&self) -> u64 {
        self.file.size()
    }

    fn next_data(&self, from: u64) -> Result<Option<u64>> {
        if from >= self.file.size() {
            return Ok(None);
        }
        sys::next_data(self.file.file(), from).context("looking for data (SEEK_DATA)", &self.path)
    }

    fn read<'a>(&'a self, offset: u64, len: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        if let Some(map) = &self.mapping {
            let start = usize::try_from(offset)
                .map_err(|_| Error::invalid_argument("offset beyond address space"))?;
            let bytes = map.bytes();
            let end = start
                .checked_add(len)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| {
                    Error::corrupt(offset, "input is shorter than when it was opened").in_file(&self.path)
                })?;
            map.will_need(end, len.min(bytes.len() - end));
            return Ok(&bytes[start..end]);
        }
        scratch.resize(len, 0);
        self.file
            .read_exact_at(scratch, offset)
            .map_err(|e| Error::io("reading the input", e).in_file(&self.path).at(offset))?;
        Ok(scratch)
    }
}
