//! Entry points for fuzzing: one small function per parser, each taking arbitrary bytes and
//! returning normally whatever they hold. A panic, a hang or a huge allocation is a bug.
//!
//! The cargo-fuzz targets in `fuzz/` call these, and `tests/fuzz_targets.rs` runs them on stable
//! over the seed corpus and thousands of mutated inputs, so CI exercises them too.

use std::io::{Cursor, Read};

use crate::archive::reader::ArchiveReader;
use crate::input::detect::{detect, Format, HEAD_LEN};

/// The largest read a target makes through a parser, so a claimed 64 TiB disk stays cheap.
const READ_CAP: usize = 1 << 20;

/// Format detection on a file's head and tail.
pub fn detect_format(data: &[u8]) {
    let head = &data[..data.len().min(HEAD_LEN)];
    let tail = &data[data.len().saturating_sub(512)..];
    let _ = detect(head, Some(tail));
    let _ = detect(head, None);
}

/// Archive header, footer and index validation, chunk decoding and `read_at`.
pub fn archive(data: &[u8]) {
    let Ok(reader) = ArchiveReader::open(data.to_vec()) else {
        return;
    };
    for record in reader.records().iter().take(64) {
        let _ = reader.with_payload(record, |_| Ok(()));
    }
    let size = reader.virtual_size();
    let mut buf = vec![0u8; (size.min(READ_CAP as u64)) as usize];
    for offset in [0, size / 3, size.saturating_sub(buf.len() as u64)] {
        let _ = reader.read_at(offset, &mut buf);
    }
}

/// [`archive`] after recomputing the header, index and footer crcs, so mutated headers, indexes
/// and footers get past their checksums and reach the checks behind them.
pub fn archive_sealed(data: &[u8]) {
    let mut bytes = data.to_vec();
    reseal(&mut bytes);
    archive(&bytes);
}

