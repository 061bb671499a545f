//! Reading disk images: format detection and one module per input format.
//!
//! Every format that allows random access presents the virtual disk as a [`DiskSource`]; the
//! conversion pipeline reads chunks from it in parallel. Streams (gzip, xz, zstd, stdin) are
//! read front to back instead ([`stream`]).
//! Formats are detected from content only ([`detect`](mod@detect)), never from file names.

pub mod blockmap;
pub mod bytes;
pub mod detect;
pub mod facts;
pub mod limits;
mod origin;
pub mod parallels;
pub mod qcow2;
pub mod raw;
pub mod route;
pub mod stream;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use crate::control::Control;
use crate::error::{Error, IoContext, Result};
use crate::read_at::{FileAt, ReadAt};
use detect::{detect, Format, HEAD_LEN, TAIL_LEN};
pub use limits::InputLimits;
pub use origin::Input;
use route::{open_image, route, Route};

/// A virtual disk that can be read at any offset from several threads at once.
///
/// Implementations must be cheap to query with [`DiskSource::next_data`] so that huge sparse
/// disks cost nothing where they hold no data, and must never read outside their own file.
pub trait DiskSource: Send + Sync {
    /// Short name of the format, e.g. `"raw"` or `"qcow2"`.
    fn format(&self) -> &'static str;

    /// Size of the virtual disk in bytes.
    fn virtual_size(&self) -> u64;

    /// The first offset at or after `from` that may hold non-zero data, or `None` if the rest
    /// of the disk is known to read as zeros. May be conservative (return `from`).
    fn next_data(&self, from: u64) -> Result<Option<u64>>;

    /// The `len` bytes of the virtual disk at `offset` (the range lies inside the disk),
    /// either borrowed from the source (a memory map) or placed in `scratch`.
    fn read<'a>(&'a self, offset: u64, len: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]>;

    /// Called once the `len` bytes [`DiskSource::read`] borrowed at `offset` have been used:
    /// fails if they may not have been the file's (a memory map of a file truncated meanwhile
    /// reads zeros where the lost pages were), and lets go of them. Nothing to do by default.
    fn confirm_read(&self, offset: u64, len: usize) -> Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Format-specific facts for `info` (block size, subformat, ...); none by default.
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
}

/// How raw inputs are read. On the command line (feature `cli`) the values are the variants'
/// names in lower case: `auto`, `mmap`, `pread`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ReadMode {
    /// Whatever measured fastest: currently the guarded memory map, falling back to positional
    /// reads where the file cannot be mapped.
    #[default]
    Auto,
    /// Memory-map the input. Guarded: if another process truncates the file meanwhile, the
    /// lost pages read as zeros and the conversion fails with an error naming the file, instead
    /// of the process dying of SIGBUS (see `sys::Mapping`).
    Mmap,
    /// Positional reads (`pread`) into a reused buffer per worker.
    Pread,
}

/// How inputs are opened.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// How raw files are read.
    pub read_mode: ReadMode,
    /// What an input may claim (the virtual-size limit).
    pub limits: InputLimits,
    /// Where a layered input that needs random access (qcow2 inside xz) is spilled.
    pub spill_dir: PathBuf,
    /// Cancellation (checked while spilling).
    pub control: Control,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_mode: ReadMode::Auto,
            limits: InputLimits::default(),
            spill_dir: std::env::temp_dir(),
            control: Control::default(),
        }
    }
}

/// An input ready to be read: a random-access disk or a byte stream of the raw disk.
pub enum Body {
    /// Random access.
    Source(Box<dyn DiskSource>),
    /// The raw disk's bytes, front to back (a decompressor, standard input).
    Stream(Box<dyn Read + Send>),
}

/// An opened input: its body and the compression layers that were peeled off, outermost first.
pub struct Opened {
    /// Compression layers around the disk image (`["xz"]` for `disk.qcow2.xz`).
    pub layers: Vec<&'static str>,
    /// The innermost image's format (`"raw"`, `"qcow2"`).
    pub inner: &'static str,
    /// How to read it.
    pub body: Body,
}

