//! VDI (VirtualBox): static and dynamic images, version 1.1. All fields are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 64 | text (`<<< Oracle VM VirtualBox Disk Image >>>`) |
//! | 64 | 4 | signature `0xbeda107f` |
//! | 68 | 4 | version (`0x00010001`) |
//! | 76 | 4 | image type: 1 dynamic, 2 static, 3 undo, 4 differencing |
//! | 340 | 4 | block map offset |
//! | 344 | 4 | data offset |
//! | 360 | 4 | sector size (512) |
//! | 368 | 8 | disk size in bytes |
//! | 376 | 4 | block size (1 MiB) |
//! | 380 | 4 | block extra bytes (0) |
//! | 384 | 4 | blocks in image |
//! | 424 | 16 | link UUID (must be zero) |
//! | 440 | 16 | parent UUID (must be zero) |
//!
//! The block map holds one u32 per block: the block's index in the data area (its bytes are at
//! data offset + index × block size), `0xFFFFFFFF` for a block never written, or `0xFFFFFFFE`
//! for a discarded one; both of the latter read as zeros. The checks are qemu's; an image with a
//! parent or link UUID (a differencing image) needs another file and is refused.

use serde_json::{json, Map};

use super::blockmap::{check_table_size, check_virtual_size, read_bytes, BlockTable, UNMAPPED};
use super::bytes::{le32, le64};
use crate::error::{Error, Result};
use crate::read_at::ReadAt;

const HEADER_LEN: u64 = 512;
const SIGNATURE: u32 = 0xbeda_107f;
const VERSION_1_1: u32 = 0x0001_0001;
const BLOCK_SIZE: u32 = 1 << 20;
const TYPE_DYNAMIC: u32 = 1;
const TYPE_STATIC: u32 = 2;

/// Opens a VDI image.
pub fn open(file: Box<dyn ReadAt>, max_virtual_size: u64) -> Result<BlockTable> {
    let h = read_bytes(file.as_ref(), 0, HEADER_LEN, "the VDI header")?;
    if le32(&h, 64) != SIGNATURE {
        return Err(Error::corrupt(64, "no VDI signature"));
    }
    let version = le32(&h, 68);
    if version != VERSION_1_1 {
        return Err(Error::unsupported(format!(
            "VDI version {}.{} is not supported (only 1.1)",
            version >> 16,
            version & 0xffff
        ))
        .at(68));
    }
    let image_type = le32(&h, 76);
    let subformat = match image_type {
        TYPE_DYNAMIC => "dynamic",
        TYPE_STATIC => "static",
        4 => {
            return Err(Error::unsupported(
                "VDI differencing images are refused: they need their parent image",
            ))
        }
        other => return Err(Error::unsupported(format!("VDI image type {other} is not supported")).at(76)),
    };
    if h[424..440].iter().any(|&b| b != 0) {
        return Err(Error::unsupported("VDI image with a link UUID: it needs another image").at(424));
    }
    if h[440..456].iter().any(|&b| b != 0) {
        return Err(Error::unsupported("VDI image with a parent UUID: it needs its parent image").at(440));
    }
    let map_offset = u64::from(le32(&h, 340));
    let data_offset = u64::from(le32(&h, 344));
    if map_offset % 512 != 0 || data_offset % 512 != 0 {
        return Err(Error::corrupt(
            340,
            "VDI block map or data offset is not sector-aligned",
        ));
    }
    if le32(&h, 360) != 512 {
        return Err(Error::corrupt(
            360,
            format!("VDI sector size {} is not 512", le32(&h, 360)),
        ));
    }
    let block_size = le32(&h, 376);
    if block_size != BLOCK_SIZE {
        return Err(Error::unsupported(format!(
            "VDI block size {block_size} is not supported (only 1 MiB)"
        ))
        .at(376));
    }
    if le32(&h, 380) != 0 {
        return Err(Error::unsupported("VDI blocks with extra data are not supported").at(380));
    }
    let block_size = u64::from(block_size);
    let virtual_size = le64(&h, 368)
        .checked_next_multiple_of(512)
        .ok_or_else(|| Error::corrupt(368, "VDI disk size overflows"))?;
    let blocks_in_image = u64::from(le32(&h, 384));
    if virtual_size > blocks_in_image * block_size {
        return Err(Error::corrupt(
            368,
            format!("VDI disk size {virtual_size} is larger than its {blocks_in_image} blocks"),
        ));
    }
    check_virtual_size(virtual_size, max_virtual_size)?;
    check_table_size(blocks_in_image * 4, map_offset, "the VDI block map")?;
    let map = read_bytes(
        file.as_ref(),
        map_offset,
        blocks_in_image * 4,
        "the VDI block map",
    )?;
    let needed = virtual_size.div_ceil(block_size) as usize;
    let blocks = map
        .chunks_exact(4)
        .take(needed)
        .map(|entry| match le32(entry, 0) {
            u32::MAX | 0xffff_fffe => UNMAPPED,
            index => data_offset + u64::from(index) * block_size,
        })
        .collect();
    let mut details = Map::new();
    details.insert("vdi_subformat".into(), json!(subformat));
    details.insert("cluster_size".into(), json!(block_size));
    let table = BlockTable {
        format: "vdi",
        file,
        virtual_size,
        block_size,
        blocks,
        details,
    };
    table.check_blocks("the VDI block map", |i| map_offset + i as u64 * 4)?;
    Ok(table)
}
