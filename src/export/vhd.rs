//! VHD output (qemu-img's `vpc`), dynamic or fixed. Big-endian.
//!
//! | offset | size | dynamic disk | fixed disk |
//! |---|---|---|---|
//! | 0 | 512 | copy of the footer | the disk's data |
//! | 512 | 1024 | dynamic header `cxsparse`: BAT offset, entries, block size 2 MiB | |
//! | 1536 | 4 per block | BAT: the sector of each block's bitmap, or 0xFFFFFFFF | |
//! | then | 4 KiB + 2 MiB per block | allocated blocks in disk order, each a hole of 3.5 KiB, a sector bitmap (all ones) and the data, page-aligned | |
//! | end | 512 | footer `conectix`: sizes, CHS geometry, disk type, checksum | footer |
//!
//! The creator application is `qem2`, which tells qemu (and Hyper-V, which always does) to
//! take the footer's current size as the disk's size rather than the CHS geometry's rounding,
//! so the disk keeps its exact size. Checksums are the ones' complement of the byte sum.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::allocation::Allocation;
use super::data::{write_positional, Disk};
use super::unique::random_uuid;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::read_at::ReadAt;

const SECTOR: u64 = 512;
const BLOCK_SIZE: u64 = 2 << 20;
const BITMAP_LEN: u64 = BLOCK_SIZE / SECTOR / 8;
/// The alignment of each block's data in the file.
const PAGE: u64 = 4096;
const HEADER_AT: u64 = 512;
const BAT_AT: u64 = 1536;
const DISK_FIXED: u32 = 2;
const DISK_DYNAMIC: u32 = 3;
/// Seconds from the Unix epoch to 2000-01-01, VHD's epoch.
const VHD_EPOCH: u64 = 946_684_800;

/// Writes the disk as a VHD of `size` bytes (a multiple of 512) into a fresh `file`.
pub fn write<R: ReadAt>(
    disk: &Disk<R>,
    file: &File,
    size: u64,
    fixed: bool,
    control: &Control,
) -> Result<()> {
    let put = |bytes: &[u8], at: u64| {
        file.write_all_at(bytes, at)
            .map_err(|e| Error::io("writing the VHD metadata", e).at(at))
    };
    if fixed {
        file.set_len(size + SECTOR)
            .map_err(|e| Error::io("sizing the output", e))?;
        put(&footer(size, DISK_FIXED), size)?;
        return write_positional(disk, file, BLOCK_SIZE, &|b| Some(b * BLOCK_SIZE), control);
    }
    let allocation = Allocation::of_archive(disk.reader, BLOCK_SIZE);
    let entries = size.div_ceil(BLOCK_SIZE);
    // Each block's bitmap sector is placed just before a page boundary so that its 2 MiB of
    // data start on one: page-aligned data can be written around the page cache (O_DIRECT).
    // The 3.5 KiB before each bitmap are never written (a hole); readers find blocks through
    // the BAT, which may point anywhere.
    let data_at = (BAT_AT + entries * 4 + BITMAP_LEN).next_multiple_of(PAGE) - BITMAP_LEN;
    let stride = PAGE + BLOCK_SIZE;
    // The footer follows the last block's data (no hole after it).
    let end = match allocation.allocated() {
        0 => data_at,
        n => data_at + n * stride - (PAGE - BITMAP_LEN),
    };
    file.set_len(end + SECTOR)
        .map_err(|e| Error::io("sizing the output", e))?;
    let footer = footer(size, DISK_DYNAMIC);
    put(&footer, 0)?;
    put(&dynamic_header(entries), HEADER_AT)?;
    let mut bat = vec![0xFFu8; (data_at - BAT_AT) as usize]; // 0xFFFFFFFF: no block
    let bitmap = vec![0xFFu8; BITMAP_LEN as usize];
    for (block, ordinal) in allocation.ordinals(0, entries) {
        let at = data_at + ordinal * stride;
        let sector = u32::try_from(at / SECTOR).expect("a VHD of at most 2040 GiB has 32-bit sectors");
        bat[block as usize * 4..][..4].copy_from_slice(&sector.to_be_bytes());
        put(&bitmap, at)?;
    }
    put(&bat, BAT_AT)?;
    put(&footer, end)?;
    control.check()?;
    write_positional(
        disk,
        file,
        BLOCK_SIZE,
        &|block| {
            allocation
                .ordinal(block)
                .map(|o| data_at + o * stride + BITMAP_LEN)
        },
        control,
    )
}

/// The 512-byte footer of a disk of `size` bytes.
fn footer(size: u64, disk_type: u32) -> Vec<u8> {
    let mut f = vec![0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit, always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    let data_offset = if disk_type == DISK_FIXED {
        u64::MAX
    } else {
        HEADER_AT
    };
    f[16..24].copy_from_slice(&data_offset.to_be_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    f[24..28].copy_from_slice(&(now.saturating_sub(VHD_EPOCH) as u32).to_be_bytes());
    f[28..32].copy_from_slice(b"qem2");
    f[32..36].copy_from_slice(&0x0005_0003u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (cylinders, heads, sectors) = geometry(size / SECTOR);
    f[56..58].copy_from_slice(&cylinders.to_be_bytes());
    f[58] = heads;
    f[59] = sectors;
    f[60..64].copy_from_slice(&disk_type.to_be_bytes());
    f[68..84].copy_from_slice(&random_uuid());
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

fn dynamic_header(entries: u64) -> Vec<u8> {
    let mut h = vec![0u8; 1024];
    h[0..8].copy_from_slice(b"cxsparse");
    h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    h[16..24].copy_from_slice(&BAT_AT.to_be_bytes());
    h[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    h[28..32].copy_from_slice(&(entries as u32).to_be_bytes());
    h[32..36].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
    let sum = checksum(&h);
    h[36..40].copy_from_slice(&sum.to_be_bytes());
    h
}

/// The ones' complement of the sum of every byte (the checksum field being zero).
fn checksum(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)))
}

/// The CHS geometry of the VHD specification's algorithm, for `total` sectors.
fn geometry(total: u64) -> (u16, u8, u8) {
    let total = total.min(65535 * 16 * 255);
    let (sectors, heads, cylinder_heads);
    if total >= 65535 * 16 * 63 {
        sectors = 255;
        heads = 16;
        cylinder_heads = total / sectors;
    } else {
        let mut s = 17;
        let mut ch = total / s;
        let mut h = ch.div_ceil(1024).max(4);
        if ch >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            ch = total / s;
        }
        if ch >= h * 1024 {
            s = 63;
            h = 16;
            ch = total / s;
        }
        sectors = s;
        heads = h;
        cylinder_heads = ch;
    }
    ((cylinder_heads / heads) as u16, heads as u8, sectors as u8)
}
