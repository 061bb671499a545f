//! VMDK (VMware): hosted sparse extents, plain (`monolithicSparse`) or deflate-compressed with
//! markers (`streamOptimized`, the disk of an OVA export). All header fields are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `KDMV` |
//! | 4 | 4 | version (1..=3) |
//! | 8 | 4 | flags: bit 1 redundant grain table, bit 2 zeroed-grain entries, bit 16 compressed grains, bit 17 markers |
//! | 12 | 8 | capacity in sectors |
//! | 20 | 8 | grain size in sectors |
//! | 28 | 8 | embedded descriptor offset (sectors) |
//! | 36 | 8 | embedded descriptor size (sectors) |
//! | 44 | 4 | grain table entries per grain table (at most 512) |
//! | 48 | 8 | redundant grain directory offset (ignored) |
//! | 56 | 8 | grain directory offset (sectors), or `u64::MAX`: read the footer |
//! | 64 | 8 | overhead: sectors before the first grain |
//! | 77 | 2 | compression algorithm: 0 none, 1 deflate |
//!
//! The grain directory holds one u32 per grain table (its sector, or 0: all grains of the table
//! unallocated); a grain table holds one u32 per grain (its sector; 0 unallocated, 1 a zeroed
//! grain when flag bit 2 is set). Unallocated and zeroed grains read as zeros.
//!
//! A streamOptimized image writes its header with the directory offset `u64::MAX` and repeats
//! the header at the end, between a footer marker and the end-of-stream marker: the last three
//! sectors of the file. Each of its grains starts with a marker: u64 virtual sector, u32
//! compressed size, then a zlib stream that inflates to at most one grain.
//!
//! The embedded descriptor must describe exactly this file: one `SPARSE` extent of the header's
//! capacity, no parent. Anything that names another file (flat or split extents, several
//! extents, `parentFileNameHint`, a bare descriptor file, a header with capacity 0 that defers to
//! its descriptor) is refused: reading it is how CVE-2022-47951 leaked host files.

pub mod descriptor;

use std::cell::RefCell;
use std::collections::HashMap;

use flate2::{Decompress, FlushDecompress, Status};
use serde_json::{json, Map, Value};

use super::blockmap::{check_inside, check_table_size, check_virtual_size, read_bytes};
use super::bytes::{le16, le32, le64};
use super::DiskSource;
use crate::error::{Error, ErrorKind, Result};
use crate::read_at::ReadAt;
use descriptor::{parse_descriptor, Descriptor};

const SECTOR: u64 = 512;
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
const FLAG_MARKERS: u32 = 1 << 17;
const GD_AT_END: u64 = u64::MAX;
/// Largest grain accepted (VMware and qemu write 64 KiB; qemu accepts up to 1 GiB).
pub const MAX_GRAIN: u64 = 16 << 20;
/// Largest embedded descriptor read.
const MAX_DESCRIPTOR: u64 = 1 << 20;
/// Largest grain directory (qemu's own limit on its entries).
const MAX_DIRECTORY_ENTRIES: u64 = 32 << 20;
const MARKER_LEN: u64 = 12;
const NO_TABLE: u32 = u32::MAX;

/// A monolithicSparse or streamOptimized VMDK.
pub struct VmdkSource {
    file: Box<dyn ReadAt>,
    virtual_size: u64,
    grain_size: u64,
    grains_per_table: u64,
    /// For each directory entry: an index into `tables`, or `NO_TABLE`.
    directory: Vec<u32>,
    /// The distinct grain tables.
    tables: Vec<Box<[u32]>>,
    /// Whether each table maps any grain, so that walks skip empty tables in one step (a
    /// hostile directory may point millions of entries at one table).
    table_has_data: Vec<bool>,
    compressed: bool,
    markers: bool,
    zero_grains: bool,
    details: Map<String, Value>,
}

/// Where a grain's bytes are.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Grain {
    Zero,
    At(u64),
}

