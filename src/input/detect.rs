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

/// A detected format: one variant per format imgpack recognises, read or not.
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
    /// VMware VMDK: a sparse extent (`KDMV`, `COWD`) or a text descriptor.
    Vmdk,
    /// VHD (Virtual PC, Hyper-V; qemu's `vpc`).
    Vhd,
    /// VHDX (Hyper-V).
    Vhdx,
    /// VirtualBox VDI.
    Vdi,
    /// Parallels / Virtuozzo (both signatures).
    Parallels,
    /// QEMU qcow version 1 (refused).
    Qcow,
    /// QEMU QED (refused).
    Qed,
    /// Bochs growing image (refused).
    Bochs,
    /// cloop compressed loop image (refused).
    Cloop,
    /// Apple disk image with a `koly` trailer (refused).
    Dmg,
    /// LUKS encrypted volume (refused).
    Luks,
    /// bzip2 stream (refused).
    Bzip2,
    /// lz4 frame (refused).
    Lz4,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Format {
    /// The name used in reports and JSON (`"raw"`, `"qcow2"`, `"vpc"` for VHD, as qemu-img
    /// names them).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Gzip => "gzip",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
            Format::Imgpack => "imgpack",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vpc",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
            Format::Parallels => "parallels",
            Format::Qcow => "qcow",
            Format::Qed => "qed",
            Format::Bochs => "bochs",
            Format::Cloop => "cloop",
            Format::Dmg => "dmg",
            Format::Luks => "luks",
            Format::Bzip2 => "bzip2",
            Format::Lz4 => "lz4",
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
            && !found.contains(&Format::Vhd)
        {
            found.push(Format::Vhd);
        }
        if tail.len() >= 512 && tail[tail.len() - 512..].starts_with(b"koly") {
            found.push(Format::Dmg);
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
        let version = h.get(4..8).map(|v| super::bytes::be32(v, 0));
        found.push(if version == Some(1) {
            Format::Qcow
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
    let others: &[(usize, &[u8], Format)] = &[
        (0, b"KDMV", Format::Vmdk),
        (0, b"COWD", Format::Vmdk),
        (0, b"# Disk DescriptorFile", Format::Vmdk),
        (0, b"vhdxfile", Format::Vhdx),
        (0, b"conectix", Format::Vhd),
        // vdi_probe: the signature 0xbeda107f (little-endian) at offset 64.
        (64, &[0x7f, 0x10, 0xda, 0xbe], Format::Vdi),
        // qed_probe: the little-endian magic "QED\0".
        (0, b"QED\0", Format::Qed),
        // parallels_probe: either signature, then version 2 (checked by the reader).
        (0, super::parallels::MAGIC_SECTORS, Format::Parallels),
        (0, super::parallels::MAGIC_CLUSTERS, Format::Parallels),
        // bochs_probe: the NUL-terminated magic, then type "Redolog", subtype "Growing" and
        // version 1 or 2; every Bochs image is refused, so the magic alone decides.
        (0, b"Bochs Virtual HD Image\0", Format::Bochs),
        // cloop_probe: the V2.0 shell-script preamble; other versions start the same way.
        (0, CLOOP_V2_MAGIC, Format::Cloop),
        // The LUKS header (qemu's crypto/block-luks.c), of any version.
        (0, b"LUKS\xba\xbe", Format::Luks),
        (0, b"BZh", Format::Bzip2),
        (0, b"\x04\x22\x4d\x18", Format::Lz4),
    ];
    for &(offset, magic, format) in others {
        if at(offset, magic) && !found.contains(&format) {
            found.push(format);
        }
    }
    if !found.contains(&Format::Cloop) && is_other_cloop(h) {
        found.push(Format::Cloop);
    }
    if !found.contains(&Format::Vmdk) && is_vmdk_descriptor(h) {
        found.push(Format::Vmdk);
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
            (b"KDMV", Format::Vmdk),
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
            Format::Qcow
        );
    }

    #[test]
    fn every_format_qemu_probes_is_named() {
        let mut bochs = b"Bochs Virtual HD Image\0".to_vec();
        bochs.resize(32, 0);
        bochs.extend_from_slice(b"Redolog\0");
        let cases: [(&[u8], Format); 12] = [
            (b"QED\0", Format::Qed),
            (b"WithoutFreeSpace\x02\0\0\0", Format::Parallels),
            (b"WithouFreSpacExt\x02\0\0\0", Format::Parallels),
            (&bochs, Format::Bochs),
            (CLOOP_V2_MAGIC, Format::Cloop),
            (b"#!/bin/sh\n#V4.0 Format\nmodprobe cloop file=$0", Format::Cloop),
            (b"LUKS\xba\xbe\0\x01", Format::Luks),
            (b"LUKS\xba\xbe\0\x02", Format::Luks),
            (b"vhdxfile", Format::Vhdx),
            (b"conectix", Format::Vhd),
            (b"# comment\n   \r\nversion=1\r\nCID=1\n", Format::Vmdk),
            (b"version=3\n", Format::Vmdk),
        ];
        for (magic, format) in cases {
            assert_eq!(
                detect(&with_head(magic), None).unwrap(),
                format,
                "{}",
                String::from_utf8_lossy(magic)
            );
        }
        let mut vdi = vec![0u8; 512];
        vdi[64..68].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        assert_eq!(detect(&vdi, None).unwrap(), Format::Vdi);
        // dmg_open reads the `koly` trailer in the last 512 bytes.
        let mut koly = vec![0u8; 512];
        koly[..4].copy_from_slice(b"koly");
        assert_eq!(detect(&[0u8; 512], Some(&koly)).unwrap(), Format::Dmg);
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
