//! The one place that maps a detected [`Format`] to how it is read: [`route`] says which way an
//! input goes (raw bytes, a compression layer to peel, an image with a random-access reader,
//! an archive, or a refusal), and [`open_image`] opens an image with its reader. The file path
//! ([`super::open`]), standard input ([`super::open_reader`]) and the payload of a compressed
//! stream ([`super::stream`]) all go through these two functions.

use std::path::Path;

use super::detect::Format;
use super::limits::InputLimits;
use super::{parallels, qcow2, vdi, vhd, vhdx, vmdk, DiskSource};
use crate::error::{Error, ErrorKind, Result};
use crate::read_at::ReadAt;

/// Which way an input of a given format goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The bytes are the disk (streamed, or read in place from a file).
    Raw,
    /// A compression layer to peel ([`super::stream`]).
    Layer,
    /// An image format with a native random-access reader ([`open_image`]); on a stream it is
    /// spilled to a temporary file first.
    Image,
    /// An imgpack archive: what `extract` reads, not `convert`.
    Archive,
    /// Recognised but not read: refused naming the format ([`refusal`]).
    Refused,
}

/// Which way an input of `format` goes.
pub fn route(format: Format) -> Route {
    match format {
        Format::Raw => Route::Raw,
        Format::Gzip | Format::Xz | Format::Zstd => Route::Layer,
        Format::Qcow2 | Format::Vmdk | Format::Vhd | Format::Vhdx | Format::Vdi | Format::Parallels => {
            Route::Image
        }
        Format::Imgpack => Route::Archive,
        Format::Qcow
        | Format::Qed
        | Format::Bochs
        | Format::Cloop
        | Format::Dmg
        | Format::Luks
        | Format::Bzip2
        | Format::Lz4 => Route::Refused,
    }
}

/// Opens `file` as an image of `format` (one whose [`route`] is [`Route::Image`]) with its
/// reader; `path` names the input in errors.
pub fn open_image<R: ReadAt + 'static>(
    format: Format,
    file: R,
    path: &Path,
    limits: &InputLimits,
) -> Result<Box<dyn DiskSource>> {
    let limit = limits.max_virtual_size;
    let opened: Result<Box<dyn DiskSource>> = match format {
        Format::Qcow2 => return Ok(Box::new(qcow2::Qcow2Source::new(file, path)?)),
        Format::Vhd => vhd::open(Box::new(file), limit).map(|s| Box::new(s) as Box<dyn DiskSource>),
        Format::Vdi => vdi::open(Box::new(file), limit).map(|s| Box::new(s) as Box<dyn DiskSource>),
        Format::Vmdk => vmdk::open(Box::new(file), limit).map(|s| Box::new(s) as Box<dyn DiskSource>),
        Format::Vhdx => vhdx::open(Box::new(file), limit).map(|s| Box::new(s) as Box<dyn DiskSource>),
        Format::Parallels => {
            parallels::open(Box::new(file), limit).map(|s| Box::new(s) as Box<dyn DiskSource>)
        }
        other => Err(refusal(other)),
    };
    opened.map_err(|e| e.in_file(path))
}

/// The error for a format that is not read (or not read here): an archive given to `convert`,
/// or a format imgpack recognises but refuses.
pub fn refusal(format: Format) -> Error {
    match route(format) {
        Route::Archive => Error::new(
            ErrorKind::InvalidArgument,
            "the input is already an imgpack archive (use `imgpack extract` to get the disk back)",
        ),
        _ => Error::unsupported(format!("{} images are not supported", format.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_image_route_has_a_reader() {
        let images = [
            Format::Qcow2,
            Format::Vmdk,
            Format::Vhd,
            Format::Vhdx,
            Format::Vdi,
            Format::Parallels,
        ];
        for format in images {
            assert_eq!(route(format), Route::Image);
            // An empty file reaches the reader, which refuses it as damaged, not unsupported.
            let err = open_image(format, Vec::new(), Path::new("x"), &InputLimits::default())
                .err()
                .unwrap();
            assert!(
                !err.message().contains("images are not supported"),
                "{format:?}: {err}"
            );
        }
        let err = open_image(Format::Qed, Vec::new(), Path::new("x"), &InputLimits::default())
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.message().contains("qed images are not supported"));
    }
}
