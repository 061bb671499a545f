//! [`Input`]: where an image comes from — a path, a file already opened, or a byte stream
//! (an HTTP body, an object-store download) — and the one place that opens each.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{open, open_file, open_reader, OpenOptions, Opened};
use crate::error::Result;

/// An image to read. Formats are detected from content whichever way it arrives; a stream
/// that holds a random-access format (qcow2, VMDK, ...) is spilled to an unnamed temporary
/// file, bounded by the virtual-size limit, and read natively.
pub struct Input {
    origin: Origin,
    name: PathBuf,
}

enum Origin {
    Path,
    File(File),
    Reader(Box<dyn Read + Send>),
}

impl Input {
    /// The file at `path`, or standard input for `-`.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Input {
            origin: Origin::Path,
            name: path.into(),
        }
    }

    /// A regular file the caller has already opened (and checked); read from offset 0 with
    /// positional reads. `name` labels reports and errors.
    pub fn file(file: File, name: impl Into<PathBuf>) -> Self {
        Input {
            origin: Origin::File(file),
            name: name.into(),
        }
    }

    /// Bytes read front to back, once. `name` labels reports and errors.
    pub fn reader(reader: impl Read + Send + 'static, name: impl Into<PathBuf>) -> Self {
        Input {
            origin: Origin::Reader(Box::new(reader)),
            name: name.into(),
        }
    }

    /// What reports and errors call this input.
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// The file of an input made with [`Input::file`], so a second reader can go over the
    /// same bytes (an upload's SHA-256 beside the conversion); `None` for the others.
    pub fn opened_file(&self) -> Option<&File> {
        match &self.origin {
            Origin::File(file) => Some(file),
            _ => None,
        }
    }

    /// For an input made with [`Input::reader`], the same input with its stream passed through
    /// `wrap` first (to hash the bytes as they arrive, say); other inputs are returned as they are.
    pub fn wrap_reader(self, wrap: impl FnOnce(Box<dyn Read + Send>) -> Box<dyn Read + Send>) -> Self {
        match self.origin {
            Origin::Reader(reader) => Input {
                origin: Origin::Reader(wrap(reader)),
                name: self.name,
            },
            origin => Input {
                origin,
                name: self.name,
            },
        }
    }

    /// Detects the format and opens the image for reading.
    pub(crate) fn open(self, options: &OpenOptions) -> Result<Opened> {
        match self.origin {
            Origin::Path => open(&self.name, options),
            Origin::File(file) => open_file(file, &self.name, options),
            Origin::Reader(reader) => open_reader(reader, &self.name, options),
        }
    }
}