/// Rewrites the crcs of `archive`'s header and footer, and the footer's crc of the index it
/// points to when that lies within the file. The footer's length follows the header's version
/// (2: 80 bytes, otherwise 48).
pub fn reseal(archive: &mut [u8]) {
    use crate::archive::format::{FOOTER_LEN, FOOTER_LEN_V2, HEADER_LEN};
    let header = HEADER_LEN as usize;
    let footer = match archive.get(8..10) {
        Some([2, 0]) => FOOTER_LEN_V2 as usize,
        _ => FOOTER_LEN as usize,
    };
    if archive.len() >= header {
        let crc = crc32fast::hash(&archive[..header - 4]);
        archive[header - 4..header].copy_from_slice(&crc.to_le_bytes());
    }
    let Some(footer_at) = archive.len().checked_sub(footer) else {
        return;
    };
    let (index_crc_at, footer_crc_at) = (footer - 16, footer - 12);
    let field = |at: usize| u64::from_le_bytes(archive[at..at + 8].try_into().expect("8 bytes"));
    let index_at = field(footer_at + 8);
    if let Some(index) = usize::try_from(index_at)
        .ok()
        .and_then(|at| archive.get(at..footer_at))
    {
        let crc = crc32fast::hash(index);
        archive[footer_at + index_crc_at..footer_at + footer_crc_at].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&archive[footer_at..footer_at + footer_crc_at]);
    archive[footer_at + footer_crc_at..footer_at + footer_crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// qcow2 header, extensions and tables, then `next_data` and reads over a bounded part of
/// the disk (compressed clusters included).
pub fn qcow2(data: &[u8]) {
    qcow2_file(data.to_vec())
}

fn qcow2_file(file: Vec<u8>) {
    let Ok(source) = crate::input::qcow2::Qcow2Source::new(file, std::path::Path::new("fuzz")) else {
        return;
    };
    walk(&source, READ_CAP / 4);
}

/// Size arguments as the command line parses them.
pub fn size_argument(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::units::parse_size(text);
    }
}

/// Reads at most `READ_CAP` bytes from a decoder, so bombs stay cheap in a fuzz run.
pub fn drain(mut reader: impl Read) {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    while total < READ_CAP {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

/// Any input through the whole conversion pipeline, from memory, with small limits.
pub fn convert_bytes(data: &[u8]) {
    use crate::input::{Body, Opened};
    let opened = Opened {
        layers: Vec::new(),
        inner: "raw",
        body: Body::Stream(Box::new(Cursor::new(data.to_vec()))),
    };
    let options = crate::ConvertOptions {
        chunk_size: 64 << 10,
        threads: None,
        limits: crate::InputLimits {
            max_virtual_size: 16 << 20,
        },
        max_compressed_size: 32 << 20,
        ..crate::ConvertOptions::default()
    };
    if let Ok((archive, _)) = crate::convert::encode(opened, Vec::new(), &options) {
        let reader = ArchiveReader::open(archive).expect("imgpack must read its own archives");
        let mut back = vec![0u8; data.len()];
        let n = reader
            .read_at(0, &mut back)
            .expect("imgpack must decode its own archives");
        assert_eq!(&back[..n], data, "round trip changed the data");
    }
}

/// Opens `data` as the image format `format` (VHD, VDI, VMDK, VHDX, Parallels) with the reader
/// [`route()`](crate::input::route::route) gives it, and walks the disk as the pipeline does, reading a
/// bounded number of chunks.
pub fn disk_image(format: Format, data: &[u8]) {
    disk_image_file(format, data.to_vec())
}

fn disk_image_file(format: Format, file: Vec<u8>) {
    let limits = crate::input::InputLimits {
        max_virtual_size: 1 << 30,
    };
    let Ok(source) = crate::input::route::open_image(format, file, std::path::Path::new("fuzz"), &limits)
    else {
        return;
    };
    walk(source.as_ref(), 64 << 10);
}

/// The formats [`images`] chooses from with its first byte (modulo their number).
pub const PACKED_FORMATS: [Format; 5] = [
    Format::Qcow2,
    Format::Vhd,
    Format::Vdi,
    Format::Vmdk,
    Format::Vhdx,
];

/// The largest file [`unpack_image`] builds.
const PACKED_MAX_LEN: usize = 16 << 20;

/// Any block-mapped image format, from a compact description of a sparse file: the fuzzer then
/// mutates the few KiB that matter of an 8 MiB VHDX instead of copying all of it per run.
/// See [`unpack_image`] for the form; `fuzz/pack_image.py` writes seeds in it.
pub fn images(data: &[u8]) {
    let Some((format, file)) = unpack_image(data) else {
        return;
    };
    match format {
        Format::Qcow2 => qcow2_file(file),
        other => disk_image_file(other, file),
    }
}

/// Builds the file an [`images`] input describes: one byte choosing the format in
/// [`PACKED_FORMATS`], the file's length (u32 LE, at most 16 MiB), then pieces, each an offset
/// (u32 LE), a length (u16 LE) and that many bytes, laid over zeros and cut at the file's end.
/// A trailing partial piece is ignored.
pub fn unpack_image(data: &[u8]) -> Option<(Format, Vec<u8>)> {
    let (&selector, rest) = data.split_first()?;
    let (len, mut rest) = rest.split_first_chunk::<4>()?;
    let len = (u32::from_le_bytes(*len) as usize).min(PACKED_MAX_LEN);
    let mut file = vec![0u8; len];
    while let Some((head, tail)) = rest.split_first_chunk::<6>() {
        let offset = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let piece_len = u16::from_le_bytes([head[4], head[5]]) as usize;
        let Some(piece) = tail.get(..piece_len) else {
            break;
        };
        if offset < len {
            let n = piece_len.min(len - offset);
            file[offset..offset + n].copy_from_slice(&piece[..n]);
        }
        rest = &tail[piece_len..];
    }
    let format = PACKED_FORMATS[usize::from(selector) % PACKED_FORMATS.len()];
    Some((format, file))
}

/// Walks `source` as the pipeline does, reading up to 16 pieces of at most `max_read` bytes.
fn walk(source: &dyn crate::input::DiskSource, max_read: usize) {
    let size = source.virtual_size();
    let mut scratch = Vec::new();
    let mut position = 0;
    for _ in 0..16 {
        let Ok(Some(next)) = source.next_data(position) else {
            return;
        };
        if next >= size {
            return;
        }
        let len = (size - next).min(max_read as u64) as usize;
        let Ok(got) = source.read(next, len, &mut scratch) else {
            return;
        };
        assert_eq!(got.len(), len, "a read returned the wrong length");
        position = next + len as u64;
    }
}

/// A gzip, xz or zstd stream (detected by content, as `imgpack convert` does) opened from
/// memory through the layered open path: nested layers are peeled, a raw payload is decoded
/// up to `READ_CAP` bytes, and an image needing random access (qcow2, VMDK...) is spilled to a
/// temporary file (within a 16 MiB virtual-size limit) and walked. Other inputs are ignored.
pub fn streams(data: &[u8]) {
    use crate::input::{Body, OpenOptions};
    let Ok(format) = detect(&data[..data.len().min(HEAD_LEN)], None) else {
        return;
    };
    if !format.is_stream() {
        return;
    }
    let options = OpenOptions {
        limits: crate::input::InputLimits {
            max_virtual_size: 16 << 20,
        },
        ..OpenOptions::default()
    };
    let reader = Box::new(Cursor::new(data.to_vec()));
    let Ok(opened) =
        crate::input::stream::open_reader(format, reader, std::path::Path::new("fuzz"), &options)
    else {
        return;
    };
    match opened.body {
        Body::Stream(reader) => drain(reader),
        Body::Source(source) => walk(source.as_ref(), 64 << 10),
    }
}

/// VHD ([`disk_image`] as `vpc`).
pub fn vhd(data: &[u8]) {
    disk_image(Format::Vhd, data)
}

/// VDI ([`disk_image`] as `vdi`).
pub fn vdi(data: &[u8]) {
    disk_image(Format::Vdi, data)
}

/// VMDK ([`disk_image`] as `vmdk`).
pub fn vmdk(data: &[u8]) {
    disk_image(Format::Vmdk, data)
}

/// VHDX ([`disk_image`] as `vhdx`).
pub fn vhdx(data: &[u8]) {
    disk_image(Format::Vhdx, data)
}

/// The VMDK text descriptor parser alone (no I/O): any text, valid UTF-8 or not.
pub fn vmdk_descriptor(data: &[u8]) {
    let _ = crate::input::vmdk::descriptor::parse_descriptor(&String::from_utf8_lossy(data));
}

/// The Parallels reader (both signatures): header, BAT, reads.
pub fn parallels(data: &[u8]) {
    disk_image(Format::Parallels, data)
}