/// Opens a VMDK image.
pub fn open(file: Box<dyn ReadAt>, max_virtual_size: u64) -> Result<VmdkSource> {
    let head = read_bytes(file.as_ref(), 0, SECTOR.min(file.size()), "the VMDK header")?;
    if head.starts_with(b"COWD") {
        return Err(Error::unsupported(
            "VMDK version 3 (COWD) sparse extents are not supported",
        ));
    }
    if !head.starts_with(b"KDMV") {
        return Err(Error::unsupported(
            "a VMDK descriptor file is refused: its extents are other files (upload a \
             monolithicSparse or streamOptimized VMDK instead)",
        ));
    }
    if head.len() < SECTOR as usize {
        return Err(Error::corrupt(0, "VMDK header is truncated"));
    }
    let mut header = head;
    if le64(&header, 56) == GD_AT_END {
        header = read_footer(file.as_ref())?;
    }
    let h = &header;
    let version = le32(h, 4);
    if version > 3 {
        return Err(Error::unsupported(format!("VMDK version {version} is not supported")).at(4));
    }
    let flags = le32(h, 8);
    let capacity = le64(h, 12);
    let grain_sectors = le64(h, 20);
    let grains_per_table = u64::from(le32(h, 44));
    let directory_sector = le64(h, 56);
    let compressed = match le16(h, 77) {
        0 => false,
        1 => true,
        other => {
            return Err(
                Error::unsupported(format!("VMDK compression algorithm {other} is not supported")).at(77),
            )
        }
    };
    let virtual_size = capacity
        .checked_mul(SECTOR)
        .ok_or_else(|| Error::corrupt(12, format!("VMDK capacity of {capacity} sectors overflows")))?;
    check_virtual_size(virtual_size, max_virtual_size)?;
    let descriptor = read_descriptor(file.as_ref(), h)?;
    if capacity == 0 && descriptor.is_some() {
        return Err(Error::unsupported(
            "VMDK header of capacity 0 defers to its descriptor's extents, which are other files",
        ));
    }
    if let Some(d) = &descriptor {
        if d.sectors != capacity {
            return Err(Error::corrupt(
                le64(h, 28) * SECTOR,
                format!(
                    "VMDK descriptor's extent has {} sectors but the header's capacity is {capacity}",
                    d.sectors
                ),
            ));
        }
    }
    if grains_per_table == 0 || grains_per_table > 512 {
        return Err(Error::corrupt(
            44,
            format!("VMDK grain table of {grains_per_table} entries (1..=512 allowed)"),
        ));
    }
    let grain_size = grain_sectors.saturating_mul(SECTOR);
    if grain_sectors == 0 || grain_size > MAX_GRAIN {
        return Err(Error::corrupt(
            20,
            format!(
                "VMDK grain of {grain_sectors} sectors (1 sector to {} MiB allowed)",
                MAX_GRAIN >> 20
            ),
        ));
    }
    let table_span = grains_per_table * grain_size;
    let directory_entries = virtual_size.div_ceil(table_span);
    if directory_entries > MAX_DIRECTORY_ENTRIES {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!("VMDK grain directory of {directory_entries} entries is too large"),
        ));
    }
    let directory_offset = directory_sector
        .checked_mul(SECTOR)
        .ok_or_else(|| Error::corrupt(56, "VMDK grain directory offset overflows"))?;
    let raw_directory = read_bytes(
        file.as_ref(),
        directory_offset,
        directory_entries * 4,
        "the VMDK grain directory",
    )?;
    let table_bytes = grains_per_table * 4;
    let mut seen: HashMap<u32, u32> = HashMap::new();
    let mut tables: Vec<Box<[u32]>> = Vec::new();
    let mut directory = Vec::with_capacity(directory_entries as usize);
    for (index, entry) in raw_directory.chunks_exact(4).enumerate() {
        let sector = le32(entry, 0);
        if sector == 0 {
            directory.push(NO_TABLE);
            continue;
        }
        if let Some(&t) = seen.get(&sector) {
            directory.push(t);
            continue;
        }
        check_table_size(
            (tables.len() as u64 + 1) * table_bytes,
            directory_offset,
            "the VMDK grain tables",
        )?;
        let offset = u64::from(sector) * SECTOR;
        let raw = read_bytes(file.as_ref(), offset, table_bytes, "a VMDK grain table")
            .map_err(|e| e.at(directory_offset + index as u64 * 4))?;
        let table: Box<[u32]> = raw.chunks_exact(4).map(|e| le32(e, 0)).collect();
        let t = tables.len() as u32;
        tables.push(table);
        seen.insert(sector, t);
        directory.push(t);
    }
    // After the tables, so that a file cut inside them is refused naming the table.
    if le64(h, 64).saturating_mul(SECTOR) > file.size() {
        return Err(Error::corrupt(
            64,
            "VMDK file is truncated before its first grain",
        ));
    }
    let mut details = Map::new();
    let subformat = if compressed {
        "streamOptimized"
    } else {
        "monolithicSparse"
    };
    details.insert("vmdk_subformat".into(), json!(subformat));
    details.insert("cluster_size".into(), json!(grain_size));
    if let Some(d) = descriptor {
        details.insert("vmdk_create_type".into(), json!(d.create_type));
    }
    let zero_grains = flags & FLAG_ZERO_GRAIN != 0;
    let table_has_data = tables
        .iter()
        .map(|t| t.iter().any(|&e| e != 0 && !(zero_grains && e == 1)))
        .collect();
    let source = VmdkSource {
        file,
        virtual_size,
        grain_size,
        grains_per_table,
        directory,
        tables,
        table_has_data,
        compressed,
        markers: flags & FLAG_MARKERS != 0,
        zero_grains,
        details,
    };
    source.check_grains()?;
    Ok(source)
}