impl Opened {
    /// The format with its layers, outermost first: `"raw"`, `"gzip>raw"`, `"xz>qcow2"`.
    pub fn format_name(&self) -> String {
        let mut parts: Vec<&str> = self.layers.clone();
        parts.push(self.inner);
        parts.join(">")
    }
}

/// Opens `path` (or standard input for `-`), detecting its format from content.
pub fn open(path: &Path, options: &OpenOptions) -> Result<Opened> {
    if path == Path::new("-") {
        return open_reader(Box::new(std::io::stdin()), path, options);
    }
    let file = File::open(path).context("opening the input", path)?;
    open_file(file, path, options)
}

/// Opens an already opened file (read from offset 0 whatever its position), detecting its
/// format from content; `name` labels errors. Holding the file rather than a path means a
/// rename or a symbolic link swapped in meanwhile cannot redirect the read.
pub fn open_file(file: File, path: &Path, options: &OpenOptions) -> Result<Opened> {
    let meta = file.metadata().context("reading the input's metadata", path)?;
    if !meta.is_file() {
        return Err(Error::invalid_argument("the input is not a regular file").in_file(path));
    }
    let at = FileAt::new(file.try_clone().context("opening the input", path)?)
        .context("reading the input", path)?;
    let format = detect_file(&at).map_err(|e| e.in_file(path))?;
    let body = match route(format) {
        Route::Raw => Body::Source(Box::new(raw::RawSource::from_file(
            file,
            path,
            options.read_mode,
        )?)),
        Route::Layer => {
            let mut file = file;
            std::io::Seek::rewind(&mut file).context("reading the input", path)?;
            return stream::open_file(format, file, path, options);
        }
        Route::Image => Body::Source(open_image(format, at, path, &options.limits)?),
        Route::Archive | Route::Refused => return Err(route::refusal(format).in_file(path)),
    };
    Ok(Opened {
        layers: Vec::new(),
        inner: format.name(),
        body,
    })
}

/// Opens an image that arrives as a byte stream (standard input, an HTTP body, an object-store
/// download), with the same detection and layer peeling as [`open`] on a file: raw payloads
/// stream through, random-access formats are spilled to an unnamed temporary file in
/// `options.spill_dir` (bounded by the virtual-size limit). `name` labels errors.
pub fn open_reader(mut reader: Box<dyn Read + Send>, name: &Path, options: &OpenOptions) -> Result<Opened> {
    let mut head = vec![0u8; HEAD_LEN];
    let n = read_full(&mut reader, &mut head).map_err(|e| Error::io("reading the input", e).in_file(name))?;
    head.truncate(n);
    let format = detect(&head, None).map_err(|e| e.in_file(name))?;
    let reader: Box<dyn Read + Send> = Box::new(Cursor::new(head).chain(reader));
    let body = match route(format) {
        Route::Raw => Body::Stream(Box::new(raw::PadToSector::new(reader))),
        Route::Layer => return stream::open_reader(format, reader, name, options),
        // Formats that need random access arrive on standard input too: spill them to an
        // unnamed temporary file (bounded by the virtual-size limit) and read that.
        Route::Image => {
            let file = stream::spill(reader, options).map_err(|e| e.in_file(name))?;
            let at = FileAt::new(file).context("reading the spilled input", name)?;
            Body::Source(open_image(format, at, name, &options.limits)?)
        }
        Route::Archive | Route::Refused => return Err(route::refusal(format).in_file(name)),
    };
    Ok(Opened {
        layers: Vec::new(),
        inner: format.name(),
        body,
    })
}

/// Detects the format of a random-access file from its head and tail.
pub fn detect_file(file: &dyn ReadAt) -> Result<Format> {
    let size = file.size();
    let mut head = vec![0u8; HEAD_LEN.min(size as usize)];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| Error::io("reading the input", e))?;
    let tail_len = TAIL_LEN.min(size as usize);
    let mut tail = vec![0u8; tail_len];
    file.read_exact_at(&mut tail, size - tail_len as u64)
        .map_err(|e| Error::io("reading the input", e))?;
    detect(&head, Some(&tail))
}

/// Reads until `buf` is full or the reader ends.
pub fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
