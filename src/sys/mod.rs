//! The few operating-system facilities imgpack needs beyond `std`: memory maps guarded against
//! truncation ([`Mapping`], in `mapping.rs`), sparse-file queries (SEEK_DATA), unnamed temporary
//! files (O_TMPFILE) and linking them into place, starting writeback early
//! (sync_file_range), and appending or writing at offsets around the page cache
//! ([`DirectAppender`], [`DirectWriter`], O_DIRECT).
//!
//! This is the only module allowed `unsafe` (the crate root denies it elsewhere): the memory
//! map and its SIGBUS guard, and sync_file_range, each justified where it happens. Everything
//! else goes through rustix's safe wrappers.

mod direct;
mod direct_at;
mod mapping;
mod release_batch;

pub use direct::DirectAppender;
pub use direct_at::{AlignedBuffer, DirectWriter};
pub use mapping::Mapping;

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags, SeekFrom};

/// The first offset at or after `from` holding data (not a hole), `None` if only holes
/// follow, or `Some(from)` where the file system cannot tell.
pub fn next_data(file: &File, from: u64) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file.as_fd(), SeekFrom::Data(from)) {
        Ok(offset) => Ok(Some(offset)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok(Some(from)),
        Err(e) => Err(e.into()),
    }
}

/// Opens an unnamed file in `dir` (O_TMPFILE): it vanishes if the process dies before
/// [`link_unnamed`] gives it a name. `None` where the file system does not support it.
pub fn open_unnamed(dir: &Path) -> io::Result<Option<File>> {
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    match rustix::fs::open(dir, flags, Mode::from_raw_mode(0o644)) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Gives an unnamed file from [`open_unnamed`] the name `path` (which must not exist).
pub fn link_unnamed(file: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let cwd = rustix::fs::CWD;
    match rustix::fs::linkat(
        cwd,
        proc_path.as_str(),
        cwd,
        path,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    ) {
        Ok(()) => Ok(()),
        // Without /proc, AT_EMPTY_PATH links the descriptor itself (needs CAP_DAC_READ_SEARCH).
        Err(_) => rustix::fs::linkat(file.as_fd(), "", cwd, path, rustix::fs::AtFlags::EMPTY_PATH)
            .map_err(Into::into),
    }
}

/// Flushes a directory's entries to disk, so a rename into it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Asks the kernel to start writing `len` bytes of `file` at `offset` to disk now, without
/// waiting (sync_file_range with SYNC_FILE_RANGE_WRITE), so that the fsync before an output is
/// committed finds most of its data already written instead of flushing all of it at the end.
///
/// Only a hint: errors are ignored (a later fsync reports any real write error), and where the
/// call is unsupported nothing happens.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range takes a descriptor and three integers and touches no memory of
    // ours; `file` keeps the descriptor open for the duration of the call.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
}