/// The header repeated at the end of a streamOptimized image, checked like qemu does.
fn read_footer(file: &dyn ReadAt) -> Result<Vec<u8>> {
    let size = file.size();
    let start = size
        .checked_sub(3 * SECTOR)
        .ok_or_else(|| Error::corrupt(0, "streamOptimized VMDK too short for its footer"))?;
    let tail = read_bytes(file, start, 3 * SECTOR, "the VMDK footer")?;
    let (marker, rest) = tail.split_at(SECTOR as usize);
    let (header, end) = rest.split_at(SECTOR as usize);
    let valid = le32(marker, 8) == 0
        && le32(marker, 12) == 3
        && header.starts_with(b"KDMV")
        && le64(end, 0) == 0
        && le32(end, 8) == 0
        && le32(end, 12) == 0;
    if !valid {
        return Err(Error::corrupt(start, "streamOptimized VMDK has no valid footer"));
    }
    if le64(header, 56) == GD_AT_END {
        return Err(Error::corrupt(
            start + SECTOR + 56,
            "VMDK footer does not locate the grain directory",
        ));
    }
    Ok(header.to_vec())
}

fn read_descriptor(file: &dyn ReadAt, h: &[u8]) -> Result<Option<Descriptor>> {
    let (sector, sectors) = (le64(h, 28), le64(h, 36));
    if sector == 0 || sectors == 0 {
        return Ok(None);
    }
    let offset = sector
        .checked_mul(SECTOR)
        .ok_or_else(|| Error::corrupt(28, "VMDK descriptor offset overflows"))?;
    let len = sectors.saturating_mul(SECTOR);
    if len > MAX_DESCRIPTOR {
        return Err(Error::corrupt(
            36,
            format!("VMDK descriptor of {sectors} sectors is too large"),
        ));
    }
    let bytes = read_bytes(file, offset, len, "the VMDK descriptor")?;
    let text = &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())];
    parse_descriptor(&String::from_utf8_lossy(text))
        .map(Some)
        .map_err(|e| e.at(offset))
}

thread_local! {
    /// Each worker's inflater and compressed-grain buffer.
    static INFLATE: RefCell<(Decompress, Vec<u8>)> = RefCell::new((Decompress::new(true), Vec::new()));
}

impl VmdkSource {
    fn grain(&self, index: u64) -> Grain {
        let table = self
            .directory
            .get((index / self.grains_per_table) as usize)
            .copied()
            .unwrap_or(NO_TABLE);
        if table == NO_TABLE {
            return Grain::Zero;
        }
        match self.tables[table as usize][(index % self.grains_per_table) as usize] {
            0 => Grain::Zero,
            1 if self.zero_grains => Grain::Zero,
            sector => Grain::At(u64::from(sector) * SECTOR),
        }
    }

    /// Every stored grain must start (compressed) or lie (plain) inside the file. Each distinct
    /// table is checked once: in full when a directory entry before the last uses it, and
    /// for the last entry only as far as the disk goes.
    fn check_grains(&self) -> Result<()> {
        let last = self.directory.len().saturating_sub(1);
        let mut full = vec![false; self.tables.len()];
        for &t in self.directory.iter().take(last) {
            if t != NO_TABLE {
                full[t as usize] = true;
            }
        }
        let grains = self.virtual_size.div_ceil(self.grain_size);
        let first_of_last = last as u64 * self.grains_per_table;
        for (t, table) in self.tables.iter().enumerate() {
            let uses_last = self.directory.get(last) == Some(&(t as u32));
            for (i, &entry) in table.iter().enumerate() {
                let index = first_of_last + i as u64;
                let len = if full[t] {
                    self.grain_size
                } else if uses_last && index < grains {
                    self.grain_size.min(self.virtual_size - index * self.grain_size)
                } else {
                    continue;
                };
                if entry == 0 || (entry == 1 && self.zero_grains) {
                    continue;
                }
                let at = u64::from(entry) * SECTOR;
                let len = if self.compressed { MARKER_LEN } else { len };
                check_inside(
                    self.file.size(),
                    at,
                    len,
                    &format!("VMDK grain {i} of a grain table"),
                )?;
            }
        }
        Ok(())
    }

