//! The random-access producer: the spans of a [`DiskSource`] that may hold data, read by the
//! workers themselves (a memory map or `pread` into each worker's scratch buffer).

use std::io::Write;

use super::{encode_span, run, span_size, with_worker, DedupHooks, EncodeSettings, EncodedSpan, FramePool};
use crate::archive::digest::TreeHasher;
use crate::archive::writer::ArchiveWriter;
use crate::control::Control;
use crate::error::Result;
use crate::input::DiskSource;

/// Encodes every chunk of `source` that may hold data into `writer`, through the
/// deduplication hook if given (see [`super::hook`]); returns it with the image digest's leaves.
pub fn encode_source<W: Write + Send>(
    source: &dyn DiskSource,
    writer: ArchiveWriter<W>,
    settings: EncodeSettings,
    control: &Control,
    hooks: Option<&DedupHooks>,
) -> Result<(ArchiveWriter<W>, TreeHasher)> {
    let lookup = hooks.map(|h| h.lookup.as_ref());
    let virtual_size = source.virtual_size();
    let geometry = settings.geometry;
    let span = span_size(geometry);
    let mut windows = DataChunks::new(source, span);
    let frames = FramePool::new(&settings).with_hooks(hooks);
    let produce = || -> Result<Option<Vec<u64>>> {
        control.check()?;
        windows.next_window(settings.window)
    };
    let frames = &frames;
    let encode = |index: u64| -> Result<EncodedSpan> {
        control.check()?;
        with_worker(settings.level, |encoder, scratch| {
            let offset = index * span;
            let len = (virtual_size - offset).min(span) as usize;
            let data = source.read(offset, len, scratch)?;
            let encoded = encode_span(encoder, geometry, offset, data, frames, lookup)?;
            source.confirm_read(offset, len)?;
            Ok(encoded)
        })
    };
    run(
        writer,
        settings,
        control,
        Some(virtual_size),
        frames,
        produce,
        encode,
    )
}

/// Walks the chunks of a [`DiskSource`] that may hold data, skipping the rest without work.
pub struct DataChunks<'a> {
    source: &'a dyn DiskSource,
    chunk_size: u64,
    position: u64,
}

impl<'a> DataChunks<'a> {
    /// Starts at the beginning of `source`, in chunks of `chunk_size`.
    pub fn new(source: &'a dyn DiskSource, chunk_size: u64) -> Self {
        DataChunks {
            source,
            chunk_size,
            position: 0,
        }
    }

    /// The next (up to) `max` chunk numbers that may hold data, or `None` at the end.
    pub fn next_window(&mut self, max: usize) -> Result<Option<Vec<u64>>> {
        let virtual_size = self.source.virtual_size();
        let mut window = Vec::with_capacity(max);
        while window.len() < max && self.position < virtual_size {
            match self.source.next_data(self.position)? {
                Some(offset) if offset < virtual_size => {
                    let chunk = offset.max(self.position) / self.chunk_size;
                    window.push(chunk);
                    self.position = (chunk + 1).saturating_mul(self.chunk_size);
                }
                _ => self.position = virtual_size,
            }
        }
        Ok((!window.is_empty()).then_some(window))
    }
}
