//! Raw disk images: the file's bytes are the disk's bytes.
//!
//! [`RawSource`] skips holes of sparse files with SEEK_DATA (falling back to reading where the
//! file system cannot tell), and reads data either through a memory map or with `pread` into
//! each worker's reused buffer ([`ReadMode`]). The map is guarded against truncation by another
//! process (`sys::Mapping`): bytes borrowed from it are confirmed after use
//! ([`DiskSource::confirm_read`]), so a file cut short while it is read fails the conversion,
//! as a short `pread` does, instead of killing the process with SIGBUS.
//!
//! A disk is made of 512-byte sectors: like qemu-img, which rounds a raw file's size up to the
//! next sector and reads zeros after the file's end (`qemu-img convert -O raw` writes those
//! zeros), a raw file of 1000 bytes is a disk of 1024. [`RawSource`] and [`PadToSector`] (for
//! raw disks that arrive as a stream) both give the rounded disk, so `info`, the archive and
//! the extracted disk all agree with qemu-img.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DiskSource, ReadMode};
use crate::error::{Error, IoContext, Result};
use crate::read_at::{FileAt, ReadAt};
use crate::sys::{self, Mapping};

/// How far ahead of the chunk being read the map asks the kernel to read, in one `WILLNEED`
/// advice each time a read crosses a multiple of it (one call per this many bytes, not per
/// chunk: with the file already cached, the call's page-cache walk was most of its cost).
const READ_AHEAD: usize = 8 << 20;

/// The sector size raw disks are rounded up to.
pub const SECTOR: u64 = 512;

/// The size of the disk a raw file of `file_size` bytes holds: rounded up to a whole sector.
pub fn disk_size_of(file_size: u64) -> u64 {
    file_size.next_multiple_of(SECTOR)
}

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
            // The map saves the copy from the page cache that `pread` makes (about 8% of a
            // convert's CPU time, see the README); where a file cannot be mapped, plain reads do.
            ReadMode::Auto if file.size() > 0 => Mapping::map(file.file()).ok(),
            _ => None,
        };
        Ok(RawSource {
            path: path.to_path_buf(),
            file,
            mapping,
        })
    }
}

impl RawSource {
    /// Whether the file is now shorter than when it was opened. A truncation inside the last
    /// mapped page raises no SIGBUS (the page stays, zero-filled past the new end), so the
    /// memory-map path also asks the file system.
    fn shrunk(&self) -> bool {
        self.file
            .file()
            .metadata()
            .is_ok_and(|m| m.len() < self.file.size())
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
        let next =
            sys::next_data(self.file.file(), from).context("looking for data (SEEK_DATA)", &self.path)?;
        // "No data after `from`" is also what a file cut short meanwhile says: its missing tail
        // must not be taken for zeros.
        if next.is_none() && self.shrunk() {
            return Err(truncated(from).in_file(&self.path));
        }
        Ok(next)
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
            if start / READ_AHEAD != end / READ_AHEAD {
                let next = end - end % READ_AHEAD;
                map.will_need(next, READ_AHEAD.min(bytes.len() - next));
            }
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

    fn confirm_read(&self, offset: u64, len: usize) -> Result<()> {
        if let (Some(map), Ok(start)) = (&self.mapping, usize::try_from(offset)) {
            map.release(start, len);
        }
        match &self.mapping {
            Some(map) if map.is_damaged() || self.shrunk() => Err(truncated(offset).in_file(&self.path)),
            _ => Ok(()),
        }
    }
}

/// The error for an input that another process cut short while it was being read.
fn truncated(offset: u64) -> Error {
    Error::corrupt(
        offset,
        "the input was truncated while it was being read (pages of its memory map vanished, or \
         its end moved before the data still to read)",
    )
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
    use std::io::Write;

    use super::*;
    use crate::error::ErrorKind;

    /// A 4 MiB file of 0x5A bytes and its path (kept alive by the returned guard).
    fn image() -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&vec![0x5Au8; 4 << 20]).unwrap();
        file
    }

    #[test]
    fn both_read_modes_read_the_same_bytes() {
        let file = image();
        for mode in [ReadMode::Auto, ReadMode::Mmap, ReadMode::Pread] {
            let source = RawSource::open(file.path(), mode).unwrap();
            let mut scratch = Vec::new();
            let data = source.read(1 << 20, 1 << 20, &mut scratch).unwrap();
            assert!(data.iter().all(|&b| b == 0x5A), "{mode:?}");
            source.confirm_read(1 << 20, 1 << 20).unwrap();
        }
    }

    #[test]
    fn a_truncation_under_a_memory_map_is_an_error_not_a_sigbus() {
        let file = image();
        let source = RawSource::open(file.path(), ReadMode::Mmap).unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let mut scratch = Vec::new();
        // The pages past the new end are gone: without the guard this read dies of SIGBUS.
        let data = source.read(2 << 20, 1 << 20, &mut scratch).unwrap();
        assert!(data.iter().all(|&b| b == 0), "lost pages read as zeros");
        let err = source.confirm_read(2 << 20, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert_eq!(err.offset(), Some(2 << 20));
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn a_truncation_inside_the_last_page_is_caught_by_the_size_check() {
        let file = image();
        let source = RawSource::open(file.path(), ReadMode::Mmap).unwrap();
        file.as_file().set_len((4 << 20) - 100).unwrap();
        let mut scratch = Vec::new();
        source.read((4 << 20) - 4096, 4096, &mut scratch).unwrap();
        assert!(source.confirm_read((4 << 20) - 4096, 4096).is_err());
    }

    #[test]
    fn a_tail_cut_off_before_it_is_reached_is_an_error_not_zeros() {
        for mode in [ReadMode::Mmap, ReadMode::Pread] {
            let file = image();
            let source = RawSource::open(file.path(), mode).unwrap();
            file.as_file().set_len(1 << 20).unwrap();
            let err = source.next_data(2 << 20).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{mode:?}");
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }

    #[test]
    fn a_truncation_under_pread_is_an_error_too() {
        let file = image();
        let source = RawSource::open(file.path(), ReadMode::Pread).unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let mut scratch = Vec::new();
        let err = source.read(2 << 20, 1 << 20, &mut scratch).unwrap_err();
        assert_eq!(err.offset(), Some(2 << 20));
    }

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