    /// Inflates the compressed grain at `at` into `out` (at most one grain), returning the bytes
    /// it produced.
    fn inflate(&self, at: u64, grain: u64, out: &mut [u8]) -> Result<usize> {
        INFLATE.with(|cell| {
            let (inflater, input) = &mut *cell.borrow_mut();
            let data_at;
            let len;
            if self.markers {
                let mut marker = [0u8; MARKER_LEN as usize];
                self.file
                    .read_exact_at(&mut marker, at)
                    .map_err(|e| Error::io("reading a VMDK grain marker", e).at(at))?;
                len = u64::from(le32(&marker, 8));
                data_at = at + MARKER_LEN;
                if len == 0 || len > 2 * self.grain_size {
                    return Err(Error::corrupt(
                        at + 8,
                        format!("VMDK compressed grain of {len} bytes"),
                    ));
                }
                check_inside(self.file.size(), data_at, len, "a VMDK compressed grain")?;
            } else {
                data_at = at;
                len = (2 * self.grain_size).min(self.file.size() - at);
            }
            input.resize(len as usize, 0);
            self.file
                .read_exact_at(input, data_at)
                .map_err(|e| Error::io("reading a VMDK grain", e).at(data_at))?;
            inflater.reset(true);
            let status = inflater.decompress(input, out, FlushDecompress::Finish);
            match status {
                Ok(Status::StreamEnd) => Ok(inflater.total_out() as usize),
                Ok(_) => Err(Error::corrupt(
                    at,
                    format!("VMDK compressed grain {grain} does not inflate to at most one grain"),
                )),
                Err(e) => Err(Error::corrupt(
                    at,
                    format!("VMDK compressed grain {grain} is damaged: {e}"),
                )),
            }
        })
    }
}

impl DiskSource for VmdkSource {
    fn format(&self) -> &'static str {
        "vmdk"
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn next_data(&self, from: u64) -> Result<Option<u64>> {
        let grains = self.virtual_size.div_ceil(self.grain_size);
        let mut index = from / self.grain_size;
        while index < grains {
            let d = (index / self.grains_per_table) as usize;
            let t = self.directory[d];
            if t == NO_TABLE || !self.table_has_data[t as usize] {
                index = (d as u64 + 1) * self.grains_per_table;
                continue;
            }
            if self.grain(index) != Grain::Zero {
                return Ok(Some((index * self.grain_size).max(from)));
            }
            index += 1;
        }
        Ok(None)
    }

    fn read<'a>(&'a self, offset: u64, len: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        scratch.resize(len, 0);
        let mut done = 0usize;
        while done < len {
            let position = offset + done as u64;
            let index = position / self.grain_size;
            let within = position % self.grain_size;
            let piece = ((self.grain_size - within) as usize).min(len - done);
            match self.grain(index) {
                Grain::Zero => scratch[done..done + piece].fill(0),
                Grain::At(at) if !self.compressed => {
                    // Consecutive grains stored back to back are read in one go.
                    let mut run = piece;
                    let mut k = 1;
                    while done + run < len && self.grain(index + k) == Grain::At(at + k * self.grain_size) {
                        run += (self.grain_size as usize).min(len - done - run);
                        k += 1;
                    }
                    let out = &mut scratch[done..done + run];
                    self.file
                        .read_exact_at(out, at + within)
                        .map_err(|e| Error::io("reading the input", e).at(at + within))?;
                    done += run;
                    continue;
                }
                Grain::At(at) => {
                    let needed = within as usize + piece;
                    if within == 0 && piece as u64 == self.grain_size {
                        let n = self.inflate(at, index, &mut scratch[done..done + piece])?;
                        if n < piece {
                            return Err(short_grain(at, index));
                        }
                    } else {
                        let mut grain = vec![0u8; self.grain_size as usize];
                        let n = self.inflate(at, index, &mut grain)?;
                        if n < needed {
                            return Err(short_grain(at, index));
                        }
                        scratch[done..done + piece].copy_from_slice(&grain[within as usize..needed]);
                    }
                }
            }
            done += piece;
        }
        Ok(scratch)
    }

    fn details(&self) -> Map<String, Value> {
        self.details.clone()
    }
}

fn short_grain(at: u64, index: u64) -> Error {
    Error::corrupt(
        at,
        format!("VMDK compressed grain {index} inflates to less than the disk needs"),
    )
}
