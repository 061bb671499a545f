//! VHDX (Hyper-V): dynamic and fixed disks, version 1. All fields are little-endian; GUIDs are
//! stored in Microsoft's mixed-endian layout.
//!
//! | file offset | size | structure |
//! |---|---|---|
//! | 0 | 64 KiB | file type identifier `vhdxfile` |
//! | 64 KiB | 4 KiB | header 1: `head`, crc32c at 4, sequence number at 8, log GUID at 48, log version at 64, version at 66 |
//! | 128 KiB | 4 KiB | header 2 (the valid one with the higher sequence number is current) |
//! | 192 KiB | 64 KiB | region table: `regi`, crc32c at 4, entry count at 8; 32-byte entries from 16 (GUID, offset u64, length u32, required bit) |
//! | region | | metadata table: `metadata`, entry count (u16) at 10; 32-byte entries from 32 (GUID, offset u32, length u32, flags: bit 2 required) |
//! | region | | block allocation table (BAT): u64 entries |
//!
//! Metadata items read: file parameters (block size, has-parent flag), virtual disk size,
//! logical sector size. A parent locator, the has-parent flag or an unknown required item or
//! region is refused. The BAT interleaves one sector-bitmap entry after every `chunk ratio`
//! payload entries, where chunk ratio = 2^23 × logical sector size / block size; an entry's
//! low 3 bits are its state and bits 20..63 its file offset in MiB. Payload states: 0 not
//! present, 1 undefined, 2 zero, 3 unmapped (all read as zeros, as in qemu), 6 fully present
//! (read from the file); 7 partially present belongs to differencing disks and is refused.
//! Sector-bitmap entries only matter to differencing disks and are ignored.
//!
//! A header whose log GUID is set may have a log to replay before the tables can be trusted:
//! such an image is refused with a message saying how to replay it.

use serde_json::{json, Map};

use super::blockmap::{check_table_size, check_virtual_size, read_bytes, BlockTable, UNMAPPED};
use super::bytes::{le16, le32, le64};
use crate::error::{Error, ErrorKind, Result};
use crate::read_at::ReadAt;

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
const HEADER_LEN: u64 = 4 * KIB;
const REGION_TABLE_LEN: u64 = 64 * KIB;
const METADATA_TABLE_LEN: u64 = 64 * KIB;
const MAX_ENTRIES: u32 = 2047;
/// The format's largest virtual disk (64 TiB).
const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// The GUIDs of the VHDX specification that the reader and the writer (`export::vhdx`) use.
pub(crate) mod guid {
    /// A GUID as stored: the first three fields little-endian, the last eight bytes as written.
    const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        [
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6],
            d4[7],
        ]
    }

    pub(crate) const BAT: [u8; 16] = from_fields(
        0x2dc27766,
        0xf623,
        0x4200,
        [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08],
    );
    pub(crate) const METADATA: [u8; 16] = from_fields(
        0x8b7ca206,
        0x4790,
        0x4b9a,
        [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e],
    );
    pub(crate) const FILE_PARAMETERS: [u8; 16] = from_fields(
        0xcaa16737,
        0xfa36,
        0x4d43,
        [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b],
    );
    pub(crate) const VIRTUAL_DISK_SIZE: [u8; 16] = from_fields(
        0x2fa54224,
        0xcd1b,
        0x4876,
        [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8],
    );
    pub(crate) const PAGE_83: [u8; 16] = from_fields(
        0xbeca12ab,
        0xb2e6,
        0x4523,
        [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46],
    );
    pub(crate) const LOGICAL_SECTOR: [u8; 16] = from_fields(
        0x8141bf1d,
        0xa96f,
        0x4709,
        [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f],
    );
    pub(crate) const PHYSICAL_SECTOR: [u8; 16] = from_fields(
        0xcda348c7,
        0x445d,
        0x4471,
        [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56],
    );
    pub(crate) const PARENT_LOCATOR: [u8; 16] = from_fields(
        0xa8d35f2d,
        0xb30b,
        0x454d,
        [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c],
    );
}
use guid::{
    BAT, FILE_PARAMETERS, LOGICAL_SECTOR, METADATA, PAGE_83, PARENT_LOCATOR, PHYSICAL_SECTOR,
    VIRTUAL_DISK_SIZE,
};

/// crc32c of `bytes` with the 4-byte checksum field at `field` counted as zero.
pub fn checksum(bytes: &[u8], field: usize) -> u32 {
    let crc = crc32c::crc32c(&bytes[..field]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &bytes[field + 4..])
}

fn checksum_ok(bytes: &[u8]) -> bool {
    le32(bytes, 4) == checksum(bytes, 4)
}

