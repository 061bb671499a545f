//! Positional writes around the page cache (O_DIRECT), for outputs whose layout is planned
//! before their data is written (export's uncompressed formats).
//!
//! A profile of `export -O vhdx` found 42% of all CPU time in the kernel copying the written
//! bytes into the page cache; the data is written once and then only needs to be durable, so
//! [`DirectWriter`] hands the device the aligned middle of each write straight from our memory.
//! It writes through a second open file description of the same file (reopened through
//! `/proc/self/fd`, so an unnamed O_TMPFILE output works too) with O_DIRECT set, while the
//! caller's own descriptor stays buffered for metadata and for the unaligned head and tail of a
//! write. The kernel keeps the two coherent page by page; callers keep direct and buffered
//! writes on different pages anyway (a direct write only ever covers whole [`ALIGN`] pages).
//!
//! Where the file system refuses O_DIRECT (tmpfs before Linux 6.6, some network file systems),
//! or `/proc` is not mounted, or a direct write fails with `EINVAL` (an alignment the device
//! wants and this writer does not meet), everything goes through the buffered descriptor; the
//! bytes in the file are the same either way. Real errors (ENOSPC, EFBIG, EIO) are returned.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};

pub use super::direct::ALIGN;

/// Writes at offsets, around the page cache where it can (see the module doc).
pub struct DirectWriter<'a> {
    buffered: &'a File,
    direct: Option<File>,
    /// Set once a direct write was refused: the rest goes buffered.
    refused: AtomicBool,
}

impl<'a> DirectWriter<'a> {
    /// Writes into `file`, directly where the file system accepts it.
    pub fn new(file: &'a File) -> DirectWriter<'a> {
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)
            .ok();
        DirectWriter {
            buffered: file,
            direct,
            refused: AtomicBool::new(false),
        }
    }

    /// A writer that never uses O_DIRECT (for comparison, and where it is not wanted).
    pub fn buffered(file: &'a File) -> DirectWriter<'a> {
        DirectWriter {
            buffered: file,
            direct: None,
            refused: AtomicBool::new(false),
        }
    }

    /// Whether direct writes are (still) being made.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some() && !self.refused.load(Ordering::Relaxed)
    }

    /// Writes all of `bytes` at `at`: the whole [`ALIGN`] pages in the middle directly when
    /// `bytes` is laid out in memory with the same alignment as `at` in the file (an
    /// [`AlignedBuffer`] gives that), the rest buffered.
    pub fn write_all_at(&self, bytes: &[u8], at: u64) -> io::Result<()> {
        let direct = match &self.direct {
            Some(direct) if !self.refused.load(Ordering::Relaxed) => direct,
            _ => return self.buffered.write_all_at(bytes, at),
        };
        let head = ((ALIGN as u64 - at % ALIGN as u64) % ALIGN as u64) as usize;
        let same_alignment = (bytes.as_ptr() as usize + head).is_multiple_of(ALIGN);
        if !same_alignment || bytes.len() < head + ALIGN {
            return self.buffered.write_all_at(bytes, at);
        }
        let middle_end = head + (bytes.len() - head) / ALIGN * ALIGN;
        self.buffered.write_all_at(&bytes[..head], at)?;
        let mut done = head;
        while done < middle_end {
            match direct.write_at(&bytes[done..middle_end], at + done as u64) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                // A short direct write may end mid-page: the rest goes buffered below.
                Ok(n) if !n.is_multiple_of(ALIGN) => {
                    done += n;
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.refused.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        self.buffered.write_all_at(&bytes[done..], at + done as u64)
    }
}

/// A byte buffer whose start is aligned to [`ALIGN`], for [`DirectWriter::write_all_at`].
/// No `unsafe`: a `Vec` one [`ALIGN`] longer than needed, used from its first aligned byte.
#[derive(Default)]
pub struct AlignedBuffer {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuffer {
    /// The buffer resized to `len` bytes (their content unspecified), aligned.
    pub fn resized(&mut self, len: usize) -> &mut [u8] {
        if self.bytes.len() < len + ALIGN {
            self.bytes = vec![0u8; len + ALIGN];
            self.start = self.bytes.as_ptr().align_offset(ALIGN);
        }
        self.len = len;
        &mut self.bytes[self.start..self.start + len]
    }

    /// The `len` bytes of the last [`AlignedBuffer::resized`].
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099 + seed) as u8).collect()
    }

    #[test]
    fn writes_land_exactly_whatever_their_alignment_and_direct_is_used_on_disk() {
        // On the disk (the worktree), not /tmp, which may be tmpfs.
        let dir = tempfile::tempdir_in(".").unwrap();
        let file = tempfile::tempfile_in(dir.path()).unwrap();
        let writer = DirectWriter::new(&file);
        let takes_direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .is_ok();
        assert_eq!(writer.is_direct(), takes_direct);
        let mut expected = vec![0u8; 3 << 20];
        let mut buffer = AlignedBuffer::default();
        for (i, (at, len)) in [
            (0usize, 8192usize),
            (8192 + 512, 3 * 4096),
            (65536, 100),
            (1 << 20, 1 << 20),
            ((2 << 20) + 4095, 70_000),
            ((3 << 20) - 4096, 4096),
        ]
        .into_iter()
        .enumerate()
        {
            let data = pattern(len, i);
            // Laid out in memory as in the file, as export does.
            let room = buffer.resized(len + (at % 4096));
            room[at % 4096..].copy_from_slice(&data);
            writer
                .write_all_at(&buffer.as_slice()[at % 4096..], at as u64)
                .unwrap();
            expected[at..at + len].copy_from_slice(&data);
        }
        assert_eq!(writer.is_direct(), takes_direct, "no direct write was refused");
        let mut back = vec![0u8; expected.len()];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back == expected);
    }

    #[test]
    fn a_buffered_writer_never_goes_direct() {
        let file = tempfile::tempfile().unwrap();
        let writer = DirectWriter::buffered(&file);
        assert!(!writer.is_direct());
        writer.write_all_at(b"abc", 5).unwrap();
        let mut back = [0u8; 8];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"\0\0\0\0\0abc");
    }
}
