//! [`MergedDisk`]: the disk a served overlay shows (its blocks over the base archive's), as a
//! [`DiskSource`], so `overlay commit` feeds it through the same pipeline as a raw image.

use super::file::Overlay;
use super::format::OVERLAY_BLOCK;
use super::map::BlockState;
use crate::archive::reader::ArchiveReader;
use crate::error::{Error, Result};
use crate::input::DiskSource;
use crate::read_at::ReadAt;

/// An overlay over its base archive, read as one disk.
pub struct MergedDisk<R: ReadAt> {
    base: ArchiveReader<R>,
    overlay: Overlay,
}

impl<R: ReadAt> MergedDisk<R> {
    /// The disk `overlay` shows over `base` (the overlay was opened for this base).
    pub fn new(base: ArchiveReader<R>, overlay: Overlay) -> Self {
        MergedDisk { base, overlay }
    }

    /// Fills `buf` with the merged disk's bytes at `offset` (the range lies inside the disk).
    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        for run in self.overlay.runs(offset, buf.len() as u64) {
            let at = (run.offset - offset) as usize;
            let dst = &mut buf[at..at + run.len as usize];
            match run.state {
                BlockState::Data => self.overlay.read_data(run.offset, dst)?,
                BlockState::Zero => dst.fill(0),
                BlockState::Base => {
                    let n = self.base.read_at(run.offset, dst)?;
                    if n != dst.len() {
                        return Err(Error::corrupt(run.offset, "the base archive ends early"));
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: ReadAt> DiskSource for MergedDisk<R> {
    fn format(&self) -> &'static str {
        "imgpack+overlay"
    }

    fn virtual_size(&self) -> u64 {
        self.base.virtual_size()
    }

    /// The start of the first base chunk at or after `from` that is stored (and not wholly
    /// zeroed by the overlay) or holds overlay data.
    fn next_data(&self, from: u64) -> Result<Option<u64>> {
        let chunk_size = self.base.geometry().chunk_size();
        let size = self.virtual_size();
        let mut chunk = from / chunk_size;
        while chunk * chunk_size < size {
            let start = chunk * chunk_size;
            let first = start / OVERLAY_BLOCK;
            let end = (start + chunk_size).min(size).div_ceil(OVERLAY_BLOCK);
            let stored = self.base.record_of(chunk).is_some() && !self.overlay.all_zero(first, end);
            if stored || self.overlay.any_data(first, end) {
                return Ok(Some(start.max(from)));
            }
            chunk += 1;
        }
        Ok(None)
    }

    fn read<'a>(&'a self, offset: u64, len: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        scratch.resize(len, 0);
        self.read_into(offset, scratch)?;
        Ok(scratch)
    }
}
