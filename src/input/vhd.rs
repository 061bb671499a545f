//! VHD (Virtual PC / Hyper-V / Azure; `vpc` in qemu-img): fixed and dynamic disks.
//!
//! Every VHD ends with a 512-byte footer; a dynamic disk also keeps a copy at offset 0, and
//! that copy is the one read (as qemu does). All fields are big-endian.
//!
//! | footer offset | size | field |
//! |---|---|---|
//! | 0 | 8 | cookie `conectix` |
//! | 16 | 8 | data offset: the dynamic header (dynamic disks) |
//! | 28 | 4 | creator application (`vpc `, `qemu`, `qem2`, `win `, `d2v `, `CTXS`, `tap\0`) |
//! | 48 | 8 | current size in bytes |
//! | 56 | 2+1+1 | geometry: cylinders, heads, sectors per track |
//! | 60 | 4 | disk type: 2 fixed, 3 dynamic, 4 differencing |
//! | 64 | 4 | checksum: ones' complement of the byte sum with this field zeroed |
//!
//! | dynamic header offset | size | field |
//! |---|---|---|
//! | 0 | 8 | cookie `cxsparse` |
//! | 16 | 8 | block allocation table (BAT) offset |
//! | 28 | 4 | BAT entries |
//! | 32 | 4 | block size (a power of two, usually 2 MiB) |
//! | 36 | 4 | checksum over the 1024-byte header |
//!
//! A BAT entry (u32) is the sector of the block's sector bitmap, followed by the block's data,
//! or `0xFFFFFFFF` for a block that reads as zeros. qemu reads an allocated block's data whatever
//! its bitmap says, and so does imgpack, so that the output matches `qemu-img convert`.
//!
//! The virtual size follows qemu: the CHS geometry (cylinders × heads × sectors × 512), except
//! for images whose creator is known to use the footer's current size (Hyper-V, Disk2vhd,
//! XenServer, XenConverter, newer qemu) or whose geometry is the maximum, which use that size.
//! A fixed disk's data is the file before its footer. Differencing disks name their parent by
//! file name and are refused.

use serde_json::{json, Map};

use super::blockmap::{check_table_size, check_virtual_size, read_bytes, BlockTable, UNMAPPED};
use super::bytes::{be16, be32, be64};
use crate::error::{Error, ErrorKind, Result};
use crate::read_at::ReadAt;

const FOOTER_LEN: u64 = 512;
const DYNAMIC_HEADER_LEN: u64 = 1024;
const TYPE_FIXED: u32 = 2;
const TYPE_DYNAMIC: u32 = 3;
const TYPE_DIFFERENCING: u32 = 4;
/// qemu's largest geometry (65535 × 16 × 255): such images use the footer's size.
const MAX_GEOMETRY_SECTORS: u64 = 65535 * 16 * 255;
/// qemu's largest VHD (about 2040 GiB).
const MAX_SECTORS: u64 = 65535 * 255 * 255;

