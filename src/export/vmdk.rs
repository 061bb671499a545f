//! VMDK output: a hosted sparse extent with its descriptor embedded, streamOptimized (one
//! pass, deflate grains with markers, streams to a pipe) or monolithicSparse (grain tables up
//! front, plain grains). Little-endian; offsets in 512-byte sectors; 64 KiB grains, 512
//! entries per grain table.
//!
//! | sector | streamOptimized | monolithicSparse |
//! |---|---|---|
//! | 0 | header, version 3, flags: newline test, compressed, markers; directory at "end" (`u64::MAX`) | header, version 1, flags: newline test, redundant tables |
//! | 1..21 | descriptor | descriptor |
//! | then | | redundant directory and tables, directory, tables (every table allocated; all-zero ones stay holes) |
//! | 128 (64 KiB) | grains in disk order: marker (sector u64, size u32) + zlib stream, padded to a sector; after the grains of each table, a table marker and the table | grains in disk order |
//! | end | directory marker and directory; footer marker and the header again with the directory's sector; end-of-stream marker | |
//!
//! A streamOptimized image lists only the tables that map data (a directory entry of 0 reads
//! as zeros), so a sparse disk costs what its data costs.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use super::allocation::Allocation;
use super::appender::Appender;
use super::compress::{compress, Codec};
use super::data::{walk_clusters, write_positional, Disk};
use super::unique::random_u64;
use crate::control::Control;
use crate::error::{Error, ErrorKind, Result};
use crate::read_at::ReadAt;

const SECTOR: u64 = 512;
const GRAIN: u64 = 64 << 10;
const GRAIN_SECTORS: u64 = GRAIN / SECTOR;
const TABLE_ENTRIES: u64 = 512;
const TABLE_SECTORS: u64 = TABLE_ENTRIES * 4 / SECTOR;
const DESCRIPTOR_AT: u64 = 1;
const DESCRIPTOR_SECTORS: u64 = 20;
const GD_AT_END: u64 = u64::MAX;
const FLAG_NEWLINE_TEST: u32 = 1;
const FLAG_REDUNDANT_TABLES: u32 = 1 << 1;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const MARKER_EOS: u32 = 0;
const MARKER_TABLE: u32 = 1;
const MARKER_DIRECTORY: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// The largest disk exported as VMDK: 2040 GiB keeps every sector offset of the file, tables
/// included, within the format's 32 bits (2 TiB).
pub const MAX_VIRTUAL_SIZE: u64 = 2040 << 30;

/// What the header describes.
struct Header {
    version: u32,
    flags: u32,
    capacity: u64,
    redundant_directory: u64,
    directory: u64,
    overhead: u64,
    compressed: bool,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..4].copy_from_slice(b"KDMV");
        h[4..8].copy_from_slice(&self.version.to_le_bytes());
        h[8..12].copy_from_slice(&self.flags.to_le_bytes());
        h[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
        h[28..36].copy_from_slice(&DESCRIPTOR_AT.to_le_bytes());
        h[36..44].copy_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
        h[44..48].copy_from_slice(&(TABLE_ENTRIES as u32).to_le_bytes());
        h[48..56].copy_from_slice(&self.redundant_directory.to_le_bytes());
        h[56..64].copy_from_slice(&self.directory.to_le_bytes());
        h[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        h[73..77].copy_from_slice(b"\n \r\n");
        h[77..79].copy_from_slice(&u16::from(self.compressed).to_le_bytes());
        h
    }
}

/// The embedded descriptor, padded to its sectors.
fn descriptor(create_type: &str, capacity: u64) -> Vec<u8> {
    let cylinders = (capacity / (16 * 63)).min(65535);
    let text = format!(
        "# Disk DescriptorFile\nversion=1\nCID={:08x}\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n\n\
         # Extent description\nRW {capacity} SPARSE \"disk.vmdk\"\n\n\
         # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n",
        random_u64(0) as u32
    );
    let mut bytes = text.into_bytes();
    bytes.resize((DESCRIPTOR_SECTORS * SECTOR) as usize, 0);
    bytes
}

fn sector_u32(offset: u64) -> Result<u32> {
    u32::try_from(offset / SECTOR).map_err(|_| {
        Error::new(
            ErrorKind::LimitExceeded,
            "the VMDK passes 2 TiB, where its 32-bit sector offsets end",
        )
    })
}

