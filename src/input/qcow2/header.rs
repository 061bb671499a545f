//! The qcow2 header and the checks QEMU makes on open (the extensions are read in
//! `extensions.rs`).
//!
//! All numbers are big-endian. The header sits at the start of the first cluster:
//!
//! | bytes   | field                     | notes                                            |
//! |---------|---------------------------|--------------------------------------------------|
//! | 0..4    | magic                     | `QFI\xfb`                                        |
//! | 4..8    | version                   | 2 or 3                                           |
//! | 8..16   | backing_file_offset       | non-zero: a backing file (refused)               |
//! | 16..20  | backing_file_size         | at most 1023                                     |
//! | 20..24  | cluster_bits              | 9..=21 (512 B .. 2 MiB)                          |
//! | 24..32  | size                      | virtual disk size                                |
//! | 32..36  | crypt_method              | 0 none, 1 AES, 2 LUKS (both refused)             |
//! | 36..40  | l1_size                   | entries of the active L1 table                   |
//! | 40..48  | l1_table_offset           | cluster aligned                                  |
//! | 48..56  | refcount_table_offset     | cluster aligned                                  |
//! | 56..60  | refcount_table_clusters   | at least 1, at most 8 MiB of table               |
//! | 60..64  | nb_snapshots              | at most 65536                                    |
//! | 64..72  | snapshots_offset          | cluster aligned                                  |
//! | 72..80  | incompatible_features     | v3: 0 dirty, 1 corrupt, 2 data file, 3 compression type, 4 extended L2 |
//! | 80..88  | compatible_features       | v3: 0 lazy refcounts                             |
//! | 88..96  | autoclear_features        | v3: 0 bitmaps, 1 raw data file                   |
//! | 96..100 | refcount_order            | v3: at most 6                                    |
//! | 100..104| header_length             | v3: at least 104; v2 header is 72 bytes          |
//! | 104     | compression_type          | if header_length > 104: 0 zlib, 1 zstd           |
//!
//! Header extensions follow the header up to the end of the first cluster, each as
//! `u32 type, u32 length, data padded to 8 bytes`; type 0 ends the list, unknown types are
//! skipped. [`Header::parse`] only reads the fields; [`Header::validate`] makes every check and
//! returns the [`Layout`] the reader works from, or the reason the image is refused.

use super::extensions::Extensions;
use crate::error::{Error, ErrorKind, Result};
use crate::input::bytes::{be16, be32, be64};
use crate::read_at::ReadAt;

/// QCOW magic, `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// QEMU's cap on the active L1 table (QCOW_MAX_L1_SIZE).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's cap on the refcount table (QCOW_MAX_REFTABLE_SIZE).
pub const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// QEMU's cap on the number of snapshots (QCOW_MAX_SNAPSHOTS).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// QEMU's cap on the snapshot table's size (QCOW_MAX_SNAPSHOTS_SIZE).
pub const MAX_SNAPSHOT_TABLE_BYTES: u64 = 1024 * MAX_SNAPSHOTS as u64;
/// QEMU's cap on a snapshot entry's extra data (QCOW_MAX_SNAPSHOT_EXTRA_DATA).
pub const MAX_SNAPSHOT_EXTRA_DATA: u32 = 1024;
/// QEMU's cap on persistent bitmaps (QCOW2_MAX_BITMAPS).
pub const MAX_BITMAPS: u32 = 65535;
/// QEMU's cap on the bitmap directory (QCOW2_MAX_BITMAP_DIRECTORY_SIZE).
pub const MAX_BITMAP_DIRECTORY_BYTES: u64 = 1024 * MAX_BITMAPS as u64;

/// Incompatible feature bit: refcounts may be stale (readable as is).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit: QEMU found the image corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit: data lives in an external file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit: compression_type is not zlib.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit: 128-bit L2 entries with 32 subclusters.
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = (1 << 5) - 1;
/// Autoclear feature bit: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;

pub(super) const EXT_END: u32 = 0;
pub(super) const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub(super) const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
pub(super) const EXT_BITMAPS: u32 = 0x2385_2875;
pub(super) const EXT_CRYPTO: u32 = 0x0537_be77;
pub(super) const EXT_DATA_FILE: u32 = 0x4441_5441;

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (no zlib header), QEMU's default.
    Zlib,
    /// One or more zstd frames.
    Zstd,
}

impl Compression {
    /// The name QEMU uses (`"zlib"`, `"zstd"`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        }
    }
}

