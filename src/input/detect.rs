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
    // The magic numbers of qemu's probe functions (block/*.c), each matched on its magic alone
    // where qemu also checks a version or type: a file with the magic but another version is
    // refused by name (or by its reader) rather than read as a raw disk.
    let others: &[(usize, &[u8], &'static str)] = &[
        (0, b"KDMV", "vmdk"),
        (0, b"COWD", "vmdk"),
        (0, b"# Disk DescriptorFile", "vmdk"),
        (0, b"vhdxfile", "vhdx"),
        (0, b"conectix", "vpc"),
        // vdi_probe: the signature 0xbeda107f (little-endian) at offset 64.
        (64, &[0x7f, 0x10, 0xda, 0xbe], "vdi"),
        // qed_probe: the little-endian magic "QED\0".
        (0, b"QED\0", "qed"),
        // parallels_probe: either signature, then version 2 (checked by the reader).
        (0, super::parallels::MAGIC_SECTORS, "parallels"),
        (0, super::parallels::MAGIC_CLUSTERS, "parallels"),
        // bochs_probe: the NUL-terminated magic, then type "Redolog", subtype "Growing" and
        // version 1 or 2; every Bochs image is refused, so the magic alone decides.
        (0, b"Bochs Virtual HD Image\0", "bochs"),
        // cloop_probe: the V2.0 shell-script preamble; other versions start the same way.
        (0, CLOOP_V2_MAGIC, "cloop"),
        // The LUKS header (qemu's crypto/block-luks.c), of any version.
        (0, b"LUKS\xba\xbe", "luks"),
        (0, b"BZh", "bzip2"),
        (0, b"\x04\x22\x4d\x18", "lz4"),
    ];
    for &(offset, magic, name) in others {
        if at(offset, magic) && !found.contains(&Format::Other(name)) {
            found.push(Format::Other(name));
        }
    }
    if !found.contains(&Format::Other("cloop")) && is_other_cloop(h) {
        found.push(Format::Other("cloop"));
    }
    if !found.contains(&Format::Other("vmdk")) && is_vmdk_descriptor(h) {
        found.push(Format::Other("vmdk"));
    }
    found
}

/// The first line of qemu's `cloop_probe` magic (cloop V2.0); the whole preamble follows.
const CLOOP_V2_MAGIC: &[u8] =
    b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

/// A cloop image of another version than qemu's V2.0: the same shell-script preamble that
/// loads the `cloop` module.
fn is_other_cloop(h: &[u8]) -> bool {
    h.starts_with(b"#!/bin/sh\n") && h.windows(b"modprobe cloop".len()).any(|w| w == b"modprobe cloop")
}

/// qemu's `vmdk_probe` rule for a text descriptor: after comment lines (`#`) and blank lines,
/// the first line is `version=1`, `version=2` or `version=3` (ending in `\n` or `\r\n`).
fn is_vmdk_descriptor(h: &[u8]) -> bool {
    let mut rest = h;
    loop {
        match rest.first() {
            Some(b'#') => match rest.iter().position(|&b| b == b'\n') {
                Some(end) => rest = &rest[end + 1..],
                None => return false,
            },
            Some(b' ' | b'\r' | b'\n') => {
                let blank = rest.iter().take_while(|&&b| b == b' ').count();
                let after = &rest[blank..];
                let after = after.strip_prefix(b"\r").unwrap_or(after);
                match after.strip_prefix(b"\n") {
                    Some(next) => rest = next,
                    None => return false,
                }
            }
            _ => {
                return [b'1', b'2', b'3'].iter().any(|&v| {
                    let line = [b'v', b'e', b'r', b's', b'i', b'o', b'n', b'=', v];
                    rest.strip_prefix(&line[..])
                        .is_some_and(|end| end.starts_with(b"\n") || end.starts_with(b"\r\n"))
                })
            }
        }
    }
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
    fn every_format_qemu_probes_is_named() {
        let mut bochs = b"Bochs Virtual HD Image\0".to_vec();
        bochs.resize(32, 0);
        bochs.extend_from_slice(b"Redolog\0");
        let cases: [(&[u8], &str); 12] = [
            (b"QED\0", "qed"),
            (b"WithoutFreeSpace\x02\0\0\0", "parallels"),
            (b"WithouFreSpacExt\x02\0\0\0", "parallels"),
            (&bochs, "bochs"),
            (CLOOP_V2_MAGIC, "cloop"),
            (b"#!/bin/sh\n#V4.0 Format\nmodprobe cloop file=$0", "cloop"),
            (b"LUKS\xba\xbe\0\x01", "luks"),
            (b"LUKS\xba\xbe\0\x02", "luks"),
            (b"vhdxfile", "vhdx"),
            (b"conectix", "vpc"),
            (b"# comment\n   \r\nversion=1\r\nCID=1\n", "vmdk"),
            (b"version=3\n", "vmdk"),
        ];
        for (magic, name) in cases {
            assert_eq!(
                detect(&with_head(magic), None).unwrap(),
                Format::Other(name),
                "{}",
                String::from_utf8_lossy(magic)
            );
        }
        let mut vdi = vec![0u8; 512];
        vdi[64..68].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        assert_eq!(detect(&vdi, None).unwrap(), Format::Other("vdi"));
        // dmg_open reads the `koly` trailer in the last 512 bytes.
        let mut koly = vec![0u8; 512];
        koly[..4].copy_from_slice(b"koly");
        assert_eq!(detect(&[0u8; 512], Some(&koly)).unwrap(), Format::Other("dmg"));
    }

    #[test]
    fn text_that_only_looks_like_a_descriptor_is_raw() {
        for text in [
            &b"version=4\n"[..],
            b"version=1",
            b"#!/bin/sh\necho hi\n",
            b"  x\nversion=1\n",
        ] {
            assert_eq!(detect(&with_head(text), None).unwrap(), Format::Raw, "{text:?}");
        }
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
