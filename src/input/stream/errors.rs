//! How decoders report damage: as an `io::Error` (what `Read` allows) wrapping an imgpack
//! [`Error`] with its kind and offset ([`damage`]), got back whole by [`unwrap_io`]; and
//! [`InnerLayer`], which says of an inner layer's errors that their offsets are offsets in the
//! outer layer's decoded data, not in the file.

use std::io::{self, Read};

use crate::error::Error;

/// Wraps an imgpack error as the `io::Error` a decoder's `read` returns.
pub(crate) fn damage(error: Error) -> io::Error {
    error.into()
}

/// The imgpack error inside an `io::Error` from a decoder (`Error::from` takes it back out
/// whole), or one saying that reading the input stream failed.
pub fn unwrap_io(e: io::Error) -> Error {
    if carries_error(&e) || e.kind() == io::ErrorKind::Interrupted {
        return Error::from(e);
    }
    Error::io("reading the input stream", e)
}

fn carries_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Error>())
}

/// A decoder reading the output of another: its errors say that their offsets are offsets in
/// the outer layer's decoded data, not in the file.
pub(super) struct InnerLayer {
    /// The inner layer's decoder.
    pub reader: Box<dyn Read + Send>,
    /// The outer layer's name.
    pub outer: &'static str,
}

impl Read for InnerLayer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf).map_err(|e| {
            if carries_error(&e) {
                let error = Error::from(e);
                let mut wrapped = Error::new(
                    error.kind(),
                    format!(
                        "in the data decoded from the {} layer: {}",
                        self.outer,
                        error.message()
                    ),
                );
                if let Some(offset) = error.offset() {
                    wrapped = wrapped.at(offset);
                }
                damage(wrapped.with_source(error))
            } else {
                e
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn io_errors_give_back_the_imgpack_error() {
        let inner = Error::corrupt(42, "bad block");
        let back = unwrap_io(damage(inner));
        assert_eq!((back.kind(), back.offset()), (ErrorKind::Corrupt, Some(42)));
        let plain = unwrap_io(io::Error::other("disk on fire"));
        assert_eq!(plain.kind(), ErrorKind::Io);
    }
}