/// A metadata marker sector.
fn marker(sectors: u64, kind: u32) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR as usize];
    m[0..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn table_bytes(entries: &[u32]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// Writes the disk as a streamOptimized VMDK of `size` bytes to `out`, in one pass; returns
/// the bytes written.
pub fn write_stream<R: ReadAt, W: Write + Send>(
    disk: &Disk<R>,
    out: W,
    size: u64,
    control: &Control,
) -> Result<u64> {
    let capacity = size / SECTOR;
    let mut header = Header {
        version: 3,
        flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity,
        redundant_directory: 0,
        directory: GD_AT_END,
        overhead: GRAIN_SECTORS,
        compressed: true,
    };
    let mut out = Appender::new(out, 0);
    out.write(&header.encode())?;
    out.write(&descriptor("streamOptimized", capacity))?;
    out.align(GRAIN)?;
    let tables = size.div_ceil(GRAIN).div_ceil(TABLE_ENTRIES);
    let mut directory = vec![0u32; tables as usize];
    let mut table: Option<(u64, Vec<u32>)> = None;
    let flush = |out: &mut Appender<W>, directory: &mut [u32], (index, entries): (u64, Vec<u32>)| {
        out.write(&marker(TABLE_SECTORS, MARKER_TABLE))?;
        directory[index as usize] = sector_u32(out.position())?;
        out.write(&table_bytes(&entries))
    };
    walk_clusters(
        disk,
        GRAIN,
        control,
        |_, bytes| {
            let mut grain = bytes.to_vec(); // qemu inflates exactly one grain
            grain.resize(GRAIN as usize, 0);
            compress(Codec::Zlib, &grain, 2 * GRAIN as usize)?
                .map(Some)
                .ok_or_else(|| Error::new(ErrorKind::Io, "a grain did not deflate to under two grains"))
        },
        |grain, deflated| {
            let index = grain / TABLE_ENTRIES;
            if table.as_ref().is_some_and(|(t, _)| *t != index) {
                flush(&mut out, &mut directory, table.take().expect("checked above"))?;
            }
            let (_, entries) = table.get_or_insert_with(|| (index, vec![0; TABLE_ENTRIES as usize]));
            entries[(grain % TABLE_ENTRIES) as usize] = sector_u32(out.position())?;
            let mut grain_marker = (grain * GRAIN_SECTORS).to_le_bytes().to_vec();
            grain_marker.extend_from_slice(&(deflated.len() as u32).to_le_bytes());
            out.write(&grain_marker)?;
            out.write(&deflated)?;
            out.align(SECTOR)
        },
    )?;
    if let Some(last) = table.take() {
        flush(&mut out, &mut directory, last)?;
    }
    let directory_sectors = (tables * 4).div_ceil(SECTOR);
    out.write(&marker(directory_sectors, MARKER_DIRECTORY))?;
    header.directory = out.position() / SECTOR;
    out.write(&table_bytes(&directory))?;
    out.align(SECTOR)?;
    out.write(&marker(1, MARKER_FOOTER))?;
    out.write(&header.encode())?;
    out.write(&marker(0, MARKER_EOS))?;
    let written = out.position();
    out.finish()?;
    Ok(written)
}

/// Writes the disk as a monolithicSparse VMDK of `size` bytes into a fresh `file`.
pub fn write_monolithic<R: ReadAt>(disk: &Disk<R>, file: &File, size: u64, control: &Control) -> Result<()> {
    let capacity = size / SECTOR;
    let allocation = Allocation::of_archive(disk.reader, GRAIN);
    let tables = allocation.blocks().div_ceil(TABLE_ENTRIES);
    let directory_sectors = (tables * 4).div_ceil(SECTOR);
    let redundant_at = DESCRIPTOR_AT + DESCRIPTOR_SECTORS;
    let directory_at = redundant_at + directory_sectors + tables * TABLE_SECTORS;
    let overhead =
        (directory_at + directory_sectors + tables * TABLE_SECTORS).next_multiple_of(GRAIN_SECTORS);
    let data_at = overhead * SECTOR;
    let end = data_at + allocation.allocated() * GRAIN;
    sector_u32(end)?;
    let header = Header {
        version: 1,
        flags: FLAG_NEWLINE_TEST | FLAG_REDUNDANT_TABLES,
        capacity,
        redundant_directory: redundant_at,
        directory: directory_at,
        overhead,
        compressed: false,
    };
    let put = |bytes: &[u8], sector: u64| {
        file.write_all_at(bytes, sector * SECTOR)
            .map_err(|e| Error::io("writing the VMDK metadata", e).at(sector * SECTOR))
    };
    file.set_len(end).map_err(|e| Error::io("sizing the output", e))?;
    put(&header.encode(), 0)?;
    put(&descriptor("monolithicSparse", capacity), DESCRIPTOR_AT)?;
    for directory in [redundant_at, directory_at] {
        let first_table = directory + directory_sectors;
        let entries: Vec<u32> = (0..tables)
            .map(|t| (first_table + t * TABLE_SECTORS) as u32)
            .collect();
        put(&table_bytes(&entries), directory)?;
    }
    let mut entries = vec![0u32; TABLE_ENTRIES as usize];
    let mut current: Option<u64> = None;
    let write_table = |index: u64, entries: &mut Vec<u32>| -> Result<()> {
        for directory in [redundant_at, directory_at] {
            put(
                &table_bytes(entries),
                directory + directory_sectors + index * TABLE_SECTORS,
            )?;
        }
        entries.fill(0);
        Ok(())
    };
    for (grain, ordinal) in allocation.ordinals(0, allocation.blocks()) {
        let index = grain / TABLE_ENTRIES;
        if let Some(previous) = current.filter(|&t| t != index) {
            write_table(previous, &mut entries)?;
        }
        current = Some(index);
        entries[(grain % TABLE_ENTRIES) as usize] = (overhead + ordinal * GRAIN_SECTORS) as u32;
    }
    if let Some(last) = current {
        write_table(last, &mut entries)?;
    }
    control.check()?;
    write_positional(
        disk,
        file,
        GRAIN,
        &|grain| allocation.ordinal(grain).map(|o| data_at + o * GRAIN),
        control,
    )
}
