//! Positional reads: the one I/O primitive every random-access reader here is built on.
//!
//! [`ReadAt`] is implemented for files (through `pread`, safe against the file changing under
//! us) and for byte slices (tests and fuzzing), so parsers never care where bytes come from.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A source of bytes that can be read at any offset, from several threads at once.
pub trait ReadAt: Send + Sync {
    /// Fills `buf` from `offset`; an error if the source ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Reads as much of `buf` as the source holds from `offset`; returns the count, which is
    /// short only at the end of the source.
    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// The source's length in bytes.
    fn size(&self) -> u64;
}

/// A file opened for positional reads, with its length taken at open.
#[derive(Debug)]
pub struct FileAt {
    file: File,
    len: u64,
}

impl FileAt {
    /// Wraps an open file, recording its current length.
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(FileAt { file, len })
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl ReadAt for FileAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(&self.file, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn size(&self) -> u64 {
        self.len
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = self.read_at_most(buf, offset)?;
        if n < buf.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"));
        }
        Ok(())
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.len() as u64
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at_most(buf, offset)
    }

    fn size(&self) -> u64 {
        self.len() as u64
    }
}
