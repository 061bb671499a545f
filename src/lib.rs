//! imgpack: disk images in, compact random-access archives out, and back.
//!
//! imgpack reads raw disk images (and, as they land, qcow2 and compressed streams), finds
//! their zero blocks in parallel, and writes a chunked, zstd-compressed, sparse archive with
//! crc32 integrity ([`archive`]), enforcing a compressed-size limit as it writes. It treats
//! every input as hostile: malformed images give an [`Error`] naming what and where, never a
//! panic, and outputs appear complete or not at all.
//!
//! The command-line tool is a thin shell over these calls:
//!
//! ```no_run
//! use imgpack::{convert, extract, ConvertOptions, ExtractOptions};
//! let report = convert("disk.raw".as_ref(), "disk.imgpack".as_ref(), &ConvertOptions::default())?;
//! assert!(report.compressed_size <= report.virtual_size + 4096);
//! extract("disk.imgpack".as_ref(), "copy.raw".as_ref(), &ExtractOptions::default())?;
//! # Ok::<(), imgpack::Error>(())
//! ```

#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod archive;
pub mod batch;
pub mod control;
pub mod convert;
pub mod error;
pub mod extract;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod info;
pub mod input;
#[cfg(feature = "library")]
pub mod library;
pub mod output;
pub mod pipeline;
pub mod read_at;
pub mod sink;
#[allow(unsafe_code)]
pub mod sys;
pub mod units;
pub mod verify;
pub mod zero;

pub use control::{Control, Progress};
pub use convert::{convert, convert_reader, convert_to, ConvertOptions, ConvertReport};
pub use error::{Error, ErrorKind, Result};
pub use extract::{extract, ExtractOptions, ExtractReport};
pub use info::{info, ImageInfo};
pub use input::Input;
pub use sink::{ArchiveSink, FileSink, WriterSink};
pub use verify::{verify, VerifyOptions, VerifyReport};
