//! VHDX output (version 1), dynamic or fixed. Little-endian; GUIDs in Microsoft's layout.
//!
//! | offset | size | structure |
//! |---|---|---|
//! | 0 | 64 KiB | file type identifier `vhdxfile`, creator "imgpack" (UTF-16) |
//! | 64 KiB, 128 KiB | 4 KiB each | headers 1 and 2: `head`, crc32c, sequence numbers 0 and 1, write GUIDs, log GUID zero (nothing to replay), log at 1 MiB |
//! | 192 KiB, 256 KiB | 64 KiB each | region tables 1 and 2: `regi`, crc32c, the BAT and metadata regions (both required) |
//! | 1 MiB | 1 MiB | the log, empty |
//! | 2 MiB | 1 MiB | metadata: the table, then file parameters (block size, leave-allocated for fixed disks), virtual disk size, page 83 GUID, logical sector 512, physical sector 4096 |
//! | 3 MiB | whole MiB | BAT: one entry per payload block (state 6 "fully present" with its MiB offset, or 0 "not present"), with a sector-bitmap entry (0) after every chunk-ratio payload entries |
//! | then | block size each | allocated payload blocks, in disk order |
//!
//! The block size follows qemu-img's default: 8 MiB up to 1 GiB, 16 MiB up to 100 GiB,
//! 32 MiB up to 32 TiB, 64 MiB above.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::allocation::Allocation;
use super::data::{write_positional, Disk};
use super::unique::random_uuid;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::input::vhdx::guid::{
    BAT, FILE_PARAMETERS, LOGICAL_SECTOR as LOGICAL_SECTOR_SIZE, METADATA, PAGE_83,
    PHYSICAL_SECTOR as PHYSICAL_SECTOR_SIZE, VIRTUAL_DISK_SIZE,
};
use crate::read_at::ReadAt;

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
const LOG_AT: u64 = MIB;
const LOG_LEN: u64 = MIB;
const METADATA_AT: u64 = 2 * MIB;
const METADATA_LEN: u64 = MIB;
const BAT_AT: u64 = 3 * MIB;
const LOGICAL_SECTOR: u64 = 512;
const PHYSICAL_SECTOR: u32 = 4096;
const FULLY_PRESENT: u64 = 6;

/// Metadata entry flags.
const IS_VIRTUAL_DISK: u32 = 2;
const IS_REQUIRED: u32 = 4;

/// The block size qemu-img chooses for a disk of `size` bytes.
fn block_size_for(size: u64) -> u64 {
    match size {
        s if s > 32 * TIB => 64 * MIB,
        s if s > 100 * GIB => 32 * MIB,
        s if s > GIB => 16 * MIB,
        _ => 8 * MIB,
    }
}

/// Writes the disk as a VHDX of `size` bytes (a multiple of 512) into a fresh `file`.
pub fn write<R: ReadAt>(
    disk: &Disk<R>,
    file: &File,
    size: u64,
    fixed: bool,
    control: &Control,
) -> Result<()> {
    let block_size = block_size_for(size);
    let chunk_ratio = (1u64 << 23) * LOGICAL_SECTOR / block_size;
    let data_blocks = size.div_ceil(block_size);
    let entries = match data_blocks {
        0 => 0,
        n => n + (n - 1) / chunk_ratio,
    };
    let bat_len = (entries * 8).next_multiple_of(MIB).max(MIB);
    let data_at = BAT_AT + bat_len;
    let allocation = if fixed {
        Allocation::full(block_size, size)
    } else {
        Allocation::of_archive(disk.reader, block_size)
    };
    let put = |bytes: &[u8], at: u64| {
        file.write_all_at(bytes, at)
            .map_err(|e| Error::io("writing the VHDX metadata", e).at(at))
    };
    file.set_len(data_at + allocation.allocated() * block_size)
        .map_err(|e| Error::io("sizing the output", e))?;

    let mut identifier = vec![0u8; 8 + 512];
    identifier[..8].copy_from_slice(b"vhdxfile");
    for (i, unit) in "imgpack".encode_utf16().enumerate() {
        identifier[8 + 2 * i..][..2].copy_from_slice(&unit.to_le_bytes());
    }
    put(&identifier, 0)?;
    let (file_write, data_write) = (random_uuid(), random_uuid());
    for (sequence, at) in [(0u64, 64 * KIB), (1, 128 * KIB)] {
        put(&header(sequence, &file_write, &data_write), at)?;
    }
    let regions = region_table(bat_len);
    put(&regions, 192 * KIB)?;
    put(&regions, 256 * KIB)?;
    put(&metadata(block_size, size, fixed), METADATA_AT)?;

    let mut bat = vec![0u8; (entries * 8) as usize];
    for (block, ordinal) in allocation.ordinals(0, data_blocks) {
        let index = block + block / chunk_ratio;
        let entry = (data_at + ordinal * block_size) | FULLY_PRESENT;
        bat[index as usize * 8..][..8].copy_from_slice(&entry.to_le_bytes());
    }
    put(&bat, BAT_AT)?;
    control.check()?;
    write_positional(
        disk,
        file,
        block_size,
        &|block| allocation.ordinal(block).map(|o| data_at + o * block_size),
        control,
    )
}

