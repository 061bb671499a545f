//! Compressed inputs: gzip, xz and zstd streams, peeled layer by layer.
//!
//! Each decoder ([`gzip::GzipDecoder`], [`xz::XzDecoder`], [`zstd::ZstdDecoder`]) is a `Read`
//! of the uncompressed bytes that reports damage as an `io::Error` wrapping an
//! [`Error`] (kind `Corrupt`, `Checksum`, `LimitExceeded`...) with the compressed
//! offset and the member, block or frame; [`unwrap_io`] gets it back.
//!
//! After a layer is peeled, the payload's first bytes are detected again by content:
//! - a raw disk streams straight on into the conversion pipeline ([`Body::Stream`]), with no
//!   temporary file and no whole-image buffering;
//! - another compression layer is peeled in turn (at most [`MAX_LAYERS`] layers in all,
//!   counting an image format such as qcow2 as a layer: `gzip>xz>raw` and `xz>qcow2` are read,
//!   `gzip>xz>qcow2` and `gzip>xz>zstd>raw` are refused);
//! - an image format (qcow2, VMDK, VHD, VHDX, VDI, Parallels) needs random access, so it is
//!   spilled to an unnamed temporary file and read from there ([`spill()`]).
//!
//! This module routes the layers (through [`route()`](super::route::route), like every other input path);
//! `errors` holds how decoders report damage, `spill` the temporary file, and `describe`
//! ([`facts`]) what `info` learns of a compressed file without decoding it.

pub mod buffer;
mod describe;
mod errors;
pub mod gzip;
mod spill;
pub mod xz;
pub mod zstd;

pub use describe::facts;
pub(crate) use errors::damage;
pub use errors::unwrap_io;
pub use spill::{spill, spill_limit};

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::Path;

use super::detect::{detect, Format, HEAD_LEN};
use super::limits::check_virtual_size;
use super::raw::{disk_size_of, PadToSector};
use super::route::{open_image, route, Route};
use super::{read_full, Body, OpenOptions, Opened};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::read_at::FileAt;
use errors::InnerLayer;

/// Most layers an input may have, counting compression layers and an image format that needs
/// random access (qcow2), but not a raw payload.
pub const MAX_LAYERS: usize = 2;

/// Most zstd blocks walked to find a file's declared size.
const MAX_ZSTD_BLOCKS_WALKED: u64 = 1 << 20;

/// What is known about a compressed file before decoding it.
#[derive(Debug, Default)]
struct Known {
    /// The xz index, for naming damaged blocks.
    xz_index: Option<xz::XzIndex>,
    /// The exact decoded size of the outer layer, when the format records it.
    decoded_size: Option<u64>,
}

/// Reads what the file's format records about itself (xz index, zstd frame sizes).
fn known(format: Format, file: &FileAt) -> Result<Known> {
    match format {
        Format::Xz => {
            let index = xz::read_index(file)?;
            Ok(Known {
                decoded_size: Some(index.uncompressed_size),
                xz_index: Some(index),
            })
        }
        Format::Zstd => Ok(Known {
            decoded_size: zstd::content_size(file, MAX_ZSTD_BLOCKS_WALKED).unwrap_or(None),
            xz_index: None,
        }),
        _ => Ok(Known::default()),
    }
}

/// Opens a compressed file (`format` is a stream format detected from its content).
pub fn open_file(format: Format, file: File, path: &Path, options: &OpenOptions) -> Result<Opened> {
    let at = FileAt::new(file.try_clone().context("opening the input", path)?)
        .context("reading the input", path)?;
    let known = known(format, &at).map_err(|e| e.in_file(path))?;
    open_layers(format, Box::new(file), known, path, options)
}

/// Opens a compressed stream that can only be read front to back (standard input).
pub fn open_reader(
    format: Format,
    reader: Box<dyn Read + Send>,
    path: &Path,
    options: &OpenOptions,
) -> Result<Opened> {
    open_layers(format, reader, Known::default(), path, options)
}

/// A decoder for one layer.
fn decoder(
    format: Format,
    reader: Box<dyn Read + Send>,
    xz_index: Option<xz::XzIndex>,
    threads: u32,
) -> Result<Box<dyn Read + Send>> {
    Ok(match format {
        Format::Gzip => Box::new(gzip::GzipDecoder::new(reader)),
        Format::Xz => Box::new(xz::XzDecoder::new(reader, threads, xz_index)),
        Format::Zstd => Box::new(zstd::ZstdDecoder::new(reader)?),
        other => {
            return Err(Error::invalid_argument(format!(
                "{} is not a compressed stream",
                other.name()
            )))
        }
    })
}

