//! [`Overlay`]: an open overlay file: reads of the blocks it holds, and writes, zeroing and
//! trimming that go into it, crash-safely.
//!
//! Crash safety comes from the order of writes and from [`Overlay::flush`]. A write puts its
//! data in the data area and marks its blocks as data in the in-memory map only: the map on
//! disk learns of new data blocks at a flush, which `fdatasync`s the data first, then writes
//! the map bytes that changed, then `fdatasync`s again. So even after a power loss (where the
//! kernel may write pages back in any order) a map entry on disk never points at data that
//! is not there: an unflushed write reads back as the block's old contents, never as a hole.
//! Zeroing marks the map on disk first (in the bytes as last flushed, so no unflushed data
//! entry goes with it) and only then punches the data out. An NBD `FLUSH` is
//! [`Overlay::flush`]; writes not flushed may be lost by any crash, as the protocol allows.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use super::format::{BaseIdentity, OverlayHeader, OVERLAY_BLOCK, OVERLAY_HEADER_LEN};
use super::map::{BlockMap, BlockState, Run};
use crate::error::{Error, ErrorKind, IoContext, Result};

/// Reads `buf.len()` bytes of the base disk at an offset: how an overlay completes a block
/// that a write covers only in part.
pub type BaseFill<'a> = &'a dyn Fn(u64, &mut [u8]) -> Result<()>;

/// An open overlay, shared by every connection of a server.
pub struct Overlay {
    file: File,
    path: PathBuf,
    header: OverlayHeader,
    map: RwLock<BlockMap>,
    /// Serialises changes (a write that completes part of a block reads, merges and writes
    /// the whole block, which must not interleave with another change to it) and flushes;
    /// holds the map as it is on disk.
    writer: Mutex<OnDisk>,
}

/// The block map as written to the file, and which of its bytes the in-memory map may have
/// changed since the last flush.
struct OnDisk {
    map: BlockMap,
    dirty: Option<(usize, usize)>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay").field("path", &self.path).finish()
    }
}

/// How an overlay is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// To serve it: created if missing, writable, locked against any other user.
    Serve,
    /// To read it (`overlay commit`): must exist; other readers allowed, no server.
    Read,
}