/// Opens a VHDX image.
pub fn open(file: Box<dyn ReadAt>, max_virtual_size: u64) -> Result<BlockTable> {
    let f = file.as_ref();
    let identifier = read_bytes(f, 0, 8, "the VHDX file identifier")?;
    if identifier != b"vhdxfile" {
        return Err(Error::corrupt(0, "no VHDX file identifier"));
    }
    let header = current_header(f)?;
    if header[48..64].iter().any(|&b| b != 0) {
        return Err(Error::unsupported(
            "VHDX image has a log that may need replaying (log GUID set); replay it first \
             (open it once in Hyper-V, or run `qemu-img check -r all`)",
        ));
    }
    let regions = read_bytes(f, 192 * KIB, REGION_TABLE_LEN, "the VHDX region table")?;
    if !regions.starts_with(b"regi") {
        return Err(Error::corrupt(192 * KIB, "no VHDX region table signature"));
    }
    if !checksum_ok(&regions) {
        return Err(Error::new(ErrorKind::Checksum, "VHDX region table checksum mismatch").at(192 * KIB + 4));
    }
    let count = le32(&regions, 8);
    if count > MAX_ENTRIES {
        return Err(Error::corrupt(
            192 * KIB + 8,
            format!("VHDX region table of {count} entries"),
        ));
    }
    let (mut bat, mut metadata) = (None, None);
    for i in 0..count as usize {
        let e = &regions[16 + 32 * i..48 + 32 * i];
        let (offset, length, required) = (le64(e, 16), u64::from(le32(e, 24)), le32(e, 28) & 1 != 0);
        let at = 192 * KIB + 16 + 32 * i as u64;
        if offset % MIB != 0 || length % MIB != 0 || offset < MIB {
            return Err(Error::corrupt(at, "VHDX region is not aligned to 1 MiB"));
        }
        let slot = match &e[..16] {
            g if g == BAT => &mut bat,
            g if g == METADATA => &mut metadata,
            _ if required => {
                return Err(Error::unsupported("VHDX image has an unknown required region").at(at))
            }
            _ => continue,
        };
        if slot.replace((offset, length)).is_some() {
            return Err(Error::corrupt(at, "VHDX region listed twice"));
        }
    }
    let (bat_offset, bat_length) =
        bat.ok_or_else(|| Error::corrupt(192 * KIB, "VHDX image has no BAT region"))?;
    let (meta_offset, meta_length) =
        metadata.ok_or_else(|| Error::corrupt(192 * KIB, "VHDX image has no metadata region"))?;
    let meta = Metadata::read(f, meta_offset, meta_length)?;
    check_virtual_size(meta.virtual_size, max_virtual_size)?;

    let block_size = meta.block_size;
    let chunk_ratio = (1u64 << 23) * meta.logical_sector / block_size;
    let data_blocks = meta.virtual_size.div_ceil(block_size);
    let entries = if data_blocks == 0 {
        0
    } else {
        data_blocks + (data_blocks - 1) / chunk_ratio
    };
    if entries * 8 > bat_length {
        return Err(Error::corrupt(
            bat_offset,
            format!("VHDX BAT region of {bat_length} bytes is too small for {entries} entries"),
        ));
    }
    check_table_size(entries * 8, bat_offset, "the VHDX BAT")?;
    let raw = read_bytes(f, bat_offset, entries * 8, "the VHDX BAT")?;
    let mut blocks = Vec::with_capacity(data_blocks as usize);
    for block in 0..data_blocks {
        let index = block + block / chunk_ratio;
        let entry = le64(&raw, index as usize * 8);
        let at = bat_offset + index * 8;
        blocks.push(match entry & 7 {
            0..=3 | 5 => UNMAPPED,
            6 => {
                let offset = entry & !(MIB - 1);
                if offset < MIB {
                    return Err(Error::corrupt(
                        at,
                        format!("VHDX block {block} is stored in the file's header"),
                    ));
                }
                offset
            }
            7 => {
                return Err(Error::corrupt(
                    at,
                    format!("VHDX block {block} is partially present, which only a differencing disk may be"),
                ))
            }
            state => {
                return Err(Error::corrupt(
                    at,
                    format!("VHDX block {block} has unknown state {state}"),
                ))
            }
        });
    }
    let mut details = Map::new();
    details.insert("cluster_size".into(), json!(block_size));
    details.insert("vhdx_logical_sector_size".into(), json!(meta.logical_sector));
    details.insert(
        "vhdx_subformat".into(),
        json!(if meta.fixed { "fixed" } else { "dynamic" }),
    );
    let table = BlockTable {
        format: "vhdx",
        file,
        virtual_size: meta.virtual_size,
        block_size,
        blocks,
        details,
    };
    table.check_blocks("the VHDX BAT", |b| {
        bat_offset + (b as u64 + b as u64 / chunk_ratio) * 8
    })?;
    Ok(table)
}