/// The header's fields, as stored (not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3 in a valid image.
    pub version: u32,
    /// Where the backing file's name is stored; 0 for none.
    pub backing_file_offset: u64,
    /// Length of the backing file's name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (0 for v2).
    pub incompatible_features: u64,
    /// Compatible feature bits (0 for v2).
    pub compatible_features: u64,
    /// Autoclear feature bits (0 for v2).
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (4 for v2).
    pub refcount_order: u32,
    /// Length of the header (72 for v2).
    pub header_length: u32,
    /// Raw compression_type byte (0 when absent).
    pub compression_type: u8,
}

/// A checked image: the numbers the reader works from.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The header it came from.
    pub header: Header,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Whether L2 entries are 128-bit with subclusters.
    pub extended_l2: bool,
    /// Entries per L2 table.
    pub l2_entries: u64,
    /// L1 entries that cover the virtual disk (the rest describe VM state).
    pub l1_needed: u64,
    /// Compression of compressed clusters.
    pub compression: Compression,
    /// The file's size.
    pub file_size: u64,
    /// Regions holding the image's own metadata: no L2 table or data may land there.
    pub metadata: Vec<(u64, u64, &'static str)>,
}

impl Layout {
    /// The name of the metadata region that `[start, start + len)` overlaps, if any.
    pub fn overlaps_metadata(&self, start: u64, len: u64) -> Option<&'static str> {
        let end = start.saturating_add(len);
        self.metadata
            .iter()
            .find(|&&(s, e, _)| start < e && s < end)
            .map(|&(_, _, name)| name)
    }
}

pub(super) fn read_error(what: &str, offset: u64, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::corrupt(offset, format!("the file ends inside the {what}"))
    } else {
        Error::io(format!("reading the qcow2 {what}"), e).at(offset)
    }
}

