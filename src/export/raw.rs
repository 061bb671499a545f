//! Raw output: the disk byte for byte. To a file it is sparse (zero regions are holes, as
//! `extract` writes it); to a stream every byte is sent in order, zeros included.

use std::fs::File;
use std::io::Write;

use super::appender::Appender;
use super::data::{walk_clusters, write_positional, Disk};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::read_at::ReadAt;

/// Writes the disk into `file` at the same offsets, leaving zeros as holes.
pub fn write_file<R: ReadAt>(disk: &Disk<R>, file: &File, control: &Control) -> Result<()> {
    file.set_len(disk.reader.virtual_size())
        .map_err(|e| Error::io("sizing the output", e))?;
    let chunk_size = disk.reader.geometry().chunk_size();
    write_positional(disk, file, chunk_size, &|chunk| Some(chunk * chunk_size), control)
}

/// Sends the whole disk to `out` in order; returns the bytes sent.
pub fn stream<R: ReadAt, W: Write + Send>(disk: &Disk<R>, out: W, control: &Control) -> Result<u64> {
    let total = disk.reader.virtual_size();
    let piece = disk.reader.geometry().chunk_size();
    let mut out = Appender::new(out, 0);
    walk_clusters(
        disk,
        piece,
        control,
        |_, bytes| Ok(Some(bytes.to_vec())),
        |index, bytes| {
            out.zeros(index * piece - out.position())?;
            out.write(&bytes)
        },
    )?;
    out.zeros(total - out.position())?;
    out.finish()?;
    Ok(total)
}