impl Overlay {
    /// Opens the overlay at `path` for the archive identified by `base`, creating it if it does
    /// not exist and `access` is [`Access::Serve`]. Refuses an overlay made over another base,
    /// and one in use by a server.
    pub fn open(path: &Path, base: BaseIdentity, access: Access) -> Result<Overlay> {
        if access == Access::Serve && std::fs::symlink_metadata(path).is_err() {
            create(path, base)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(access == Access::Serve)
            .open(path)
            .context("opening the overlay", path)?;
        let lock = match access {
            Access::Serve => rustix::fs::FlockOperation::NonBlockingLockExclusive,
            Access::Read => rustix::fs::FlockOperation::NonBlockingLockShared,
        };
        rustix::fs::flock(&file, lock).map_err(|_| {
            Error::invalid_argument("the overlay is in use by another imgpack process").in_file(path)
        })?;
        let (header, map) = read_layout(&file).map_err(|e| e.in_file(path))?;
        if header.base != base {
            return Err(Error::invalid_argument(
                "the overlay was made over another base archive (its virtual size, length or index differ)",
            )
            .in_file(path));
        }
        Ok(Overlay {
            file,
            path: path.to_path_buf(),
            header,
            writer: Mutex::new(OnDisk {
                map: map.clone(),
                dirty: None,
            }),
            map: RwLock::new(map),
        })
    }

    /// The overlay's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The disk's size.
    pub fn virtual_size(&self) -> u64 {
        self.header.base.virtual_size
    }

    /// The runs of block states covering `offset..offset + len`.
    pub fn runs(&self, offset: u64, len: u64) -> Vec<Run> {
        self.read_map().runs(offset, len)
    }

    /// At most `max` runs covering a prefix of `offset..offset + len` (the map's lock is held
    /// for `max` runs' worth of blocks, not the whole range).
    pub fn runs_at_most(&self, offset: u64, len: u64, max: usize) -> Vec<Run> {
        self.read_map().runs_at_most(offset, len, max)
    }

    /// Whether any block in `first..end` holds data in the overlay.
    pub fn any_data(&self, first: u64, end: u64) -> bool {
        self.read_map().any_data(first, end)
    }

    /// Whether every block in `first..end` is zeroed in the overlay.
    pub fn all_zero(&self, first: u64, end: u64) -> bool {
        self.read_map().all(first, end, BlockState::Zero)
    }

    /// Reads overlay data (a [`BlockState::Data`] run) at disk offset `offset` into `buf`.
    pub fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, self.header.data_offset + offset)
            .context("reading the overlay", &self.path)
    }

    /// Writes `data` at disk offset `offset`. Blocks the write covers in part are completed
    /// from their current contents (overlay, zeros, or `base`).
    pub fn write(&self, offset: u64, data: &[u8], base: BaseFill<'_>) -> Result<()> {
        let end = self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let mut on_disk = self.lock_writer();
        let first = offset / OVERLAY_BLOCK;
        let last = (end - 1) / OVERLAY_BLOCK;
        let aligned_start = first * OVERLAY_BLOCK;
        let aligned_end = ((last + 1) * OVERLAY_BLOCK).min(self.virtual_size());
        let head = (offset - aligned_start) as usize;
        let tail = (aligned_end - end) as usize;
        if head == 0 && tail == 0 {
            self.write_data(offset, data)?;
        } else {
            let mut merged = vec![0u8; (aligned_end - aligned_start) as usize];
            if head > 0 {
                self.current(aligned_start, &mut merged[..head], base)?;
            }
            if tail > 0 {
                let at = merged.len() - tail;
                self.current(end, &mut merged[at..], base)?;
            }
            merged[head..head + data.len()].copy_from_slice(data);
            self.write_data(aligned_start, &merged)?;
        }
        self.mark(&mut on_disk, first, last + 1, BlockState::Data)
    }

    /// Makes `offset..offset + len` read as zeros: whole blocks are marked zero (their data
    /// punched out of the file), the ends of partly covered blocks are written as zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64, base: BaseFill<'_>) -> Result<()> {
        let end = self.check_range(offset, len)?;
        let (whole_start, whole_end) = whole_blocks(offset, end, self.virtual_size());
        if whole_start >= whole_end {
            return self.write_zero_bytes(offset, end, base);
        }
        self.write_zero_bytes(offset, whole_start * OVERLAY_BLOCK, base)?;
        self.zero_blocks(whole_start, whole_end)?;
        self.write_zero_bytes((whole_end * OVERLAY_BLOCK).min(end), end, base)
    }

    /// Discards `offset..offset + len`: whole blocks read as zeros afterwards; partly covered
    /// blocks are left as they are (a trim is advisory).
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        let end = self.check_range(offset, len)?;
        let (whole_start, whole_end) = whole_blocks(offset, end, self.virtual_size());
        if whole_start < whole_end {
            self.zero_blocks(whole_start, whole_end)?;
        }
        Ok(())
    }

    /// Makes every completed change durable: `fdatasync` of the data, then the map bytes
    /// that changed since the last flush written, then `fdatasync` again (so the map on disk
    /// never gets ahead of the data).
    pub fn flush(&self) -> Result<()> {
        let mut on_disk = self.lock_writer();
        self.sync()?;
        let Some((start, stop)) = on_disk.dirty else {
            return Ok(());
        };
        let map = self.read_map();
        let (now, then) = (map.as_bytes(), on_disk.map.as_bytes());
        let mut at = start;
        while at < stop {
            if now[at] == then[at] {
                at += 1;
                continue;
            }
            let run_end = (at..stop).find(|&i| now[i] == then[i]).unwrap_or(stop);
            self.file
                .write_all_at(&now[at..run_end], self.header.map_offset + at as u64)
                .context("writing the overlay's block map", &self.path)?;
            at = run_end;
        }
        on_disk.map.copy_bytes_from(&map, start, stop);
        drop(map);
        self.sync()?;
        on_disk.dirty = None;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .context("flushing the overlay to disk", &self.path)
    }

    fn write_zero_bytes(&self, start: u64, end: u64, base: BaseFill<'_>) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        self.write(start, &vec![0u8; (end - start) as usize], base)
    }

    fn zero_blocks(&self, first: u64, end: u64) -> Result<()> {
        let mut on_disk = self.lock_writer();
        let had_data = self.read_map().any_data(first, end);
        self.mark(&mut on_disk, first, end, BlockState::Zero)?;
        if had_data {
            let start = first * OVERLAY_BLOCK;
            let len = (end * OVERLAY_BLOCK).min(self.virtual_size()) - start;
            // Giving the space back is best effort: the map already says zeros.
            let _ = rustix::fs::fallocate(
                &self.file,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                self.header.data_offset + start,
                len,
            );
        }
        Ok(())
    }

    /// The current contents of `buf.len()` bytes at `offset`, within one block.
    fn current(&self, offset: u64, buf: &mut [u8], base: BaseFill<'_>) -> Result<()> {
        match self.read_map().state(offset / OVERLAY_BLOCK) {
            BlockState::Data => self.read_data(offset, buf),
            BlockState::Zero => {
                buf.fill(0);
                Ok(())
            }
            BlockState::Base => base(offset, buf),
        }
    }

    fn write_data(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, self.header.data_offset + offset)
            .context("writing the overlay", &self.path)
    }

    /// Sets blocks `first..end` to `state`. Data (its bytes already written) goes into the
    /// in-memory map only, for the next flush to persist; zero goes into the map on disk
    /// first (from the bytes as flushed), then into memory.
    fn mark(&self, on_disk: &mut OnDisk, first: u64, end: u64, state: BlockState) -> Result<()> {
        if first >= end {
            return Ok(());
        }
        if state != BlockState::Data {
            let (at, bytes) = on_disk.map.with_change(first, end, state);
            self.file
                .write_all_at(&bytes, self.header.map_offset + at as u64)
                .context("writing the overlay's block map", &self.path)?;
            on_disk.map.set(first, end, state);
        }
        let (start, stop) = ((first / 4) as usize, ((end - 1) / 4) as usize + 1);
        on_disk.dirty = Some(match on_disk.dirty {
            Some((a, b)) => (a.min(start), b.max(stop)),
            None => (start, stop),
        });
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.set(first, end, state);
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<u64> {
        offset
            .checked_add(len)
            .filter(|&end| end <= self.virtual_size())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("range {offset}+{len} lies past the end of the disk"),
                )
            })
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, BlockMap> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, OnDisk> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Overlay {
    /// Closing an overlay with unflushed changes flushes them (best effort: the caller that
    /// needed them durable called [`Overlay::flush`] and saw its error).
    fn drop(&mut self) {
        if self.lock_writer().dirty.is_some() {
            let _ = self.flush();
        }
    }
}

