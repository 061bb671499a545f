//! [`ReplyWriter`]: a connection's output, buffering small writes (reply headers, hole
//! chunks, option replies) and sending a large slice (a read's data, straight from the cached
//! chunk) in the same `writev` as whatever is buffered, without copying it.
//!
//! The standard library's `BufWriter` does not do this on stable Rust: it cannot see that a
//! socket writes vectors natively, so a header and its data left in two system calls (three
//! with the final reply chunk), the first only 28 bytes long.

use std::io::{self, IoSlice, Write};

/// A writer that coalesces small writes and sends large ones with the pending bytes.
pub struct ReplyWriter<W: Write> {
    inner: W,
    pending: Vec<u8>,
    capacity: usize,
}

impl<W: Write> ReplyWriter<W> {
    /// Buffers up to `capacity` bytes of small writes for `inner`.
    pub fn with_capacity(capacity: usize, inner: W) -> Self {
        ReplyWriter {
            inner,
            pending: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// Sends the pending bytes followed by `bufs`, all of them, in as few `writev` calls as
    /// the socket takes.
    fn send_with_pending(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(bufs.len() + 1);
        slices.push(IoSlice::new(&self.pending));
        slices.extend(bufs.iter().map(|b| IoSlice::new(b)));
        let mut rest = &mut slices[..];
        IoSlice::advance_slices(&mut rest, 0);
        while !rest.is_empty() {
            match self.inner.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pending.clear();
        Ok(())
    }
}

impl<W: Write> Write for ReplyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all_vectored_here(&[IoSlice::new(buf)])?;
        Ok(buf.len())
    }

    /// Always takes every byte: small writes are buffered, large ones sent at once.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_all_vectored_here(bufs)?;
        Ok(bufs.iter().map(|b| b.len()).sum())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.send_with_pending(&[])?;
        }
        self.inner.flush()
    }
}

impl<W: Write> ReplyWriter<W> {
    fn write_all_vectored_here(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.pending.len() + total <= self.capacity {
            for buf in bufs {
                self.pending.extend_from_slice(buf);
            }
            return Ok(());
        }
        self.send_with_pending(bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each write call's vectors.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>, usize);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        // Takes at most `self.1` bytes per call (when not 0), like a full socket buffer.
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut call = Vec::new();
            for buf in bufs {
                call.extend_from_slice(buf);
            }
            if self.1 > 0 {
                call.truncate(self.1);
            }
            let n = call.len();
            self.0.push(call);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn small_writes_wait_and_a_large_one_leaves_with_them_in_one_call() {
        let mut w = ReplyWriter::with_capacity(8, Calls::default());
        w.write_all(b"abc").unwrap();
        w.write_all(b"de").unwrap();
        assert!(w.inner.0.is_empty());
        let n = w
            .write_vectored(&[IoSlice::new(b"head"), IoSlice::new(b"0123456789")])
            .unwrap();
        assert_eq!(n, 14);
        assert_eq!(w.inner.0, vec![b"abcdehead0123456789".to_vec()]);
        w.write_all(b"xy").unwrap();
        w.flush().unwrap();
        assert_eq!(w.inner.0.len(), 2);
        assert_eq!(w.inner.0[1], b"xy");
        w.flush().unwrap(); // nothing pending: no call
        assert_eq!(w.inner.0.len(), 2);
    }

    #[test]
    fn partial_writes_are_continued_in_order() {
        let mut w = ReplyWriter::with_capacity(4, Calls(Vec::new(), 3));
        w.write_all(b"ab").unwrap();
        let n = w
            .write_vectored(&[IoSlice::new(b"cdef"), IoSlice::new(b"ghij")])
            .unwrap();
        assert_eq!(n, 8);
        assert_eq!(w.inner.0.concat(), b"abcdefghij");
        assert!(w.inner.0.iter().all(|c| c.len() <= 3));
        assert!(w.pending.is_empty());
    }
}
