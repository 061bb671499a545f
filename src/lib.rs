//! imgpack: disk images in, compact random-access archives out, and back.
//!
//! imgpack reads disk images (raw, qcow2, VMDK, VHD, VHDX, VDI, Parallels, optionally inside
//! gzip, xz or zstd), detects their format from content only, finds their zero blocks in
//! parallel and writes a chunked, zstd-compressed, sparse `.imgpack` archive with crc32
//! integrity ([`archive`]), enforcing a compressed-size limit as it writes. Every input is
//! hostile: a malformed image gives an [`Error`] naming what, where (file and byte offset) and
//! why, never a panic, and outputs appear complete or not at all.
//!
//! # The operations
//!
//! | call | what | options | report |
//! |------|------|---------|--------|
//! | [`convert()`], [`convert_to`], [`convert_reader`] | an image into an archive | [`ConvertOptions`] | [`ConvertReport`] |
//! | [`extract()`] | an archive back to the raw disk | [`ExtractOptions`] | [`ExtractReport`] |
//! | [`export()`] | an archive out as raw, qcow2, VMDK, VHD or VHDX | [`ExportOptions`] | [`ExportReport`] |
//! | [`info()`] | what a file is, and why `convert` would refuse it | [`InfoOptions`] | [`ImageInfo`] |
//! | [`verify()`] | every chunk of an archive decoded and checked | [`VerifyOptions`] | [`VerifyReport`] |
//! | [`digest()`] | the image digest of any input, no archive written | [`DigestOptions`] | [`DigestReport`] |
//! | [`batch::run`] | many files, sharing one pool of workers | [`batch::BatchOptions`] | [`batch::BatchReport`] |
//! | [`serve::serve`] | an archive as an NBD block device, lazily decoded, writable through an overlay | [`serve::ServeOptions`] | [`serve::StatsSnapshot`] |
//! | [`overlay::commit()`] | an archive plus a copy-on-write overlay into a new archive | [`overlay::CommitOptions`] | [`overlay::CommitReport`] |
//!
//! Options implement `Default` with the defaults documented on each field; each has a
//! [`Control`] for cancellation and progress. Above the engine, [`library`] (feature
//! `library`) is the image library: catalog, registration, visibility and lifecycle.
//!
//! ```no_run
//! use imgpack::{convert, extract, ConvertOptions, ExtractOptions};
//! let report = convert("disk.qcow2".as_ref(), "disk.imgpack".as_ref(), &ConvertOptions::default())?;
//! println!("{}: {} of {} bytes hold data", report.format, report.disk_size, report.virtual_size);
//! extract("disk.imgpack".as_ref(), "copy.raw".as_ref(), &ExtractOptions::default())?;
//! # Ok::<(), imgpack::Error>(())
//! ```
//!
//! # From a stream into a sink
//!
//! A registrar rarely has a path: an upload arrives as an HTTP body or an object-store
//! download, and the archive goes back to a store. [`Input`] names where an image comes from
//! (a path, a file already opened, or any `Read + Send`), and [`ArchiveSink`] where the
//! archive goes ([`FileSink`]: a file that appears only when complete; [`WriterSink`]: any
//! byte stream; or the caller's own, such as a multipart upload). A random-access format
//! that arrives as a stream is spilled to an unnamed temporary file, bounded by the
//! virtual-size limit, and read natively. On any error the sink is dropped without
//! [`ArchiveSink::finish`], so nothing partial is published.
//!
//! ```no_run
//! use imgpack::{convert_to, ConvertOptions, FileSink, Input};
//! let body = std::net::TcpStream::connect("127.0.0.1:8080")?; // any Read + Send
//! let sink = FileSink::create("upload.imgpack".as_ref())?;
//! let report = convert_to(Input::reader(body, "upload-17"), sink, &ConvertOptions::default())?;
//! assert_eq!(report.input, "upload-17");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Errors
//!
//! [`Error::kind`] says what sort of failure it was ([`ErrorKind::Corrupt`],
//! [`ErrorKind::Unsupported`], [`ErrorKind::LimitExceeded`], [`ErrorKind::Interrupted`], ...);
//! [`Error::path`] and [`Error::offset`] say where. An `Error` carried through an
//! `io::Error` (from a `Read` or `Write` of yours) comes back out whole with `Error::from`.
//!
//! # Features
//!
//! `cli` (the `imgpack` binary: clap, indicatif, ctrlc) and `library` (the catalog on bundled
//! SQLite) are on by default; `default-features = false` gives the engine alone.

#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod archive;
pub mod batch;
mod control;
pub mod convert;
pub mod digest;
mod error;
pub mod export;
pub mod extract;
pub mod info;
#[cfg(feature = "library")]
pub mod library;
pub(crate) mod output;
pub mod overlay;
pub(crate) mod pipeline;
pub mod read_at;
#[cfg(feature = "s3")]
pub mod remote;
pub mod serve;
pub mod sink;
#[allow(unsafe_code)]
pub(crate) mod sys;
pub mod units;
pub mod verify;

// Not part of the API (hidden from the docs, no stability promised): the input readers and
// the zero scan are public only so that the integration tests, the benchmarks and the fuzz
// targets can drive them directly.
#[doc(hidden)]
pub mod fuzz_targets;
#[doc(hidden)]
pub mod input;
#[doc(hidden)]
pub mod zero;

pub use control::{Control, Progress};
pub use convert::{convert, convert_reader, convert_to, ConvertOptions, ConvertReport};
pub use digest::{digest, DigestOptions, DigestReport};
pub use error::{Error, ErrorKind, Result};
pub use export::{export, ExportOptions, ExportReport};
pub use extract::{extract, ExtractOptions, ExtractReport};
pub use info::{info, ImageInfo, InfoOptions};
pub use input::{Input, InputLimits, ReadMode};
pub use pipeline::hook::{ChunkLookup, DedupHooks, FrameStore};
pub use sink::{ArchiveSink, FileSink, WriterSink};
pub use verify::{verify, VerifyOptions, VerifyReport};
