//! [`Input`]: the buffered compressed bytes a decoder reads, with the stream offset of every
//! byte, so that damage can be reported where it is.

use std::io::{self, Read};

/// How many compressed bytes are read from the underlying reader at a time.
const CAPACITY: usize = 256 << 10;

/// A read buffer over a compressed stream that knows the offset of its first unread byte.
pub struct Input<R> {
    reader: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Stream offset of `buf[pos]`.
    offset: u64,
    eof: bool,
}

impl<R: Read> Input<R> {
    /// Wraps `reader`, whose first byte is at offset 0.
    pub fn new(reader: R) -> Self {
        Input {
            reader,
            buf: vec![0u8; CAPACITY].into_boxed_slice(),
            pos: 0,
            end: 0,
            offset: 0,
            eof: false,
        }
    }

    /// Stream offset of the next unread byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The unread bytes, refilled from the reader when none are left; empty only at the end.
    pub fn available(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.end && !self.eof {
            self.pos = 0;
            self.end = 0;
            self.read_more()?;
        }
        Ok(&self.buf[self.pos..self.end])
    }

    /// At least `n` unread bytes (`n` at most the buffer's capacity) unless the stream ends
    /// first, in which case all that is left.
    pub fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        let n = n.min(self.buf.len());
        if self.end - self.pos < n {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
            while self.end < n && !self.eof {
                self.read_more()?;
            }
        }
        Ok(&self.buf[self.pos..self.end])
    }

    /// Marks `n` bytes of [`Input::available`] as read.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.pos);
        self.pos += n;
        self.offset += n as u64;
    }

    /// The next byte, or `None` at the end of the stream.
    pub fn byte(&mut self) -> io::Result<Option<u8>> {
        let byte = self.available()?.first().copied();
        if byte.is_some() {
            self.consume(1);
        }
        Ok(byte)
    }

    fn read_more(&mut self) -> io::Result<()> {
        loop {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out one byte per read, to exercise refills.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some((&first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            if buf.is_empty() {
                return Ok(0);
            }
            buf[0] = first;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn peek_gathers_short_reads_and_offsets_follow_consumption() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut input = Input::new(Trickle(&data));
        assert_eq!(input.peek(12).unwrap(), &data[..12]);
        input.consume(5);
        assert_eq!(input.offset(), 5);
        assert_eq!(input.byte().unwrap(), Some(5));
        assert_eq!(&input.peek(10).unwrap()[..10], &data[6..16]);
        let mut seen = 6;
        loop {
            let n = input.available().unwrap().len();
            if n == 0 {
                break;
            }
            input.consume(n);
            seen += n;
        }
        assert_eq!(seen, 100);
        assert_eq!(input.offset(), 100);
        assert_eq!(input.peek(4).unwrap(), b"");
    }
}