/// crc32c of `bytes` with the checksum field at 4 counted as zero, stored there.
fn seal(bytes: &mut [u8]) {
    bytes[4..8].fill(0);
    let crc = crc32c::crc32c(bytes);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn header(sequence: u64, file_write: &[u8; 16], data_write: &[u8; 16]) -> Vec<u8> {
    let mut h = vec![0u8; 4 * KIB as usize];
    h[..4].copy_from_slice(b"head");
    h[8..16].copy_from_slice(&sequence.to_le_bytes());
    h[16..32].copy_from_slice(file_write);
    h[32..48].copy_from_slice(data_write);
    // 48..64: log GUID, zero: the log is empty and nothing needs replaying.
    h[64..66].copy_from_slice(&0u16.to_le_bytes());
    h[66..68].copy_from_slice(&1u16.to_le_bytes());
    h[68..72].copy_from_slice(&(LOG_LEN as u32).to_le_bytes());
    h[72..80].copy_from_slice(&LOG_AT.to_le_bytes());
    seal(&mut h);
    h
}

fn region_table(bat_len: u64) -> Vec<u8> {
    let mut t = vec![0u8; 64 * KIB as usize];
    t[..4].copy_from_slice(b"regi");
    t[8..12].copy_from_slice(&2u32.to_le_bytes());
    for (i, (id, offset, length)) in [(BAT, BAT_AT, bat_len), (METADATA, METADATA_AT, METADATA_LEN)]
        .into_iter()
        .enumerate()
    {
        let e = &mut t[16 + 32 * i..48 + 32 * i];
        e[..16].copy_from_slice(&id);
        e[16..24].copy_from_slice(&offset.to_le_bytes());
        e[24..28].copy_from_slice(&(length as u32).to_le_bytes());
        e[28..32].copy_from_slice(&1u32.to_le_bytes()); // required
    }
    seal(&mut t);
    t
}

fn metadata(block_size: u64, size: u64, fixed: bool) -> Vec<u8> {
    let mut m = vec![0u8; 64 * KIB as usize + 4 * KIB as usize];
    m[..8].copy_from_slice(b"metadata");
    let page_83 = random_uuid();
    let mut parameters = (block_size as u32).to_le_bytes().to_vec();
    parameters.extend_from_slice(&u32::from(fixed).to_le_bytes()); // bit 0: leave blocks allocated
    let items: [([u8; 16], Vec<u8>, u32); 5] = [
        (FILE_PARAMETERS, parameters, IS_REQUIRED),
        (
            VIRTUAL_DISK_SIZE,
            size.to_le_bytes().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
        (PAGE_83, page_83.to_vec(), IS_VIRTUAL_DISK | IS_REQUIRED),
        (
            LOGICAL_SECTOR_SIZE,
            (LOGICAL_SECTOR as u32).to_le_bytes().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
        (
            PHYSICAL_SECTOR_SIZE,
            PHYSICAL_SECTOR.to_le_bytes().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
    ];
    m[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    let mut offset = 64 * KIB as usize;
    for (i, (id, data, flags)) in items.iter().enumerate() {
        let e = &mut m[32 + 32 * i..64 + 32 * i];
        e[..16].copy_from_slice(id);
        e[16..20].copy_from_slice(&(offset as u32).to_le_bytes());
        e[20..24].copy_from_slice(&(data.len() as u32).to_le_bytes());
        e[24..28].copy_from_slice(&flags.to_le_bytes());
        m[offset..offset + data.len()].copy_from_slice(data);
        offset += data.len().next_multiple_of(8);
    }
    m
}
