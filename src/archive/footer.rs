//! The archive footer, in both versions: the fixed-size block at the very end that locates the
//! index and, in version 2, carries the image digest.
//!
//! | offset (v2) | offset (v1) | size | field                                     |
//! |------------:|------------:|-----:|-------------------------------------------|
//! | 0           | 0           | 8    | virtual size (authoritative)              |
//! | 8           | 8           | 8    | index offset                              |
//! | 16          | 16          | 8    | stored chunk count N                      |
//! | 24          | 24          | 8    | disk size: bytes of non-zero 4 KiB blocks |
//! | 32          | -           | 32   | image digest (`sha256-tree`)              |
//! | 64          | 32          | 4    | crc32 of the whole index                  |
//! | 68          | 36          | 4    | crc32 of the footer's bytes before it     |
//! | 72          | 40          | 8    | closing magic `IMGPKEND`                  |
//!
//! Version 2's footer is 80 bytes, version 1's 48.

use super::digest::ImageDigest;
use super::format::{Version, END_MAGIC};
use crate::error::{Error, ErrorKind, Result};

/// The decoded footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// Where the index starts.
    pub index_offset: u64,
    /// Number of stored chunks (index records).
    pub chunk_count: u64,
    /// Bytes of non-zero 4 KiB blocks.
    pub disk_size: u64,
    /// crc32 of the whole index.
    pub index_crc: u32,
    /// The image digest: present exactly in version 2.
    pub digest: Option<ImageDigest>,
}

impl Footer {
    /// The version this footer is encoded in: 2 with a digest, 1 without.
    pub fn version(&self) -> Version {
        if self.digest.is_some() {
            Version::V2
        } else {
            Version::V1
        }
    }

    /// Encodes the footer (80 bytes with a digest, 48 without).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.version().footer_len() as usize);
        b.extend_from_slice(&self.virtual_size.to_le_bytes());
        b.extend_from_slice(&self.index_offset.to_le_bytes());
        b.extend_from_slice(&self.chunk_count.to_le_bytes());
        b.extend_from_slice(&self.disk_size.to_le_bytes());
        if let Some(digest) = &self.digest {
            b.extend_from_slice(&digest.0);
        }
        b.extend_from_slice(&self.index_crc.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&END_MAGIC);
        b
    }

    /// Decodes a `version` footer found at `at` in the archive (`b` is exactly
    /// `version.footer_len()` bytes), checking its magic and crc.
    pub fn decode(b: &[u8], at: u64, version: Version) -> Result<Self> {
        let len = version.footer_len() as usize;
        assert_eq!(b.len(), len, "the caller reads exactly one footer");
        let (crc_at, magic_at) = (len - 12, len - 8);
        if b[magic_at..] != END_MAGIC {
            return Err(Error::corrupt(
                at + magic_at as u64,
                "archive footer magic missing (truncated or incomplete archive)",
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        if u32_at(crc_at) != crc32fast::hash(&b[..crc_at]) {
            return Err(
                Error::new(ErrorKind::Checksum, "archive footer checksum mismatch").at(at + crc_at as u64),
            );
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let digest = version
            .has_digests()
            .then(|| ImageDigest(b[32..64].try_into().expect("32 bytes")));
        Ok(Footer {
            virtual_size: u64_at(0),
            index_offset: u64_at(8),
            chunk_count: u64_at(16),
            disk_size: u64_at(24),
            index_crc: u32_at(crc_at - 4),
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footers_round_trip_and_reject_every_flipped_byte() {
        for digest in [None, Some(ImageDigest([0x42; 32]))] {
            let f = Footer {
                virtual_size: 1 << 40,
                index_offset: 999,
                chunk_count: 7,
                disk_size: 4096 * 3,
                index_crc: 0xdead_beef,
                digest,
            };
            let version = f.version();
            let enc = f.encode();
            assert_eq!(enc.len() as u64, version.footer_len());
            assert_eq!(Footer::decode(&enc, 0, version).unwrap(), f);
            for i in 0..enc.len() {
                let mut bad = enc.clone();
                bad[i] ^= 1;
                assert!(Footer::decode(&bad, 0, version).is_err(), "flip at {i} accepted");
            }
        }
    }

    #[test]
    fn version_1_layout_is_unchanged() {
        let f = Footer {
            virtual_size: 1,
            index_offset: 2,
            chunk_count: 3,
            disk_size: 4,
            index_crc: 5,
            digest: None,
        };
        let enc = f.encode();
        assert_eq!(enc.len(), 48);
        assert_eq!(&enc[32..36], &5u32.to_le_bytes());
        assert_eq!(&enc[36..40], &crc32fast::hash(&enc[..36]).to_le_bytes());
        assert_eq!(&enc[40..], b"IMGPKEND");
    }
}