/// The first bytes of a stream, and the stream with them put back.
fn peek_head(mut reader: Box<dyn Read + Send>) -> Result<(Vec<u8>, Box<dyn Read + Send>)> {
    let mut head = vec![0u8; HEAD_LEN];
    let n = read_full(&mut reader, &mut head).map_err(unwrap_io)?;
    head.truncate(n);
    let rejoined: Box<dyn Read + Send> = Box::new(Cursor::new(head.clone()).chain(reader));
    Ok((head, rejoined))
}

fn too_deep(layers: &[&str], next: &str) -> Error {
    Error::unsupported(format!(
        "{} inside {} is nested deeper than {MAX_LAYERS} layers",
        next,
        layers.join(" inside ")
    ))
}

fn refuse_payload(inner: Format, layers: &[&str]) -> Error {
    let container = layers.join(">");
    match inner {
        Format::Imgpack => Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "the {container} stream holds an imgpack archive (decompress it and use `imgpack extract`)"
            ),
        ),
        other => Error::unsupported(format!(
            "{} images inside a {container} stream are not supported",
            other.name()
        )),
    }
}

fn open_layers(
    format: Format,
    reader: Box<dyn Read + Send>,
    known: Known,
    path: &Path,
    options: &OpenOptions,
) -> Result<Opened> {
    let threads = u32::try_from(rayon::current_num_threads()).unwrap_or(1);
    let mut layers = vec![format.name()];
    let mut decoded = decoder(format, reader, known.xz_index, threads)?;
    let mut exact_size = known.decoded_size;
    loop {
        let (head, stream) = peek_head(decoded).map_err(|e| e.in_file(path))?;
        let inner = detect(&head, None).map_err(|e| e.in_file(path))?;
        match route(inner) {
            Route::Raw => {
                if let Some(size) = exact_size {
                    check_virtual_size(disk_size_of(size), options.limits.max_virtual_size)
                        .map_err(|e| e.in_file(path))?;
                }
                return Ok(Opened {
                    layers,
                    inner: "raw",
                    body: Body::Stream(Box::new(PadToSector::new(stream))),
                });
            }
            Route::Layer => {
                if layers.len() >= MAX_LAYERS {
                    return Err(too_deep(&layers, inner.name()).in_file(path));
                }
                let outer = layers.last().copied().unwrap_or("outer");
                layers.push(inner.name());
                decoded = Box::new(InnerLayer {
                    reader: decoder(inner, stream, None, threads)?,
                    outer,
                });
                exact_size = None;
            }
            Route::Image => {
                // An image inside a stream (disk.qcow2.xz, an OVA's disk.vmdk.gz) needs random
                // access: it is spilled, and counts as a layer.
                if layers.len() >= MAX_LAYERS {
                    return Err(too_deep(&layers, inner.name()).in_file(path));
                }
                if let Some(size) = declared_virtual_size(inner, &head) {
                    check_virtual_size(size, options.limits.max_virtual_size).map_err(|e| e.in_file(path))?;
                }
                let file = spill(stream, options).map_err(|e| e.in_file(path))?;
                let at = FileAt::new(file).context("reading the decoded image", path)?;
                let source = open_image(inner, at, path, &options.limits)?;
                return Ok(Opened {
                    layers,
                    inner: inner.name(),
                    body: Body::Source(source),
                });
            }
            Route::Archive | Route::Refused => return Err(refuse_payload(inner, &layers).in_file(path)),
        }
    }
}

/// The virtual size an image's first bytes declare, where it is that simple (a qcow2 header),
/// so that an image over the limit is refused before it is spilled.
fn declared_virtual_size(format: Format, head: &[u8]) -> Option<u64> {
    match format {
        Format::Qcow2 => qcow2_virtual_size(head),
        _ => None,
    }
}

/// The virtual size in a qcow2 header (big-endian u64 at offset 24).
fn qcow2_virtual_size(head: &[u8]) -> Option<u64> {
    let bytes = head.get(24..32)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
