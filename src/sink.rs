//! Where an archive goes: the [`ArchiveSink`] trait and its two implementations, a file that
//! appears only when complete ([`FileSink`]) and any byte stream ([`WriterSink`], e.g. standard
//! output or an HTTP response body).
//!
//! A registrar that stores archives elsewhere (an object store's multipart upload) implements
//! [`ArchiveSink`] itself: the engine writes the archive front to back through [`Write`], never
//! seeks, and calls [`ArchiveSink::finish`] only after the last byte, so a sink dropped without
//! `finish` (an error, the size limit, a cancellation) must leave nothing behind.
//!
//! ```no_run
//! use imgpack::{convert_reader, ConvertOptions, FileSink};
//! let upload = std::io::Cursor::new(vec![0u8; 1 << 20]); // an HTTP body, say
//! let sink = FileSink::create("upload.imgpack".as_ref())?;
//! let report = convert_reader(upload, sink, &ConvertOptions::default())?;
//! assert_eq!(report.virtual_size, 1 << 20);
//! # Ok::<(), imgpack::Error>(())
//! ```

use std::io::{self, BufWriter, Stdout, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::output::AtomicFile;
use crate::sys;

/// A destination for an archive, written front to back.
pub trait ArchiveSink: Write + Send {
    /// What reports call this output (a path, or `-` for standard output).
    fn name(&self) -> String;

    /// A directory on the same file system as the output, where temporary files (a qcow2
    /// upload spilled out of a compressed stream) may go; `None` for the system's default.
    fn spill_dir(&self) -> Option<PathBuf> {
        None
    }

    /// Makes the complete archive durable and visible. Not calling it (dropping the sink)
    /// abandons the output and must leave nothing behind.
    fn finish(self) -> Result<()>
    where
        Self: Sized;
}

/// An archive file that appears at its path only when [`finish`](ArchiveSink::finish)ed:
/// written unnamed in the destination directory (O_TMPFILE), fsynced, then linked into place,
/// so an error or even SIGKILL leaves nothing. Writeback to disk starts every
/// [`WRITEBACK_STEP`] bytes, so the final fsync has little left to flush.
pub struct FileSink {
    file: AtomicFile,
    /// Writes into `file` with O_DIRECT where the file system allows it (`sys::direct`: the
    /// page-cache copy of a buffered write was 15% of a level-1 convert's CPU time).
    out: sys::DirectAppender,
    position: u64,
    flushed: u64,
}

/// How many bytes a [`FileSink`] writes before it starts their writeback.
pub const WRITEBACK_STEP: u64 = 8 << 20;

impl FileSink {
    /// Starts an archive destined for `path`, replacing whatever is there once finished.
    pub fn create(path: &Path) -> Result<Self> {
        let file = AtomicFile::create(path)?;
        let descriptor = file
            .file()
            .try_clone()
            .map_err(|e| Error::io("creating the output", e).in_file(path))?;
        Ok(FileSink {
            out: sys::DirectAppender::new(descriptor),
            file,
            position: 0,
            flushed: 0,
        })
    }
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.position += n as u64;
        // Direct writes leave nothing in the page cache to write back.
        if !self.out.is_direct() && self.position - self.flushed >= WRITEBACK_STEP {
            sys::start_writeback(self.file.file(), self.flushed, self.position - self.flushed);
            self.flushed = self.position;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ArchiveSink for FileSink {
    fn name(&self) -> String {
        self.file.target().display().to_string()
    }

    fn spill_dir(&self) -> Option<PathBuf> {
        Some(self.file.dir().to_path_buf())
    }

    fn finish(self) -> Result<()> {
        self.out
            .finish()
            .map_err(|e| Error::io("writing the archive", e).in_file(self.file.target()))?;
        self.file.commit()
    }
}

/// Any byte stream as a sink (standard output, a socket, a pipe): `finish` flushes it. A
/// stream cannot take back what it has sent, so a failed conversion leaves a truncated
/// archive there, which the reader refuses (the footer is missing).
pub struct WriterSink<W: Write + Send> {
    writer: W,
    name: String,
}

impl<W: Write + Send> WriterSink<W> {
    /// Wraps `writer`; `name` is what reports call it.
    pub fn new(writer: W, name: impl Into<String>) -> Self {
        WriterSink {
            writer,
            name: name.into(),
        }
    }

    /// The wrapped writer back.
    pub fn into_inner(self) -> W {
        self.writer
    }
}

impl WriterSink<BufWriter<Stdout>> {
    /// Standard output, buffered, named `-`.
    pub fn stdout() -> Self {
        WriterSink::new(BufWriter::with_capacity(1 << 20, io::stdout()), "-")
    }
}

impl<W: Write + Send> Write for WriterSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl<W: Write + Send> ArchiveSink for WriterSink<W> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn finish(mut self) -> Result<()> {
        self.writer
            .flush()
            .map_err(|e| Error::io(format!("writing to {}", self.name), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sink_writes_everything_in_order_across_writeback_steps() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let mut sink = FileSink::create(&target).unwrap();
        let expected: Vec<u8> = (0..WRITEBACK_STEP as usize * 2 + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        for piece in expected.chunks(1_000_003) {
            sink.write_all(piece).unwrap();
        }
        assert!(!target.exists());
        assert_eq!(sink.spill_dir().as_deref(), Some(dir.path()));
        sink.finish().unwrap();
        assert!(std::fs::read(&target).unwrap() == expected);
    }

    #[test]
    fn a_dropped_file_sink_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::create(&dir.path().join("out.bin")).unwrap();
        sink.write_all(b"partial").unwrap();
        drop(sink);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
