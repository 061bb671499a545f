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
//! - a qcow2 image needs random access, so it is spilled to an unnamed temporary file
//!   (`O_TMPFILE` in the spill directory: nothing is left behind on success, error, interrupt or
//!   even SIGKILL) and read from there.
//!
//! [`facts`] tells `info` what a compressed file holds without decoding it: the layers (from
//! the first decoded bytes only), and the uncompressed size where the format records it (the xz
//! index, zstd frame headers); so it answers at once even on a decompression bomb.

pub mod buffer;
pub mod gzip;
pub mod xz;
pub mod zstd;

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::detect::{detect, Format, HEAD_LEN};
use super::facts::Facts;
use super::limits::check_virtual_size;
use super::raw::{disk_size_of, PadToSector};
use super::route::{open_image, route, Route};
use super::{read_full, Body, OpenOptions, Opened};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::read_at::{FileAt, ReadAt};
use crate::units::format_size;
use crate::zero::is_zero;

/// Most layers an input may have, counting compression layers and an image format that needs
/// random access (qcow2), but not a raw payload.
pub const MAX_LAYERS: usize = 2;

/// Most zstd blocks walked to find a file's declared size for `info`.
const MAX_ZSTD_BLOCKS_WALKED: u64 = 1 << 20;

/// Wraps an imgpack error as the `io::Error` a decoder's `read` returns.
pub(crate) fn damage(error: Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// The imgpack error inside an `io::Error` from a decoder, or one describing the I/O failure.
pub fn unwrap_io(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(error) = inner.downcast::<Error>() {
                return *error;
            }
        }
        return Error::new(ErrorKind::Io, "reading the input stream");
    }
    match e.kind() {
        io::ErrorKind::Interrupted => Error::interrupted().with_source(e),
        _ => Error::io("reading the input stream", e),
    }
}

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

/// A decoder reading the output of another: its errors say that their offsets are offsets in
/// the outer layer's decoded data, not in the file.
struct InnerLayer {
    reader: Box<dyn Read + Send>,
    outer: &'static str,
}

impl Read for InnerLayer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf).map_err(|e| {
            if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
                let error = unwrap_io(e);
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

/// Most bytes a spilled image may take: the virtual-size limit plus room for metadata.
pub fn spill_limit(max_virtual_size: u64) -> u64 {
    max_virtual_size
        .saturating_add(max_virtual_size / 8)
        .saturating_add(64 << 20)
}

/// Copies a decoded image into an unnamed temporary file in `options.spill_dir` (holes where
/// whole 1 MiB pieces are zero), refusing it past [`spill_limit`] and stopping on cancel.
pub fn spill(mut reader: impl Read, options: &OpenOptions) -> Result<File> {
    let dir = &options.spill_dir;
    let mut file =
        tempfile::tempfile_in(dir).context("creating a temporary file for the decoded image", dir)?;
    let limit = spill_limit(options.limits.max_virtual_size);
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        options.control.check()?;
        let n = read_full(&mut reader, &mut buffer).map_err(unwrap_io)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > limit {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the decoded image exceeds {} ({limit} bytes), more than an image within the virtual-size limit of {} can take; stopped decoding there",
                    format_size(limit),
                    format_size(options.limits.max_virtual_size)
                ),
            ));
        }
        if is_zero(&buffer[..n]) {
            file.seek(SeekFrom::Current(n as i64))
                .context("writing the temporary file", dir)?;
        } else {
            file.write_all(&buffer[..n])
                .context("writing the temporary file", dir)?;
        }
        if n < buffer.len() {
            break;
        }
    }
    file.set_len(total).context("writing the temporary file", dir)?;
    file.seek(SeekFrom::Start(0))
        .context("writing the temporary file", dir)?;
    Ok(file)
}

