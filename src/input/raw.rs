//! Raw disk images: the file's bytes are the disk's bytes.
//!
//! [`RawSource`] skips holes of sparse files with SEEK_DATA (falling back to reading where the
//! file system cannot tell), and reads data either through a memory map or with `pread` into
//! each worker's reused buffer ([`ReadMode`]).
//!
//! A disk is made of 512-byte sectors: like qemu-img, which rounds a raw file's size up to the
//! next sector and reads zeros after the file's end (`qemu-img convert -O raw` writes those
//! zeros), a raw file of 1000 bytes is a disk of 1024. [`RawSource`] and [`PadToSector`] (for
//! raw disks that arrive as a stream) both give the rounded disk, so `info`, the archive and
//! the extracted disk all agree with qemu-img.

use std::io::Read;

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{DiskSource, ReadMode};

/// The sector size raw disks are rounded up to.
pub const SECTOR: u64 = 512;

/// The size of the disk a raw file of `file_size` bytes holds: rounded up to a whole sector.
pub fn disk_size_of(file_size: u64) -> u64 {
    file_size.next_multiple_of(SECTOR)
}
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
        disk_size_of(self.file.size())
    }

    fn next_data(&self, from: u64) -> Result<Option<u64>> {
        // The zeros that round the disk up to a sector are not data.
        if from >= self.file.size() {
            return Ok(None);
        }
        sys::next_data(self.file.file(), from).context("looking for data (SEEK_DATA)", &self.path)
    }

    fn read<'a>(&'a self, offset: u64, len: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        // Bytes of the file in the range; the rest (at most the last sector's padding) is zeros.
        let stored = self.file.size().saturating_sub(offset).min(len as u64) as usize;
        if let Some(map) = &self.mapping {
            let start = usize::try_from(offset)
                .map_err(|_| Error::invalid_argument("offset beyond address space"))?;
            let bytes = map.bytes();
            let end = start
                .checked_add(stored)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| {
                    Error::corrupt(offset, "input is shorter than when it was opened").in_file(&self.path)
                })?;
            map.will_need(end, len.min(bytes.len() - end));
            if stored == len {
                return Ok(&bytes[start..end]);
            }
            scratch.clear();
            scratch.extend_from_slice(&bytes[start..end]);
            scratch.resize(len, 0);
            return Ok(scratch);
        }
        scratch.resize(len, 0);
        self.file
            .read_exact_at(&mut scratch[..stored], offset)
            .map_err(|e| Error::io("reading the input", e).in_file(&self.path).at(offset))?;
        scratch[stored..].fill(0);
        Ok(scratch)
    }
}

/// A raw disk arriving as a stream, rounded up to a whole sector with zeros at its end (see
/// the module doc).
pub struct PadToSector<R> {
    inner: R,
    /// Bytes read from `inner` so far.
    passed: u64,
    /// Zeros still to give once `inner` has ended (`None` until it ends).
    padding: Option<u64>,
}

impl<R: Read> PadToSector<R> {
    /// Wraps the stream of a raw disk.
    pub fn new(inner: R) -> Self {
        PadToSector {
            inner,
            passed: 0,
            padding: None,
        }
    }
}

impl<R: Read> Read for PadToSector<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.padding.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 {
                self.passed += n as u64;
                return Ok(n);
            }
            self.padding = Some(disk_size_of(self.passed) - self.passed);
        }
        let left = self.padding.as_mut().expect("set above");
        let n = (*left).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        *left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_rounded_up_to_a_sector() {
        for (len, want) in [(0usize, 0usize), (1, 512), (511, 512), (512, 512), (1000, 1024)] {
            let mut out = Vec::new();
            PadToSector::new(&vec![7u8; len][..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out.len(), want, "{len}");
            assert!(out[..len].iter().all(|&b| b == 7) && out[len..].iter().all(|&b| b == 0));
        }
    }
}