/// The whole blocks inside `start..end` (`end` may be the disk's unaligned end).
fn whole_blocks(start: u64, end: u64, virtual_size: u64) -> (u64, u64) {
    let first = start.div_ceil(OVERLAY_BLOCK);
    let last = if end == virtual_size {
        end.div_ceil(OVERLAY_BLOCK)
    } else {
        end / OVERLAY_BLOCK
    };
    (first, last)
}

/// Creates a new, empty overlay at `path` unless a file is there already: header and zeroed
/// map written and synced under a temporary name, then linked at `path` without replacing
/// anything, so a crash never leaves a half-made overlay, and of two servers creating the
/// same overlay at once, the second opens the first's file instead of replacing it (under
/// the first's feet, which would take its later writes to an unnamed file).
fn create(path: &Path, base: BaseIdentity) -> Result<()> {
    let header =
        OverlayHeader::decode(&OverlayHeader::for_base(base).encode()).map_err(|e| e.in_file(path))?;
    let dir = crate::output::parent_dir(path);
    let temp = tempfile::Builder::new()
        .prefix(".imgpack-overlay-")
        .tempfile_in(&dir)
        .context("creating the overlay", &dir)?;
    temp.as_file()
        .write_all_at(&header.encode(), 0)
        .context("writing the overlay header", path)?;
    temp.as_file()
        .set_len(header.file_len())
        .context("sizing the overlay", path)?;
    temp.as_file()
        .sync_all()
        .context("flushing the overlay to disk", path)?;
    match temp.persist_noclobber(path) {
        Ok(_) => {
            // The new name durable too (best effort: the overlay is usable either way).
            if let Ok(dir) = File::open(&dir) {
                let _ = dir.sync_all();
            }
            Ok(())
        }
        // Another process made it first: use theirs (the temporary file is removed).
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("creating the overlay", e.error).in_file(path)),
    }
}

fn read_layout(file: &File) -> Result<(OverlayHeader, BlockMap)> {
    let mut bytes = [0u8; OVERLAY_HEADER_LEN as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| Error::io("reading the overlay header", e))?;
    let header = OverlayHeader::decode(&bytes)?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("reading the overlay's size", e))?
        .len();
    if len < header.data_offset {
        return Err(Error::corrupt(
            len,
            format!("overlay is {len} bytes, shorter than its map"),
        ));
    }
    let mut map = vec![0u8; header.map_len as usize];
    file.read_exact_at(&mut map, header.map_offset)
        .map_err(|e| Error::io("reading the overlay's block map", e))?;
    let map = BlockMap::from_bytes(map, header.base.virtual_size, header.map_offset)?;
    Ok((header, map))
}