/// The facts about a compressed file, found without decoding more than its first bytes.
pub fn facts(path: &Path, format: Format, options: &OpenOptions) -> Result<Facts> {
    let file = File::open(path).context("opening the input", path)?;
    let at = FileAt::new(file.try_clone().context("opening the input", path)?)
        .context("reading the input", path)?;
    let mut info = Facts::of(format.name());
    info.compressed_size = Some(at.size());
    let mut refusal: Option<Error> = None;
    let mut exact_size = None;
    let mut details = serde_json::Map::new();
    match format {
        Format::Xz => match xz::read_index(&at) {
            Ok(index) => {
                details.insert("uncompressed_size".into(), index.uncompressed_size.into());
                details.insert("uncompressed_size_source".into(), "xz index".into());
                details.insert("xz_streams".into(), index.streams.into());
                details.insert("xz_blocks".into(), index.blocks.into());
                details.insert("xz_checks".into(), index.checks.join(",").into());
                exact_size = Some(index.uncompressed_size);
            }
            Err(e) => refusal = Some(e),
        },
        Format::Zstd => match zstd::content_size(&at, MAX_ZSTD_BLOCKS_WALKED) {
            Ok(Some(size)) => {
                details.insert("uncompressed_size".into(), size.into());
                details.insert("uncompressed_size_source".into(), "zstd frame headers".into());
                exact_size = Some(size);
            }
            Ok(None) => {
                details.insert(
                    "uncompressed_size_source".into(),
                    "unknown (a zstd frame does not declare its content size)".into(),
                );
            }
            Err(e) => refusal = Some(e),
        },
        Format::Gzip => {
            let mut isize = [0u8; 4];
            if at.size() >= 18 && at.read_exact_at(&mut isize, at.size() - 4).is_ok() {
                details.insert("gzip_isize_hint".into(), u32::from_le_bytes(isize).into());
                details.insert(
                    "uncompressed_size_source".into(),
                    "unknown without decoding: gzip_isize_hint is the last member's size modulo 2^32 (the total only for a single-member file under 4 GiB)".into(),
                );
            }
        }
        _ => {}
    }
    let threads = 1; // a few decoded bytes are all that is needed
    let mut layers = vec![format.name()];
    let mut inner_name = "unknown";
    let mut stream = decoder(format, Box::new(file), None, threads)?;
    loop {
        let (head, rest) = match peek_head(stream) {
            Ok(found) => found,
            Err(e) => {
                refusal.get_or_insert(e);
                break;
            }
        };
        let inner = match detect(&head, None) {
            Ok(inner) => inner,
            Err(e) => {
                refusal.get_or_insert(e);
                break;
            }
        };
        match route(inner) {
            Route::Raw => {
                inner_name = "raw";
                if layers.len() == 1 {
                    info.virtual_size = exact_size.map(disk_size_of);
                }
                break;
            }
            Route::Layer => {
                if layers.len() >= MAX_LAYERS {
                    refusal.get_or_insert(too_deep(&layers, inner.name()));
                    inner_name = inner.name();
                    break;
                }
                layers.push(inner.name());
                stream = decoder(inner, rest, None, threads)?;
            }
            Route::Image => {
                inner_name = inner.name();
                if layers.len() >= MAX_LAYERS {
                    refusal.get_or_insert(too_deep(&layers, inner.name()));
                }
                info.virtual_size = declared_virtual_size(inner, &head);
                break;
            }
            Route::Archive | Route::Refused => {
                inner_name = inner.name();
                refusal.get_or_insert(refuse_payload(inner, &layers));
                break;
            }
        }
    }
    if let Some(size) = info.virtual_size {
        if let Err(e) = check_virtual_size(size, options.limits.max_virtual_size) {
            refusal.get_or_insert(e);
        }
    }
    details.insert(
        "layers".into(),
        serde_json::Value::from(layers.iter().map(|l| l.to_string()).collect::<Vec<_>>()),
    );
    layers.push(inner_name);
    info.format = layers.join(">");
    info.details.extend(details);
    info.refusal = refusal.map(|e| e.to_string());
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn options(dir: &Path, max_virtual_size: u64) -> OpenOptions {
        OpenOptions {
            limits: crate::input::InputLimits { max_virtual_size },
            spill_dir: dir.to_path_buf(),
            ..OpenOptions::default()
        }
    }

    fn empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).unwrap().next().is_none()
    }

    #[test]
    fn spill_keeps_bytes_and_leaves_no_name_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![7u8; 1000];
        data.resize(3 << 20, 0);
        data.extend_from_slice(b"end");
        let mut file = spill(&data[..], &options(dir.path(), 1 << 30)).unwrap();
        assert!(empty(dir.path()));
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert!(back == data);
    }

    #[test]
    fn spill_stops_at_the_limit_and_on_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let endless = io::repeat(0).take(u64::MAX);
        let err = spill(endless, &options(dir.path(), 1 << 20)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
        let mut cancelled = options(dir.path(), 1 << 30);
        cancelled.control.cancel = Some(Arc::new(AtomicBool::new(true)));
        let err = spill(io::repeat(1).take(1 << 30), &cancelled).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Interrupted);
        assert!(empty(dir.path()));
    }

    #[test]
    fn io_errors_give_back_the_imgpack_error() {
        let inner = Error::corrupt(42, "bad block");
        let back = unwrap_io(damage(inner));
        assert_eq!((back.kind(), back.offset()), (ErrorKind::Corrupt, Some(42)));
        let plain = unwrap_io(io::Error::other("disk on fire"));
        assert_eq!(plain.kind(), ErrorKind::Io);
    }
}