impl Header {
    /// Reads the header's fields. Fails only when the file is too short to hold them or is not
    /// qcow2 at all; everything else is left to [`Header::validate`].
    pub fn parse(file: &dyn ReadAt) -> Result<Header> {
        let mut fixed = [0u8; 112];
        let have = file
            .read_at_most(&mut fixed, 0)
            .map_err(|e| read_error("header", 0, e))?;
        if have < 72 {
            return Err(Error::corrupt(
                0,
                "the file ends inside the qcow2 header (72 bytes)",
            ));
        }
        if fixed[..4] != MAGIC {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                "not a qcow2 image (bad magic)",
            ));
        }
        let version = be32(&fixed, 4);
        let mut header = Header {
            version,
            backing_file_offset: be64(&fixed, 8),
            backing_file_size: be32(&fixed, 16),
            cluster_bits: be32(&fixed, 20),
            size: be64(&fixed, 24),
            crypt_method: be32(&fixed, 32),
            l1_size: be32(&fixed, 36),
            l1_table_offset: be64(&fixed, 40),
            refcount_table_offset: be64(&fixed, 48),
            refcount_table_clusters: be32(&fixed, 56),
            nb_snapshots: be32(&fixed, 60),
            snapshots_offset: be64(&fixed, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 72,
            compression_type: 0,
        };
        if version >= 3 {
            if have < 104 {
                return Err(Error::corrupt(
                    72,
                    "the file ends inside the qcow2 version 3 header (104 bytes)",
                ));
            }
            header.incompatible_features = be64(&fixed, 72);
            header.compatible_features = be64(&fixed, 80);
            header.autoclear_features = be64(&fixed, 88);
            header.refcount_order = be32(&fixed, 96);
            header.header_length = be32(&fixed, 100);
            if header.header_length > 104 {
                if have < 105 {
                    return Err(Error::corrupt(104, "the file ends inside the qcow2 header"));
                }
                header.compression_type = fixed[104];
            }
        }
        Ok(header)
    }

    /// Makes every check QEMU makes on open (and those imgpack adds for hostile images) and
    /// returns the layout to read with, or the reason the image is refused: the version and
    /// geometry, then the features (what would need another file or is not understood), then
    /// the tables (inside the file, within QEMU's caps, not overlapping one another).
    pub fn validate(&self, file: &dyn ReadAt) -> Result<Layout> {
        let file_size = file.size();
        let cluster_bits = self.check_geometry(file_size)?;
        let cluster_size = 1u64 << cluster_bits;
        let features = self.check_features(file, cluster_size)?;
        let entry_bits = if features.extended_l2 { 4 } else { 3 };
        let l2_bits = cluster_bits - entry_bits;
        let tables = self.check_tables(file, cluster_bits, l2_bits, features.extensions)?;
        let metadata = self.metadata(cluster_size, &tables);
        self.check_overlaps(cluster_size, &tables)?;
        Ok(Layout {
            header: self.clone(),
            cluster_bits,
            cluster_size,
            extended_l2: features.extended_l2,
            l2_entries: 1u64 << l2_bits,
            l1_needed: tables.l1_needed,
            compression: features.compression,
            file_size,
            metadata,
        })
    }

    /// The version, the cluster size and the version 3 header fields; returns `cluster_bits`.
    fn check_geometry(&self, file_size: u64) -> Result<u32> {
        if self.version != 2 && self.version != 3 {
            return Err(Error::unsupported(format!(
                "qcow2 version {} is not supported (only 2 and 3)",
                self.version
            ))
            .at(4));
        }
        if !(9..=21).contains(&self.cluster_bits) {
            return Err(Error::corrupt(
                20,
                format!(
                    "cluster_bits {} is outside 9..=21 (cluster sizes 512 B to 2 MiB)",
                    self.cluster_bits
                ),
            ));
        }
        let cluster_size = 1u64 << self.cluster_bits;
        if self.version == 3 {
            if self.header_length < 104 {
                return Err(Error::corrupt(
                    100,
                    format!("header_length {} is below 104", self.header_length),
                ));
            }
            if u64::from(self.header_length) > cluster_size {
                return Err(Error::corrupt(
                    100,
                    format!(
                        "header_length {} exceeds the cluster size {cluster_size}",
                        self.header_length
                    ),
                ));
            }
            if u64::from(self.header_length) > file_size {
                return Err(Error::corrupt(100, "the file ends inside the qcow2 header"));
            }
            if self.refcount_order > 6 {
                return Err(Error::corrupt(
                    96,
                    format!(
                        "refcount_order {} exceeds 6 (64-bit refcounts)",
                        self.refcount_order
                    ),
                ));
            }
        }
        Ok(self.cluster_bits)
    }

    /// What the image needs that imgpack refuses (a backing file, encryption, an external data
    /// file, unknown incompatible features) and the features it reads with.
    fn check_features(&self, file: &dyn ReadAt, cluster_size: u64) -> Result<Features> {
        let cluster_bits = self.cluster_bits;
        if self.backing_file_offset != 0 {
            return Err(Error::unsupported(format!(
                "the image has a backing file{}; imgpack never opens files named inside an image (flatten it first: qemu-img convert -O qcow2)",
                self.backing_file_name(file).map_or(String::new(), |n| format!(" ({n:?})"))
            ))
            .at(8));
        }
        match self.crypt_method {
            0 => {}
            1 => {
                return Err(
                    Error::unsupported("the image is encrypted (AES); encrypted images are refused").at(32),
                )
            }
            2 => {
                return Err(
                    Error::unsupported("the image is encrypted (LUKS); encrypted images are refused").at(32),
                )
            }
            other => return Err(Error::unsupported(format!("unknown encryption method {other}")).at(32)),
        }
        let incompatible = self.incompatible_features;
        let extensions = Extensions::read(self, file, cluster_size)?;
        if incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(Error::corrupt(
                72,
                "the image is marked corrupt (incompatible feature bit 1); repair it with qemu-img check -r all",
            ));
        }
        let unknown = incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::unsupported(format!(
                "unknown incompatible feature bits 0x{unknown:x}{}",
                extensions.names_of(0, unknown)
            ))
            .at(72));
        }
        if incompatible & INCOMPAT_DATA_FILE != 0 || extensions.data_file {
            return Err(Error::unsupported(
                "the image uses an external data file; imgpack never opens files named inside an image",
            )
            .at(72));
        }
        if extensions.crypto {
            return Err(Error::corrupt(
                self.header_length.into(),
                "crypto header extension in an image that is not LUKS-encrypted",
            ));
        }
        let compression = match self.compression_type {
            0 if incompatible & INCOMPAT_COMPRESSION != 0 => {
                return Err(Error::corrupt(
                    104,
                    "the compression-type feature bit is set but compression_type is zlib",
                ))
            }
            0 => Compression::Zlib,
            1 if incompatible & INCOMPAT_COMPRESSION == 0 => {
                return Err(Error::corrupt(
                    104,
                    "compression_type is zstd but the compression-type feature bit is not set",
                ))
            }
            1 => Compression::Zstd,
            other => return Err(Error::unsupported(format!("unknown compression_type {other}")).at(104)),
        };
        let extended_l2 = incompatible & INCOMPAT_EXTENDED_L2 != 0;
        if extended_l2 && cluster_bits < 14 {
            return Err(Error::corrupt(
                72,
                "extended L2 entries need clusters of at least 16 KiB",
            ));
        }
        Ok(Features {
            extensions,
            compression,
            extended_l2,
        })
    }

    /// The active L1 table, the refcount table, the snapshot table and the bitmaps directory:
    /// sized within QEMU's caps and inside the file.
    fn check_tables(
        &self,
        file: &dyn ReadAt,
        cluster_bits: u32,
        l2_bits: u32,
        extensions: Extensions,
    ) -> Result<Tables> {
        let file_size = file.size();
        let cluster_size = 1u64 << cluster_bits;
        // Virtual size and the active L1 table.
        if self.size > i64::MAX as u64 {
            return Err(Error::corrupt(
                24,
                format!("virtual size {} is too large", self.size),
            ));
        }
        let l1_needed = self.size.div_ceil(1u64 << (cluster_bits + l2_bits));
        if l1_needed > i32::MAX as u64 {
            return Err(Error::corrupt(24, "virtual size too large for an L1 table"));
        }
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Error::corrupt(
                36,
                format!("L1 table of {} entries exceeds QEMU's 32 MiB cap", self.l1_size),
            ));
        }
        if u64::from(self.l1_size) < l1_needed {
            return Err(Error::corrupt(
                36,
                format!(
                    "L1 table of {} entries is too small for the virtual size ({l1_needed} needed)",
                    self.l1_size
                ),
            ));
        }
        check_table(
            "L1 table",
            40,
            self.l1_table_offset,
            l1_bytes,
            cluster_size,
            file_size,
        )?;

        // Structures the reader does not need, still checked against the file.
        if self.refcount_table_clusters == 0 {
            return Err(Error::corrupt(56, "the image has no refcount table"));
        }
        let refcount_bytes = u64::from(self.refcount_table_clusters) << cluster_bits;
        if refcount_bytes > MAX_REFCOUNT_TABLE_BYTES {
            return Err(Error::corrupt(
                56,
                format!(
                    "refcount table of {} clusters exceeds QEMU's 8 MiB cap",
                    self.refcount_table_clusters
                ),
            ));
        }
        check_table(
            "refcount table",
            48,
            self.refcount_table_offset,
            refcount_bytes,
            cluster_size,
            file_size,
        )?;
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::corrupt(
                60,
                format!(
                    "{} snapshots exceed QEMU's cap of {MAX_SNAPSHOTS}",
                    self.nb_snapshots
                ),
            ));
        }
        check_table(
            "snapshot table",
            64,
            self.snapshots_offset,
            u64::from(self.nb_snapshots) * 40,
            cluster_size,
            file_size,
        )?;
        if self.nb_snapshots > 0 {
            check_snapshots(self, file, cluster_size)?;
        }
        if let Some(bitmaps) = extensions.bitmaps {
            if self.autoclear_features & AUTOCLEAR_BITMAPS != 0 {
                bitmaps.check(cluster_size, file_size)?;
            }
        }

        Ok(Tables {
            l1_needed,
            l1_bytes,
            refcount_bytes,
        })
    }

    /// The regions holding the image's own metadata, where no L2 table or data may land.
    fn metadata(&self, cluster_size: u64, tables: &Tables) -> Vec<(u64, u64, &'static str)> {
        let Tables {
            l1_bytes,
            refcount_bytes,
            ..
        } = *tables;
        let mut metadata = vec![(0, cluster_size, "the header cluster")];
        if l1_bytes > 0 {
            metadata.push((
                self.l1_table_offset,
                self.l1_table_offset + round_up(l1_bytes, cluster_size),
                "the L1 table",
            ));
        }
        metadata.push((
            self.refcount_table_offset,
            self.refcount_table_offset + refcount_bytes,
            "the refcount table",
        ));
        metadata
    }

    /// The header cluster, the L1 table and the refcount table must not overlap.
    fn check_overlaps(&self, cluster_size: u64, tables: &Tables) -> Result<()> {
        let Tables {
            l1_bytes,
            refcount_bytes,
            ..
        } = *tables;
        if self.refcount_table_offset < cluster_size {
            return Err(Error::corrupt(
                48,
                "the refcount table overlaps the header cluster",
            ));
        }
        if l1_bytes > 0 {
            if self.l1_table_offset < cluster_size {
                return Err(Error::corrupt(40, "the L1 table overlaps the header cluster"));
            }
            let l1_end = self.l1_table_offset + round_up(l1_bytes, cluster_size);
            if self.l1_table_offset < self.refcount_table_offset + refcount_bytes
                && self.refcount_table_offset < l1_end
            {
                return Err(Error::corrupt(40, "the L1 table overlaps the refcount table"));
            }
        }
        Ok(())
    }

    /// The backing file's name, for messages only (never opened); `None` if out of range.
    fn backing_file_name(&self, file: &dyn ReadAt) -> Option<String> {
        let len = self.backing_file_size.min(1023) as usize;
        let mut name = vec![0u8; len];
        file.read_exact_at(&mut name, self.backing_file_offset).ok()?;
        Some(String::from_utf8_lossy(&name).into_owned())
    }

    /// The names of the feature bits set in `bits` of feature `kind` (0 incompatible,
    /// 1 compatible, 2 autoclear), from QEMU's known names.
    pub fn feature_names(kind: u8, bits: u64) -> Vec<String> {
        let known: &[&str] = match kind {
            0 => &[
                "dirty",
                "corrupt",
                "external data file",
                "compression type",
                "extended L2",
            ],
            1 => &["lazy refcounts"],
            _ => &["bitmaps", "raw external data"],
        };
        (0..64)
            .filter(|bit| bits & (1u64 << bit) != 0)
            .map(|bit| {
                known
                    .get(bit as usize)
                    .map_or_else(|| format!("unknown bit {bit}"), |n| (*n).to_string())
            })
            .collect()
    }
}

