//! Format detection from content: magic numbers at the start (and, for VHD, the end) of a file.
//!
//! Never from the file name or from what the uploader claims (a "raw" upload that is really a
//! qcow2 with a backing file is CVE-2024-40767). A file matching two formats is refused as a
//! polyglot, and raw is only what matches none.

use crate::error::{Error, ErrorKind, Result};

/// How many leading bytes detection looks at.
pub const HEAD_LEN: usize = 512;
/// How many trailing bytes detection looks at (VHD fixed-disk footers).
pub const TAIL_LEN: usize = 512;

/// A detected format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// No known magic: the bytes are the disk.
    Raw,
    /// QEMU qcow2 (version 2 or 3).
    Qcow2,
    /// gzip stream.
    Gzip,
    /// xz stream.
    Xz,
    /// zstd stream (possibly starting with a skippable frame).
    Zstd,
    /// An imgpack archive.
    Imgpack,
    /// A format recognised but not (yet) read by imgpack, with its name.
    Other(&'static str),
}

impl Format {
    /// The name used in reports and JSON (`"raw"`, `"qcow2"`, `"gzip"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Gzip => "gzip",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
            Format::Imgpack => "imgpack",
            Format::Other(name) => name,
        }
    }

    /// Whether this is a compressed stream wrapping another image.
    pub fn is_stream(self) -> bool {
        matches!(self, Format::Gzip | Format::Xz | Format::Zstd)
    }
}

/// Detects the format of a file from its first bytes (`head`, up to [`HEAD_LEN`]) and last
/// bytes (`tail`, up to [`TAIL_LEN`]; `None` for a stream whose end is not yet known).
pub fn detect(head: &[u8], tail: Option<&[u8]>) -> Result<Format> {
    let mut found: Vec<Format> = head_formats(head);
    if let Some(tail) = tail {
        if tail.len() >= 512
            && tail[tail.len() - 512..].starts_with(b"conectix")
            && !found.contains(&Format::Other("vpc"))
        {
            found.push(Format::Other("vpc"));
        }
        if tail.len() >= 512 && tail[tail.len() - 512..].starts_with(b"koly") {
            found.push(Format::Other("dmg"));
        }
    }
    match found.as_slice() {
        [] => Ok(Format::Raw),
        [one] => Ok(*one),
        many => Err(Error::new(
            ErrorKind::InvalidFormat,
            format!(
                "the file matches several formats ({}); refusing a possible polyglot",
                many.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

fn head_formats(h: &[u8]) -> Vec<Format> {
    let at = |offset: usize, magic: &[u8]| h.get(offset..offset + magic.len()) == Some(magic);
    let mut found = Vec::new();
    if at(0, b"QFI\xfb") {
        let version = h
            .get(4..8)
            .map(|v| u32::from_be_bytes(v.try_into().expect("4 bytes")));
        found.push(if version == Some(1) {
            Format::Other("qcow")
        } else {
            Format::Qcow2
        });
    }
    if at(0, &[0x1f, 0x8b]) {
        found.push(Format::Gzip);
    }
    if at(0, &[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        found.push(Format::Xz);
    }
    if at(0, &[0x28, 0xb5, 0x2f, 0xfd]) || (h.len() >= 4 && h[0] & 0xf0 == 0x50 && at(1, &[0x2a, 0x4d, 0x18]))
    {
        found.push(Format::Zstd);
    }
    if at(0, &crate::archive::format::MAGIC) {
        found.push(Format::Imgpack);
    }
    let others: [(usize, &[u8], &'static str); 11] = [
        (0, b"KDMV", "vmdk"),
        (0, b"COWD", "vmdk"),
        (0, b"# Disk DescriptorFile", "vmdk"),
        (0, b"vhdxfile", "vhdx"),
        (0, b"conectix", "vpc"),
        (64, &[0x7f, 0x10, 0xda, 0xbe], "vdi"),
        (0, b"QED\0", "qed"),
        (0, b"WithoutFreeSpace", "parallels"),
        (0, b"LUKS\xba\xbe", "luks"),
        (0, b"BZh", "bzip2"),
        (0, b"\x04\x22\x4d\x18", "lz4"),
    ];
    for (offset, magic, name) in others {
        if at(offset, magic) && !found.contains(&Format::Other(name)) {
            found.push(Format::Other(name));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_head(magic: &[u8]) -> Vec<u8> {
        let mut v = magic.to_vec();
        v.resize(512, 0);
        v
    }

    #[test]
    fn detects_each_magic() {
        let cases: [(&[u8], Format); 6] = [
            (b"QFI\xfb\0\0\0\x03", Format::Qcow2),
            (&[0x1f, 0x8b, 8], Format::Gzip),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0], Format::Xz),
            (&[0x28, 0xb5, 0x2f, 0xfd], Format::Zstd),
            (&[0x5e, 0x2a, 0x4d, 0x18], Format::Zstd),
            (b"KDMV", Format::Other("vmdk")),
        ];
        for (magic, want) in cases {
            assert_eq!(detect(&with_head(magic), None).unwrap(), want, "{magic:?}");
        }
        assert_eq!(detect(&[0u8; 512], Some(&[0u8; 512])).unwrap(), Format::Raw);
        assert_eq!(detect(&[], Some(&[])).unwrap(), Format::Raw);
    }

    #[test]
    fn qcow_version_1_is_named_not_read() {
        assert_eq!(
            detect(&with_head(b"QFI\xfb\0\0\0\x01"), None).unwrap(),
            Format::Other("qcow")
        );
    }

    #[test]
    fn a_polyglot_is_refused() {
        let mut tail = vec![0u8; 512];
        tail[..8].copy_from_slice(b"conectix");
        let err = detect(&with_head(b"QFI\xfb\0\0\0\x03"), Some(&tail)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidFormat);
        assert!(err.to_string().contains("polyglot"));
    }
}
