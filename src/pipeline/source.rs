//! The random-access producer: the chunks of a [`DiskSource`] that may hold data, read by the
//! workers themselves (a memory map or `pread` into each worker's scratch buffer).

use std::io::Write;

use super::{run, with_worker, EncodeSettings, FramePool};
use crate::archive::chunk::EncodedChunk;
use crate::archive::writer::ArchiveWriter;
use crate::control::Control;
use crate::error::Result;
use crate::input::DiskSource;

/// Encodes every chunk of `source` that may hold data into `writer`.
pub fn encode_source<W: Write + Send>(
    source: &dyn DiskSource,
    writer: ArchiveWriter<W>,
    settings: EncodeSettings,
    control: &Control,
) -> Result<ArchiveWriter<W>> {
    let virtual_size = source.virtual_size();
    let geometry = settings.geometry;
    let chunk_size = geometry.chunk_size();
    let mut windows = DataChunks::new(source, chunk_size);
    let frames = FramePool::new(&settings);
    let produce = || -> Result<Option<Vec<u64>>> {
        control.check()?;
        windows.next_window(settings.window)
    };
    let encode = |chunk: u64| -> Result<Option<EncodedChunk>> {
        control.check()?;
        with_worker(settings.level, |encoder, scratch| {
            let len = geometry.chunk_len(chunk, virtual_size);
            let offset = chunk * chunk_size;
            let data = source.read(offset, len, scratch)?;
            let encoded = encoder.encode_into(geometry, chunk, data, frames.take())?;
            source.confirm_read(offset, len)?;
            Ok(encoded)
        })
    };
    run(
        writer,
        settings,
        control,
        Some(virtual_size),
        &frames,
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
