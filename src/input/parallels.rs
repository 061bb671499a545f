//! Parallels (`.hds`, Parallels Desktop, Virtuozzo; `parallels` in qemu-img): a header, one
//! block allocation table (BAT), then clusters. All fields are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 16 | magic `WithoutFreeSpace` (old) or `WithouFreSpacExt` (current) |
//! | 16 | 4 | version (2) |
//! | 20 | 4 | heads (geometry, unused) |
//! | 24 | 4 | cylinders (geometry, unused) |
//! | 28 | 4 | `tracks`: sectors per cluster (the cluster size in 512-byte sectors) |
//! | 32 | 4 | `bat_entries`: entries of the BAT |
//! | 36 | 8 | `nb_sectors`: the virtual size in sectors (only the low 32 bits with the old magic) |
//! | 44 | 4 | `inuse`: `0x746F6E59` while an image is open for writing (not closed cleanly) |
//! | 48 | 4 | `data_off`: first sector of the data area (0: right after the BAT; not needed to read) |
//! | 52 | 4 | flags |
//! | 56 | 8 | `ext_off`: sector of the format extension (dirty bitmaps), or 0 |
//! | 64 | 4 × `bat_entries` | the BAT |
//!
//! A BAT entry is 0 for a cluster that reads as zeros; otherwise the cluster's place in the
//! file, counted in sectors with the old magic and in clusters with the new one (qemu's
//! `off_multiplier`). Clusters past the end of the BAT read as zeros, as in qemu.
//!
//! The checks are qemu's (`block/parallels.c`: version 2, `tracks` neither 0 nor above
//! `INT32_MAX / 513`, `bat_entries` at most `INT_MAX / 4`, a valid format extension magic),
//! plus imgpack's for hostile and truncated files: the virtual size is checked against the limit
//! before the BAT is read, the BAT must lie wholly inside the file (a truncated upload is refused,
//! where qemu reads zeros for what is missing), and every cluster a BAT entry maps must lie after
//! the BAT and, as far as the virtual disk reaches into it, inside the file. Unlike qemu, the
//! format extension's MD5 checksum and feature list are not checked: they describe dirty
//! bitmaps only, so an image qemu refuses for them is read with the same bytes here. A dirty image
//! (`inuse`) is read as it is, like `qemu-img convert` reads it, and reported as dirty.
//! The format extension only holds dirty bitmaps, which do not change the disk's bytes.

use serde_json::{json, Map};

use super::blockmap::{check_table_size, check_virtual_size, read_bytes, BlockTable, UNMAPPED};
use super::bytes::{le32, le64};
use crate::error::{Error, Result};
use crate::read_at::ReadAt;

/// The header's length; the BAT follows it.
const HEADER_LEN: u64 = 64;
const SECTOR: u64 = 512;
/// The magic of images whose BAT entries count sectors.
pub const MAGIC_SECTORS: &[u8; 16] = b"WithoutFreeSpace";
/// The magic of images whose BAT entries count clusters (current Parallels, Virtuozzo, qemu).
pub const MAGIC_CLUSTERS: &[u8; 16] = b"WithouFreSpacExt";
const VERSION: u32 = 2;
const INUSE_MAGIC: u32 = 0x746F_6E59;
const EXTENSION_MAGIC: u64 = 0xAB23_4CEF_23DC_EA87;
/// qemu's cap on `tracks` (`INT32_MAX / 513`).
const MAX_TRACKS: u32 = i32::MAX as u32 / 513;
/// qemu's cap on `bat_entries` (`INT_MAX / sizeof(uint32_t)`).
const MAX_BAT_ENTRIES: u32 = i32::MAX as u32 / 4;

