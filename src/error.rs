//! The one error type of imgpack: an [`ErrorKind`] that says *what sort* of failure it was, plus
//! context that says *what* was being done, *where* (file and byte offset) and *why* (the source).
//!
//! Every parser reports damage as [`ErrorKind::Corrupt`] or [`ErrorKind::InvalidFormat`] with the
//! offset of the offending structure, so a user can tell exactly which byte of an upload is wrong.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What sort of failure happened. Callers (the catalog, batch, the CLI's exit path) branch on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is not in any format imgpack reads, or matches more than one.
    InvalidFormat,
    /// The input uses a feature imgpack refuses on purpose (backing files, encryption, ...).
    Unsupported,
    /// The input claims a format but its structures are damaged or inconsistent.
    Corrupt,
    /// A checksum did not match the data it covers.
    Checksum,
    /// A configured limit (compressed size, virtual size, ...) would be exceeded.
    LimitExceeded,
    /// The caller asked for something invalid (bad option value, bad size string, ...).
    InvalidArgument,
    /// The operation was cancelled (Ctrl-C, SIGTERM, or a caller's cancel flag).
    Interrupted,
    /// Reading or writing failed at the operating-system level.
    Io,
    /// The image catalog refused the operation (unknown id, not permitted, bad transition).
    Catalog,
}

impl ErrorKind {
    /// A short lower-case label, used in JSON output and logs.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::InvalidFormat => "invalid-format",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Checksum => "checksum",
            ErrorKind::LimitExceeded => "limit-exceeded",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Io => "io",
            ErrorKind::Catalog => "catalog",
        }
    }
}

/// imgpack's error: a kind, a message, and optionally the file, the byte offset and the cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    path: Option<PathBuf>,
    offset: Option<u64>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// imgpack's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            path: None,
            offset: None,
            source: None,
        }
    }

    /// Damaged structure at `offset` of the input.
    pub fn corrupt(offset: u64, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Corrupt, message).at(offset)
    }

    /// A feature refused on purpose.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// A bad argument from the caller.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::new(ErrorKind::Io, what).with_source(source)
    }

    /// The operation was cancelled.
    pub fn interrupted() -> Self {
        Error::new(ErrorKind::Interrupted, "interrupted")
    }

    /// Attaches the byte offset the error is about (kept if one is already set).
    pub fn at(mut self, offset: u64) -> Self {
        self.offset.get_or_insert(offset);
        self
    }

    /// Attaches the file the error is about (kept if one is already set).
    pub fn in_file(mut self, path: &Path) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_path_buf());
        }
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What sort of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without file, offset or cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The file the error is about, if known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The byte offset the error is about, if known.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        if let Some(offset) = self.offset {
            write!(f, "at offset {offset} (0x{offset:x}): ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// An imgpack error that travelled inside an `io::Error` (a decoder's or a sink's `Write`
/// must return `io::Error`) comes back out as itself, kind, file and offset intact.
impl From<io::Error> for Error {
    fn from(source: io::Error) -> Self {
        if source.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(Ok(inner)) = source.into_inner().map(|inner| inner.downcast::<Error>()) {
                return *inner;
            }
            return Error::new(ErrorKind::Io, "I/O error");
        }
        if source.kind() == io::ErrorKind::Interrupted {
            return Error::interrupted().with_source(source);
        }
        Error::io("I/O error", source)
    }
}

/// Carries an imgpack error through an interface that speaks `io::Error` (a `Read` or `Write`
/// implementation); [`From<io::Error>`](#impl-From<Error>-for-Error) takes it back out whole.
impl From<Error> for io::Error {
    fn from(error: Error) -> Self {
        // Never `io::ErrorKind::Interrupted`: `write_all` and `read_exact` retry those, so a
        // cancelled operation would spin instead of stopping.
        let kind = match error.kind() {
            ErrorKind::Io | ErrorKind::Interrupted => io::ErrorKind::Other,
            ErrorKind::InvalidArgument => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, error)
    }
}

/// Extension for `Result<T, io::Error>`: say what was being done.
pub trait IoContext<T> {
    /// Wraps an I/O error with what was being done and on which file.
    fn context(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, io::Error> {
    fn context(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(what, e).in_file(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_survives_a_trip_through_io_error() {
        let original = Error::corrupt(512, "bad grain table").in_file(Path::new("up.vmdk"));
        let carried: io::Error = original.into();
        assert_eq!(carried.kind(), io::ErrorKind::InvalidData);
        let back = Error::from(carried);
        assert_eq!(back.kind(), ErrorKind::Corrupt);
        assert_eq!(back.offset(), Some(512));
        assert_eq!(back.path(), Some(Path::new("up.vmdk")));
        let cancelled: io::Error = Error::interrupted().into();
        assert_ne!(
            cancelled.kind(),
            io::ErrorKind::Interrupted,
            "write_all would retry it"
        );
        assert_eq!(Error::from(cancelled).kind(), ErrorKind::Interrupted);
        let plain = Error::from(io::Error::other("disk on fire"));
        assert_eq!(plain.kind(), ErrorKind::Io);
    }

    #[test]
    fn display_names_file_offset_and_message() {
        let e = Error::corrupt(4096, "L2 table outside the file").in_file(Path::new("/x/disk.qcow2"));
        assert_eq!(
            e.to_string(),
            "/x/disk.qcow2: at offset 4096 (0x1000): L2 table outside the file"
        );
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn first_context_wins() {
        let e = Error::corrupt(1, "x")
            .at(2)
            .in_file(Path::new("a"))
            .in_file(Path::new("b"));
        assert_eq!(e.offset(), Some(1));
        assert_eq!(e.path(), Some(Path::new("a")));
    }
}