pub(super) fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to).saturating_mul(to)
}

/// A table of `bytes` at `offset`: aligned, and (if not empty) wholly inside the file.
pub(super) fn check_table(
    name: &str,
    field: u64,
    offset: u64,
    bytes: u64,
    cluster_size: u64,
    file_size: u64,
) -> Result<()> {
    if !offset.is_multiple_of(cluster_size) {
        return Err(Error::corrupt(
            field,
            format!("{name} offset 0x{offset:x} is not aligned to a cluster"),
        ));
    }
    if bytes == 0 {
        return Ok(());
    }
    if offset >= file_size {
        return Err(Error::corrupt(
            field,
            format!("{name} at 0x{offset:x} starts beyond the end of the file ({file_size} bytes)"),
        ));
    }
    match offset.checked_add(bytes) {
        Some(end) if end <= file_size => Ok(()),
        _ => Err(Error::corrupt(
            field,
            format!("{name} at 0x{offset:x} ({bytes} bytes) runs past the end of the file"),
        )),
    }
}

/// Walks the snapshot table: every entry inside the file and within QEMU's caps, every
/// snapshot's L1 table aligned and inside the file.
fn check_snapshots(header: &Header, file: &dyn ReadAt, cluster_size: u64) -> Result<()> {
    let start = header.snapshots_offset;
    let mut offset = start;
    for index in 0..header.nb_snapshots {
        let mut entry = [0u8; 40];
        file.read_exact_at(&mut entry, offset)
            .map_err(|e| read_error("snapshot table", offset, e))?;
        let l1_offset = be64(&entry, 0);
        let l1_size = be32(&entry, 8);
        let id_len = u64::from(be16(&entry, 12));
        let name_len = u64::from(be16(&entry, 14));
        let extra = be32(&entry, 36);
        if extra > MAX_SNAPSHOT_EXTRA_DATA {
            return Err(Error::corrupt(
                offset + 36,
                format!("snapshot {index} has {extra} bytes of extra data (QEMU's cap: 1024)"),
            ));
        }
        let bytes = u64::from(l1_size) * 8;
        if bytes > MAX_L1_BYTES {
            return Err(Error::corrupt(
                offset + 8,
                format!("snapshot {index}'s L1 table of {l1_size} entries exceeds QEMU's 32 MiB cap"),
            ));
        }
        check_table(
            &format!("snapshot {index}'s L1 table"),
            offset,
            l1_offset,
            bytes,
            cluster_size,
            file.size(),
        )?;
        let len = round_up(40 + u64::from(extra) + id_len + name_len, 8);
        offset += len;
        if offset - start > MAX_SNAPSHOT_TABLE_BYTES {
            return Err(Error::corrupt(
                start,
                "the snapshot table exceeds QEMU's 64 MiB cap",
            ));
        }
        if offset > file.size() {
            return Err(Error::corrupt(
                offset - len,
                format!("snapshot {index}'s entry runs past the end of the file"),
            ));
        }
    }
    Ok(())
}

