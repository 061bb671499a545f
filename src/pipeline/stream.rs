//! The stream producer: a reader thread cuts a byte stream (a decompressor, standard input)
//! into span buffers, recycled through a channel so that memory stays bounded.

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::{encode_span, run, span_size, with_worker, DedupHooks, EncodeSettings, EncodedSpan, FramePool};
use crate::archive::digest::TreeHasher;
use crate::archive::writer::ArchiveWriter;
use crate::control::Control;
use crate::error::{Error, ErrorKind, Result};
use crate::input::read_full;
use crate::units::format_size;

/// A span number and the span's bytes, cut from a stream.
type StreamChunk = (u64, Vec<u8>);

/// Encodes a byte stream into `writer` (through the deduplication hook if given, see
/// [`super::hook`]), refusing it once it exceeds `max_virtual_size`. Returns the writer, the
/// image digest's leaves and the stream's length (the virtual size).
pub fn encode_stream<W: Write + Send, R: Read + Send>(
    reader: R,
    writer: ArchiveWriter<W>,
    settings: EncodeSettings,
    control: &Control,
    max_virtual_size: u64,
    hooks: Option<&DedupHooks>,
) -> Result<(ArchiveWriter<W>, TreeHasher, u64)> {
    let lookup = hooks.map(|h| h.lookup.as_ref());
    let geometry = settings.geometry;
    let span = span_size(geometry);
    let buffers = settings.window * 2;
    let (full_tx, full_rx) = sync_channel::<Result<StreamChunk>>(buffers);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(buffers + settings.window);
    let frames = FramePool::new(&settings).with_hooks(hooks);
    std::thread::scope(|scope| {
        let reader_thread = scope.spawn(move || {
            read_chunks(
                reader,
                span as usize,
                max_virtual_size,
                &full_tx,
                &empty_rx,
                control,
            )
        });
        let mut finished = false;
        // Owns the receiving end: when the run ends, dropping it unblocks the reader thread.
        let produce = move || -> Result<Option<Vec<StreamChunk>>> {
            control.check()?;
            let mut window = Vec::with_capacity(settings.window);
            while !finished && window.len() < settings.window {
                // Wait for the first buffer, then take what is ready without waiting, so that
                // compression keeps pace with a slow decoder instead of waiting for a full window.
                let next = if window.is_empty() {
                    full_rx.recv().ok()
                } else {
                    full_rx.try_recv().ok()
                };
                match next {
                    Some(item) => window.push(item?),
                    None if window.is_empty() => finished = true,
                    None => break,
                }
            }
            Ok((!window.is_empty()).then_some(window))
        };
        let frames = &frames;
        let encode = |(index, buffer): (u64, Vec<u8>)| -> Result<EncodedSpan> {
            control.check()?;
            let encoded = with_worker(settings.level, |encoder, _| {
                encode_span(encoder, geometry, index * span, &buffer, frames, lookup)
            });
            let _ = empty_tx.send(buffer);
            encoded
        };
        let result = run(writer, settings, control, None, frames, produce, encode);
        let length = reader_thread.join().expect("stream reader thread panicked");
        let (writer, tree) = result?;
        Ok((writer, tree, length?))
    })
}

/// The reader thread of [`encode_stream`] (and of `digest_stream`): fills chunk buffers from
/// `reader` and sends them in order; returns the stream's total length.
pub(crate) fn read_chunks<R: Read>(
    mut reader: R,
    chunk_size: usize,
    max_virtual_size: u64,
    full: &SyncSender<Result<StreamChunk>>,
    empty: &Receiver<Vec<u8>>,
    control: &Control,
) -> Result<u64> {
    let mut total = 0u64;
    for chunk in 0u64.. {
        let mut buffer = empty.try_recv().unwrap_or_default();
        buffer.resize(chunk_size, 0);
        let filled = match read_full(&mut reader, &mut buffer).map_err(stream_error) {
            Ok(n) => n,
            Err(e) => {
                let _ = full.send(Err(e.at_least(total)));
                return Ok(total);
            }
        };
        if filled == 0 {
            break;
        }
        total += filled as u64;
        if total > max_virtual_size {
            let err = Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the image's virtual size exceeds the limit of {} ({max_virtual_size} bytes); stopped decoding there",
                    format_size(max_virtual_size)
                ),
            );
            let _ = full.send(Err(err));
            return Ok(total);
        }
        buffer.truncate(filled);
        if control.check().is_err() || full.send(Ok((chunk, buffer))).is_err() {
            break;
        }
        if filled < chunk_size {
            break;
        }
    }
    Ok(total)
}

trait AtLeast {
    fn at_least(self, offset: u64) -> Error;
}

impl AtLeast for Error {
    /// Errors from a stream without their own position are placed at the uncompressed offset.
    fn at_least(self, offset: u64) -> Error {
        if self.offset().is_some() {
            self
        } else {
            let message = format!("{} (after {offset} bytes of decoded data)", self.message());
            let kind = self.kind();
            Error::new(kind, message).with_source(self)
        }
    }
}

/// Decoders report damage as `io::Error`s wrapping an imgpack [`Error`]; unwrap those so the
/// kind and offset survive.
fn stream_error(e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return Error::from(e);
    }
    match e.kind() {
        IoErrorKind::InvalidData | IoErrorKind::UnexpectedEof => {
            Error::new(ErrorKind::Corrupt, format!("compressed stream is damaged: {e}")).with_source(e)
        }
        _ => Error::io("reading the input stream", e),
    }
}