/// The VHD checksum: ones' complement of the sum of all bytes, with the checksum field at
/// `field` counted as zero.
pub fn checksum(bytes: &[u8], field: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// Opens a VHD image.
pub fn open(file: Box<dyn ReadAt>, max_virtual_size: u64) -> Result<BlockTable> {
    let size = file.size();
    if size < FOOTER_LEN {
        return Err(Error::corrupt(0, "VHD image shorter than its 512-byte footer"));
    }
    let head = read_bytes(file.as_ref(), 0, FOOTER_LEN, "the VHD footer copy")?;
    let (footer, footer_offset) = if head.starts_with(b"conectix") {
        (head, 0)
    } else {
        let at = size - FOOTER_LEN;
        (read_bytes(file.as_ref(), at, FOOTER_LEN, "the VHD footer")?, at)
    };
    if !footer.starts_with(b"conectix") {
        return Err(Error::corrupt(footer_offset, "no VHD footer (cookie `conectix`)"));
    }
    let stored = be32(&footer, 64);
    let computed = checksum(&footer, 64);
    if stored != computed {
        return Err(Error::new(
            ErrorKind::Checksum,
            format!("VHD footer checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        )
        .at(footer_offset + 64));
    }
    let disk_type = be32(&footer, 60);
    match (disk_type, footer_offset) {
        (TYPE_DIFFERENCING, _) => {
            return Err(Error::unsupported(
                "VHD differencing disks are refused: they name a parent image file",
            ))
        }
        (TYPE_DYNAMIC, 0) | (TYPE_FIXED, 1..) => {}
        (TYPE_DYNAMIC, _) => {
            return Err(Error::corrupt(
                0,
                "dynamic VHD without the footer copy at its start",
            ))
        }
        (TYPE_FIXED, 0) => {
            return Err(Error::corrupt(0, "fixed VHD with a footer at its start"));
        }
        (other, _) => {
            return Err(Error::corrupt(
                footer_offset + 60,
                format!("unknown VHD disk type {other}"),
            ))
        }
    }
    let virtual_size = virtual_size(&footer).map_err(|e| e.at(footer_offset + 48))?;
    check_virtual_size(virtual_size, max_virtual_size)?;
    let creator = String::from_utf8_lossy(&footer[28..32])
        .trim_end_matches(['\0', ' '])
        .to_string();
    let mut details = Map::new();
    details.insert("vhd_creator".into(), json!(creator));
    if disk_type == TYPE_FIXED {
        if virtual_size > size - FOOTER_LEN {
            return Err(Error::corrupt(
                size - FOOTER_LEN,
                format!(
                    "fixed VHD of {virtual_size} bytes is truncated: the file holds {} bytes of data",
                    size - FOOTER_LEN
                ),
            ));
        }
        details.insert("vhd_subformat".into(), json!("fixed"));
        return Ok(BlockTable {
            format: "vpc",
            file,
            virtual_size,
            block_size: virtual_size.max(1),
            blocks: vec![0],
            details,
        });
    }
    open_dynamic(file, &footer, virtual_size, details)
}

/// The virtual size qemu gives the disk described by `footer`.
fn virtual_size(footer: &[u8]) -> Result<u64> {
    let creator = &footer[28..32];
    let geometry_sectors = u64::from(be16(footer, 56)) * u64::from(footer[58]) * u64::from(footer[59]);
    let uses_current_size = [b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0"]
        .iter()
        .any(|c| creator == &c[..]);
    let sectors = if uses_current_size || geometry_sectors == MAX_GEOMETRY_SECTORS {
        be64(footer, 48) / 512
    } else {
        geometry_sectors
    };
    if sectors > MAX_SECTORS {
        return Err(Error::corrupt(
            0,
            format!("VHD of {sectors} sectors is larger than the format's 2040 GiB"),
        ));
    }
    Ok(sectors * 512)
}

fn open_dynamic(
    file: Box<dyn ReadAt>,
    footer: &[u8],
    virtual_size: u64,
    mut details: Map<String, serde_json::Value>,
) -> Result<BlockTable> {
    let header_offset = be64(footer, 16);
    let header = read_bytes(
        file.as_ref(),
        header_offset,
        DYNAMIC_HEADER_LEN,
        "the VHD dynamic header",
    )?;
    if !header.starts_with(b"cxsparse") {
        return Err(Error::corrupt(
            header_offset,
            "no VHD dynamic header (cookie `cxsparse`)",
        ));
    }
    let stored = be32(&header, 36);
    let computed = checksum(&header, 36);
    if stored != computed {
        return Err(Error::new(
            ErrorKind::Checksum,
            format!("VHD dynamic header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        )
        .at(header_offset + 36));
    }
    let block_size = u64::from(be32(&header, 32));
    if !block_size.is_power_of_two() || block_size < 512 {
        return Err(Error::corrupt(
            header_offset + 32,
            format!("VHD block size {block_size} is not a power of two of at least 512"),
        ));
    }
    let bitmap_size = (block_size / (8 * 512)).div_ceil(512) * 512;
    let entries = u64::from(be32(&header, 28));
    if entries * block_size < virtual_size {
        return Err(Error::corrupt(
            header_offset + 28,
            format!("VHD block table of {entries} entries of {block_size} bytes is too small for the disk"),
        ));
    }
    let table_offset = be64(&header, 16);
    check_table_size(entries * 4, table_offset, "the VHD block allocation table")?;
    let table = read_bytes(
        file.as_ref(),
        table_offset,
        entries * 4,
        "the VHD block allocation table",
    )?;
    let file_size = file.size();
    let mut blocks = Vec::with_capacity(virtual_size.div_ceil(block_size) as usize);
    for (index, entry) in table.chunks_exact(4).enumerate() {
        let sector = be32(entry, 0);
        if sector == u32::MAX {
            if (index as u64) * block_size < virtual_size {
                blocks.push(UNMAPPED);
            }
            continue;
        }
        let bitmap = u64::from(sector) * 512;
        // Like qemu, every allocated block (bitmap and data) must lie inside the file.
        let end = bitmap + bitmap_size + block_size;
        if end > file_size {
            return Err(Error::corrupt(
                table_offset + index as u64 * 4,
                format!(
                    "VHD block {index} at offset {bitmap} ends past the end of the file ({file_size} bytes)"
                ),
            ));
        }
        if (index as u64) * block_size < virtual_size {
            blocks.push(bitmap + bitmap_size);
        }
    }
    details.insert("vhd_subformat".into(), json!("dynamic"));
    details.insert("cluster_size".into(), json!(block_size));
    Ok(BlockTable {
        format: "vpc",
        file,
        virtual_size,
        block_size,
        blocks,
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_skips_its_field() {
        let mut bytes = vec![1u8; 16];
        bytes[4..8].copy_from_slice(&[9, 9, 9, 9]);
        assert_eq!(checksum(&bytes, 4), !12u32);
    }

    #[test]
    fn virtual_size_follows_the_creator() {
        let mut footer = vec![0u8; 512];
        footer[28..32].copy_from_slice(b"qemu");
        footer[48..56].copy_from_slice(&(10u64 << 20).to_be_bytes());
        footer[56..58].copy_from_slice(&20u16.to_be_bytes());
        footer[58] = 16;
        footer[59] = 63;
        assert_eq!(virtual_size(&footer).unwrap(), 20 * 16 * 63 * 512);
        footer[28..32].copy_from_slice(b"win ");
        assert_eq!(virtual_size(&footer).unwrap(), 10 << 20);
    }
}