/// Opens a Parallels image.
pub fn open(file: Box<dyn ReadAt>, max_virtual_size: u64) -> Result<BlockTable> {
    if file.size() < HEADER_LEN {
        return Err(Error::corrupt(
            0,
            format!(
                "Parallels header is truncated: the file holds {} of its {HEADER_LEN} bytes",
                file.size()
            ),
        ));
    }
    let h = read_bytes(file.as_ref(), 0, HEADER_LEN, "the Parallels header")?;
    let counts_clusters = match &h[..16] {
        m if m == MAGIC_CLUSTERS => true,
        m if m == MAGIC_SECTORS => false,
        _ => return Err(Error::corrupt(0, "no Parallels signature")),
    };
    let version = le32(&h, 16);
    if version != VERSION {
        return Err(
            Error::unsupported(format!("Parallels version {version} is not supported (only 2)")).at(16),
        );
    }
    let tracks = le32(&h, 28);
    if tracks == 0 || tracks > MAX_TRACKS {
        return Err(Error::corrupt(
            28,
            format!("Parallels cluster of {tracks} sectors (1..={MAX_TRACKS} allowed)"),
        ));
    }
    let cluster_size = u64::from(tracks) * SECTOR;
    let bat_entries = le32(&h, 32);
    if bat_entries > MAX_BAT_ENTRIES {
        return Err(Error::corrupt(
            32,
            format!("Parallels BAT of {bat_entries} entries is larger than qemu allows"),
        ));
    }
    let nb_sectors = if counts_clusters {
        le64(&h, 36)
    } else {
        // The old format's size field is 32 bits wide; qemu ignores the upper half.
        u64::from(le32(&h, 36))
    };
    let virtual_size = nb_sectors.checked_mul(SECTOR).ok_or_else(|| {
        Error::corrupt(
            36,
            format!("Parallels virtual size of {nb_sectors} sectors overflows"),
        )
    })?;
    check_virtual_size(virtual_size, max_virtual_size)?;

    let bat_bytes = u64::from(bat_entries) * 4;
    check_table_size(bat_bytes, HEADER_LEN, "the Parallels BAT")?;
    let bat = read_bytes(file.as_ref(), HEADER_LEN, bat_bytes, "the Parallels BAT")?;
    // Where the data area starts (`data_off`) does not matter for reading: qemu reads every
    // cluster where the BAT says, and falls back to the end of the BAT when `data_off` is 0 or
    // out of range. A cluster mapped into the header or the BAT is refused instead.
    let bat_end = HEADER_LEN + bat_bytes;
    let extension = le64(&h, 56);
    if extension != 0 {
        check_extension(file.as_ref(), extension)?;
    }

    let multiplier = if counts_clusters { cluster_size } else { SECTOR };
    let needed = virtual_size.div_ceil(cluster_size);
    let mut blocks = Vec::with_capacity(needed.min(u64::from(bat_entries)) as usize);
    for (index, entry) in bat.chunks_exact(4).take(needed as usize).enumerate() {
        let blocks_at = match le32(entry, 0) {
            0 => UNMAPPED,
            place => {
                let host = u64::from(place) * multiplier;
                if host < bat_end {
                    return Err(Error::corrupt(
                        HEADER_LEN + index as u64 * 4,
                        format!(
                            "Parallels cluster {index} is mapped at offset {host}, inside the header or the BAT (which end at {bat_end})"
                        ),
                    ));
                }
                host
            }
        };
        blocks.push(blocks_at);
    }
    // Clusters the BAT does not reach read as zeros, as in qemu: the table stops where the BAT
    // does (a tiny header may claim a huge disk; its tail costs no memory).

    let mut details = Map::new();
    let subformat = if counts_clusters {
        "WithouFreSpacExt"
    } else {
        "WithoutFreeSpace"
    };
    details.insert("parallels_subformat".into(), json!(subformat));
    details.insert("cluster_size".into(), json!(cluster_size));
    details.insert("dirty".into(), json!(le32(&h, 44) == INUSE_MAGIC));
    let table = BlockTable {
        format: "parallels",
        file,
        virtual_size,
        block_size: cluster_size,
        blocks,
        details,
    };
    table.check_blocks("the Parallels BAT", |i| HEADER_LEN + i as u64 * 4)?;
    Ok(table)
}