/// The features an image is read with, and its header extensions.
struct Features {
    extensions: Extensions,
    compression: Compression,
    extended_l2: bool,
}

/// The sizes of the checked tables.
#[derive(Clone, Copy)]
struct Tables {
    /// L1 entries that cover the virtual disk.
    l1_needed: u64,
    /// Bytes of the active L1 table.
    l1_bytes: u64,
    /// Bytes of the refcount table.
    refcount_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid v3 image of 512-byte clusters: header, refcount table at 512, a
    /// one-entry L1 at 1024 (32 KiB virtual disk, nothing allocated).
    fn minimal() -> Vec<u8> {
        let mut b = vec![0u8; 1536];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&9u32.to_be_bytes());
        b[24..32].copy_from_slice(&(32u64 << 10).to_be_bytes());
        b[36..40].copy_from_slice(&1u32.to_be_bytes());
        b[40..48].copy_from_slice(&1024u64.to_be_bytes());
        b[48..56].copy_from_slice(&512u64.to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        b
    }

    fn with_bitmaps(autoclear: bool, count: u32, size: u64, offset: u64) -> Vec<u8> {
        let mut b = minimal();
        if autoclear {
            b[95] = 1;
        }
        b[112..116].copy_from_slice(&EXT_BITMAPS.to_be_bytes());
        b[116..120].copy_from_slice(&24u32.to_be_bytes());
        b[120..124].copy_from_slice(&count.to_be_bytes());
        b[128..136].copy_from_slice(&size.to_be_bytes());
        b[136..144].copy_from_slice(&offset.to_be_bytes());
        b
    }

