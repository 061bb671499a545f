//! [`Appender`]: a buffered byte stream that knows its position, for the outputs written in
//! order (compressed qcow2, streamOptimized VMDK, a raw disk to standard output).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::sys;

/// Writes in order to `W`, counting the bytes.
pub struct Appender<W: Write> {
    out: BufWriter<W>,
    position: u64,
}

impl<W: Write> Appender<W> {
    /// Appends to `out`, whose current position is `position`.
    pub fn new(out: W, position: u64) -> Self {
        Appender {
            out: BufWriter::with_capacity(4 << 20, out),
            position,
        }
    }

    /// Bytes written so far plus the starting position.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("writing the output", e).at(self.position))?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    /// Appends `count` zero bytes.
    pub fn zeros(&mut self, mut count: u64) -> Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        while count > 0 {
            let n = count.min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
            count -= n as u64;
        }
        Ok(())
    }

    /// Appends zeros up to the next multiple of `alignment` (a power of two).
    pub fn align(&mut self, alignment: u64) -> Result<()> {
        let pad = self.position.next_multiple_of(alignment) - self.position;
        self.zeros(pad)
    }

    /// Flushes the buffer and returns the stream.
    pub fn finish(self) -> Result<W> {
        let position = self.position;
        self.out
            .into_inner()
            .map_err(|e| Error::io("writing the output", e.into_error()).at(position))
    }
}

/// Bytes written between two starts of writeback.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A fresh file written in order from its start, whose writeback to disk is started every
/// few MiB, so the fsync before the output appears has little left to flush.
pub struct WritebackFile<'a> {
    file: &'a File,
    position: u64,
    written_back: u64,
}

impl<'a> WritebackFile<'a> {
    /// Writes `file` from offset 0.
    pub fn new(file: &'a File) -> Self {
        WritebackFile {
            file,
            position: 0,
            written_back: 0,
        }
    }
}

impl Write for WritebackFile<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write_at(buf, self.position)?;
        self.position += n as u64;
        if self.position >= self.written_back + WRITEBACK_EVERY {
            sys::start_writeback(self.file, self.written_back, self.position - self.written_back);
            self.written_back = self.position;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