/// Checks the format extension's magic at sector `sector`, as qemu does before reading it.
fn check_extension(file: &dyn ReadAt, sector: u64) -> Result<()> {
    let offset = sector.checked_mul(SECTOR).ok_or_else(|| {
        Error::corrupt(
            56,
            format!("Parallels format extension at sector {sector} overflows"),
        )
    })?;
    let magic = read_bytes(file, offset, 8, "the Parallels format extension").map_err(|e| e.at(56))?;
    let magic = le64(&magic, 0);
    if magic != EXTENSION_MAGIC {
        return Err(Error::corrupt(
            offset,
            format!("Parallels format extension has the wrong magic {magic:#018x}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::input::DiskSource;

    /// A 3-cluster disk of 1 KiB clusters (2 sectors), cluster 1 unallocated, as the new
    /// format stores it: header, BAT, data from sector 1.
    fn image(magic: &[u8; 16], bat: [u32; 3]) -> Vec<u8> {
        let mut f = vec![0u8; 512];
        f[..16].copy_from_slice(magic);
        f[16..20].copy_from_slice(&2u32.to_le_bytes());
        f[28..32].copy_from_slice(&2u32.to_le_bytes());
        f[32..36].copy_from_slice(&3u32.to_le_bytes());
        f[36..44].copy_from_slice(&6u64.to_le_bytes());
        f[48..52].copy_from_slice(&2u32.to_le_bytes());
        for (i, entry) in bat.iter().enumerate() {
            f[64 + 4 * i..68 + 4 * i].copy_from_slice(&entry.to_le_bytes());
        }
        f.resize(1024, 0);
        f.extend(std::iter::repeat_n(b'a', 1024));
        f.extend(std::iter::repeat_n(b'c', 1024));
        f
    }

    #[test]
    fn reads_both_signatures() {
        let new = open(Box::new(image(MAGIC_CLUSTERS, [1, 0, 2])), 1 << 30).unwrap();
        let old = open(Box::new(image(MAGIC_SECTORS, [2, 0, 4])), 1 << 30).unwrap();
        for table in [new, old] {
            let mut scratch = Vec::new();
            let bytes = table.read(0, 3072, &mut scratch).unwrap().to_vec();
            assert_eq!(&bytes[..1024], &[b'a'; 1024][..]);
            assert_eq!(&bytes[1024..2048], &[0; 1024][..]);
            assert_eq!(&bytes[2048..], &[b'c'; 1024][..]);
        }
    }

    #[test]
    fn a_cluster_past_the_end_or_into_the_bat_is_corrupt() {
        let err = open(Box::new(image(MAGIC_CLUSTERS, [1, 0, 3])), 1 << 30)
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert_eq!(err.offset(), Some(72));
        // A BAT of 200 entries ends at byte 864: sector 1 lies inside it.
        let mut into_bat = image(MAGIC_SECTORS, [1, 0, 2]);
        into_bat[32..36].copy_from_slice(&200u32.to_le_bytes());
        let err = open(Box::new(into_bat), 1 << 30).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert_eq!(err.offset(), Some(64));
        assert!(err.message().contains("inside the header or the BAT"), "{err}");
    }

    #[test]
    fn a_data_offset_qemu_would_ignore_does_not_matter() {
        for data_off in [0u32, 1, u32::MAX] {
            let mut f = image(MAGIC_CLUSTERS, [1, 0, 2]);
            f[48..52].copy_from_slice(&data_off.to_le_bytes());
            let table = open(Box::new(f), 1 << 30).unwrap();
            let mut scratch = Vec::new();
            assert_eq!(
                table.read(0, 1, &mut scratch).unwrap(),
                b"a",
                "data_off {data_off}"
            );
        }
    }

    #[test]
    fn a_tiny_header_claiming_a_huge_disk_costs_no_memory() {
        // 512-byte clusters, no BAT, 64 TiB: every cluster reads as zeros.
        let mut f = image(MAGIC_CLUSTERS, [0, 0, 0]);
        f[28..32].copy_from_slice(&1u32.to_le_bytes());
        f[32..36].copy_from_slice(&0u32.to_le_bytes());
        f[36..44].copy_from_slice(&(1u64 << 37).to_le_bytes());
        let table = open(Box::new(f), 1 << 50).unwrap();
        assert_eq!(table.virtual_size(), 1 << 46);
        assert_eq!(table.next_data(0).unwrap(), None);
        let mut scratch = Vec::new();
        assert!(table
            .read((1 << 46) - 512, 512, &mut scratch)
            .unwrap()
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn the_virtual_size_is_checked_before_the_bat_is_read() {
        let mut f = image(MAGIC_CLUSTERS, [1, 0, 2]);
        f[32..36].copy_from_slice(&MAX_BAT_ENTRIES.to_le_bytes());
        f[36..44].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let err = open(Box::new(f), 1 << 30).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
        assert!(err.message().contains("virtual size"), "{err}");
    }
}