    fn validate(bytes: &[u8]) -> Result<Layout> {
        let bytes = bytes.to_vec();
        Header::parse(&bytes)?.validate(&bytes)
    }

    #[test]
    fn minimal_image_is_valid() {
        let layout = validate(&minimal()).unwrap();
        assert_eq!(layout.cluster_size, 512);
        assert_eq!(layout.l1_needed, 1);
        assert_eq!(layout.compression, Compression::Zlib);
    }

    #[test]
    fn bitmaps_extension_is_checked_when_consistent() {
        validate(&with_bitmaps(true, 1, 64, 1024)).unwrap();
        // Inconsistent (autoclear bit clear): ignored, as QEMU does.
        validate(&with_bitmaps(false, 0, u64::MAX, 7)).unwrap();
        for (count, size, offset, words) in [
            (0, 64, 1024, "bitmaps"),
            (70000, 64, 1024, "bitmaps"),
            (1, 1 << 40, 1024, "too large"),
            (1, 64, 1000, "aligned"),
            (1, 64, 1 << 30, "beyond the end"),
            (1, 1024, 1024, "past the end"),
        ] {
            let e = validate(&with_bitmaps(true, count, size, offset)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt);
            assert!(e.to_string().contains(words), "{e}");
        }
    }

    #[test]
    fn extensions_naming_host_files_are_refused() {
        let mut b = minimal();
        b[112..116].copy_from_slice(&EXT_DATA_FILE.to_be_bytes());
        b[116..120].copy_from_slice(&9u32.to_be_bytes());
        b[120..129].copy_from_slice(b"/etc/pass");
        let e = validate(&b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        // An unknown extension is skipped; the feature table names unknown bits.
        let mut b = minimal();
        b[112..116].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[116..120].copy_from_slice(&3u32.to_be_bytes());
        b[128..132].copy_from_slice(&EXT_FEATURE_NAMES.to_be_bytes());
        b[132..136].copy_from_slice(&48u32.to_be_bytes());
        b[136] = 0;
        b[137] = 9;
        b[138..145].copy_from_slice(b"shiny-9");
        validate(&b).unwrap();
        b[78] = 2; // incompatible bit 9
        let e = validate(&b).unwrap_err();
        assert!(e.to_string().contains("0x200 (shiny-9)"), "{e}");
    }
}
