//! The qcow2 header extensions (between the header and the end of the first cluster): what
//! they say, read without following anything they name. Each is `u32 type, u32 length, data
//! padded to 8 bytes`; type 0 ends the list and unknown types are skipped, as the specification
//! says.
//!
//! | type         | extension          | what imgpack does                                 |
//! |--------------|--------------------|---------------------------------------------------|
//! | `0x6803f857` | feature name table | names the feature bits in refusals                |
//! | `0x23852875` | persistent bitmaps | checks the directory lies inside the file         |
//! | `0x0537be77` | full-disk crypto   | refuses the image (encryption)                    |
//! | `0x44415441` | external data file | refuses the image; the name is never opened       |
//! | `0xe2792aca` | backing format     | ignored (backing files are refused by the header) |

use super::header::{
    check_table, read_error, round_up, Header, EXT_BACKING_FORMAT, EXT_BITMAPS, EXT_CRYPTO, EXT_DATA_FILE,
    EXT_END, EXT_FEATURE_NAMES, MAX_BITMAPS, MAX_BITMAP_DIRECTORY_BYTES,
};
use crate::error::{Error, Result};
use crate::input::bytes::{be32, be64};
use crate::read_at::ReadAt;

/// The persistent-bitmaps extension's fields.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bitmaps {
    at: u64,
    count: u32,
    reserved: u32,
    directory_size: u64,
    directory_offset: u64,
}

impl Bitmaps {
    pub(super) fn check(&self, cluster_size: u64, file_size: u64) -> Result<()> {
        if self.reserved != 0 {
            return Err(Error::corrupt(
                self.at + 4,
                "bitmaps extension: reserved field is not zero",
            ));
        }
        if self.count == 0 || self.count > MAX_BITMAPS {
            return Err(Error::corrupt(
                self.at,
                format!("bitmaps extension: {} bitmaps (1..=65535 allowed)", self.count),
            ));
        }
        if self.directory_size > MAX_BITMAP_DIRECTORY_BYTES {
            return Err(Error::corrupt(
                self.at + 8,
                "bitmaps extension: directory too large",
            ));
        }
        check_table(
            "bitmap directory",
            self.at + 16,
            self.directory_offset,
            self.directory_size,
            cluster_size,
            file_size,
        )
    }
}

/// What the header extensions say.
#[derive(Debug, Default)]
pub(super) struct Extensions {
    pub(super) feature_names: Vec<(u8, u8, String)>,
    pub(super) bitmaps: Option<Bitmaps>,
    pub(super) crypto: bool,
    pub(super) data_file: bool,
}

impl Extensions {
    /// Walks the extensions from the end of the header to the end of the first cluster.
    pub(super) fn read(header: &Header, file: &dyn ReadAt, cluster_size: u64) -> Result<Extensions> {
        let mut found = Extensions::default();
        let end = cluster_size.min(file.size());
        let mut offset = u64::from(header.header_length);
        // The first cluster, at most 2 MiB; bytes past the end of the file read as zeros.
        let mut area = vec![0u8; end.saturating_sub(offset) as usize];
        file.read_at_most(&mut area, offset)
            .map_err(|e| read_error("header extensions", offset, e))?;
        let base = offset;
        while offset + 8 <= end {
            let at = (offset - base) as usize;
            let kind = be32(&area, at);
            let len = u64::from(be32(&area, at + 4));
            if kind == EXT_END {
                break;
            }
            let data_at = offset + 8;
            if len > end - data_at {
                return Err(Error::corrupt(
                    offset,
                    format!("header extension 0x{kind:08x} of {len} bytes runs past the first cluster"),
                ));
            }
            let data = &area[at + 8..at + 8 + len as usize];
            match kind {
                EXT_FEATURE_NAMES => {
                    for entry in data.chunks_exact(48) {
                        let name = &entry[2..];
                        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                        found.feature_names.push((
                            entry[0],
                            entry[1],
                            String::from_utf8_lossy(name).into_owned(),
                        ));
                    }
                }
                EXT_BITMAPS => {
                    if data.len() != 24 {
                        return Err(Error::corrupt(
                            offset,
                            format!("bitmaps extension of {len} bytes (24 expected)"),
                        ));
                    }
                    found.bitmaps = Some(Bitmaps {
                        at: data_at,
                        count: be32(data, 0),
                        reserved: be32(data, 4),
                        directory_size: be64(data, 8),
                        directory_offset: be64(data, 16),
                    });
                }
                EXT_CRYPTO => found.crypto = true,
                EXT_DATA_FILE => found.data_file = true,
                EXT_BACKING_FORMAT => {}
                _ => {} // unknown extensions are skipped, as the specification says
            }
            offset = data_at + round_up(len, 8);
        }
        Ok(found)
    }

    /// `" (name, name)"` for the bits of `kind` set in `bits`, from the feature name table.
    pub(super) fn names_of(&self, kind: u8, bits: u64) -> String {
        let names: Vec<&str> = self
            .feature_names
            .iter()
            .filter(|(k, bit, _)| *k == kind && *bit < 64 && bits & (1u64 << bit) != 0)
            .map(|(_, _, name)| name.as_str())
            .collect();
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        }
    }
}