/// The current header: the valid one of the two with the higher sequence number.
fn current_header(f: &dyn ReadAt) -> Result<Vec<u8>> {
    let read = |at| -> Result<Option<Vec<u8>>> {
        let h = read_bytes(f, at, HEADER_LEN, "a VHDX header")?;
        Ok((h.starts_with(b"head") && checksum_ok(&h) && le16(&h, 66) == 1).then_some(h))
    };
    match (read(64 * KIB)?, read(128 * KIB)?) {
        (Some(a), Some(b)) => {
            let (sa, sb) = (le64(&a, 8), le64(&b, 8));
            if sa > sb || a == b {
                Ok(a)
            } else if sb > sa {
                Ok(b)
            } else {
                Err(Error::corrupt(
                    64 * KIB,
                    "both VHDX headers have the same sequence number",
                ))
            }
        }
        (Some(h), None) | (None, Some(h)) => Ok(h),
        (None, None) => Err(Error::new(
            ErrorKind::Checksum,
            "neither VHDX header is valid (signature, crc32c checksum or version)",
        )
        .at(64 * KIB)),
    }
}

struct Metadata {
    /// The "leave blocks allocated" flag: set on fixed disks.
    fixed: bool,
    block_size: u64,
    virtual_size: u64,
    logical_sector: u64,
}

impl Metadata {
    fn read(f: &dyn ReadAt, region: u64, region_len: u64) -> Result<Metadata> {
        if region_len < METADATA_TABLE_LEN {
            return Err(Error::corrupt(region, "VHDX metadata region is too small"));
        }
        let table = read_bytes(f, region, METADATA_TABLE_LEN, "the VHDX metadata table")?;
        if !table.starts_with(b"metadata") {
            return Err(Error::corrupt(region, "no VHDX metadata table signature"));
        }
        let count = u32::from(le16(&table, 10));
        if count > MAX_ENTRIES {
            return Err(Error::corrupt(
                region + 10,
                format!("VHDX metadata table of {count} entries"),
            ));
        }
        let (mut params, mut size, mut logical) = (None, None, None);
        for i in 0..count as usize {
            let e = &table[32 + 32 * i..64 + 32 * i];
            let at = region + 32 + 32 * i as u64;
            let (offset, length, required) = (
                u64::from(le32(e, 16)),
                u64::from(le32(e, 20)),
                le32(e, 24) & 4 != 0,
            );
            let item = |want: u64| -> Result<Vec<u8>> {
                if length < want || offset < METADATA_TABLE_LEN || offset + want > region_len {
                    return Err(Error::corrupt(at, "VHDX metadata item lies outside its region"));
                }
                read_bytes(f, region + offset, want, "a VHDX metadata item")
            };
            match &e[..16] {
                g if g == FILE_PARAMETERS => params = Some(item(8)?),
                g if g == VIRTUAL_DISK_SIZE => size = Some(le64(&item(8)?, 0)),
                g if g == LOGICAL_SECTOR => logical = Some(u64::from(le32(&item(4)?, 0))),
                g if g == PARENT_LOCATOR => {
                    return Err(Error::unsupported(
                        "VHDX differencing disks are refused: their parent locator names another file",
                    ))
                }
                g if g == PAGE_83 || g == PHYSICAL_SECTOR => {}
                _ if required => {
                    return Err(Error::unsupported("VHDX image has an unknown required metadata item").at(at))
                }
                _ => {}
            }
        }
        let missing = |what: &str| Error::corrupt(region, format!("VHDX metadata lacks the {what}"));
        let params = params.ok_or_else(|| missing("file parameters"))?;
        let virtual_size = size.ok_or_else(|| missing("virtual disk size"))?;
        let logical_sector = logical.ok_or_else(|| missing("logical sector size"))?;
        if le32(&params, 4) & 2 != 0 {
            return Err(Error::unsupported(
                "VHDX differencing disks are refused: they need a parent image file",
            ));
        }
        let block_size = u64::from(le32(&params, 0));
        if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
            return Err(Error::corrupt(
                region,
                format!("VHDX block size {block_size} (1 MiB to 256 MiB allowed)"),
            ));
        }
        if logical_sector != 512 && logical_sector != 4096 {
            return Err(Error::corrupt(
                region,
                format!("VHDX logical sector size {logical_sector}"),
            ));
        }
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(Error::corrupt(
                region,
                format!("VHDX virtual size {virtual_size} exceeds the format's 64 TiB"),
            ));
        }
        Ok(Metadata {
            fixed: le32(&params, 4) & 1 != 0,
            block_size,
            virtual_size,
            logical_sector,
        })
    }
}
