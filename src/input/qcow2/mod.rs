//! QEMU qcow2 images (versions 2 and 3), read natively and treated as hostile.
//!
//! [`Qcow2Source`] presents the active disk of a qcow2 file as a [`DiskSource`] giving exactly
//! the bytes `qemu-img convert -O raw` gives. It reads through [`ReadAt`] only (never a path
//! named inside the image: backing files, external data files and encryption are refused),
//! checks every structure against the file before using it ([`header`], [`tables`]), and skips
//! unallocated and zero clusters without I/O. Compressed clusters (deflate or zstd) are decoded
//! by the calling worker thread ([`cluster`]).
//!
//! Layout of the file (see the tables in [`header`] and [`tables`]):
//!
//! | where                      | what                                                    |
//! |----------------------------|---------------------------------------------------------|
//! | cluster 0                  | header, then header extensions up to the cluster's end  |
//! | `l1_table_offset`          | active L1 table: `l1_size` 64-bit entries -> L2 tables  |
//! | L2 tables (one cluster)    | entries -> data clusters, compressed data, or zeros     |
//! | `refcount_table_offset`    | refcount table (checked, not needed for reading)        |
//! | `snapshots_offset`         | snapshot table (checked, not needed for reading)        |

pub mod cluster;
mod extensions;
pub mod header;
pub mod tables;

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use super::facts::{refusal_text, Facts};
use super::limits::check_virtual_size;
use super::DiskSource;
use super::OpenOptions;
use crate::error::{Error, IoContext, Result};
use crate::read_at::{FileAt, ReadAt};
use header::Header;
use tables::{Cluster, Tables};

/// A qcow2 image opened for reading its active disk.
pub struct Qcow2Source<R: ReadAt = FileAt> {
    file: R,
    path: PathBuf,
    tables: Tables,
    /// The last L2 table [`DiskSource::next_data`] walked: (offset, entries).
    walk_cache: Mutex<Option<(u64, Vec<u64>)>>,
    /// Unique for the process's lifetime: keys the per-thread decoded-cluster cache.
    id: u64,
}

/// Source ids (0 is never used, so an empty cache matches no source).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Qcow2Source<FileAt> {
    /// Opens an already open qcow2 file; `path` is used in messages only.
    pub fn from_file(file: File, path: &Path) -> Result<Self> {
        let file = FileAt::new(file).context("reading the input's size", path)?;
        Self::new(file, path)
    }
}

impl<R: ReadAt> Qcow2Source<R> {
    /// Parses and checks `file` as qcow2; refuses what imgpack does not read, with the reason.
    pub fn new(file: R, path: &Path) -> Result<Self> {
        let header = Header::parse(&file).map_err(|e| e.in_file(path))?;
        let layout = header.validate(&file).map_err(|e| e.in_file(path))?;
        let tables = Tables::load(layout, &file).map_err(|e| e.in_file(path))?;
        Ok(Qcow2Source {
            file,
            path: path.to_path_buf(),
            tables,
            walk_cache: Mutex::new(None),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.tables.layout.header
    }

    fn cluster_bits(&self) -> u32 {
        self.tables.layout.cluster_bits
    }

    fn virtual_clusters(&self) -> u64 {
        self.tables
            .layout
            .header
            .size
            .div_ceil(self.tables.layout.cluster_size)
    }

    /// Copies bytes `[host, host + len)` of the file into `out`; bytes past the end of the
    /// file read as zeros (a data cluster may run past the end, as qemu-img leaves them).
    fn read_host(&self, out: &mut [u8], host: u64) -> Result<()> {
        let n = self
            .file
            .read_at_most(out, host)
            .map_err(|e| Error::io("reading qcow2 data", e).in_file(&self.path).at(host))?;
        out[n..].fill(0);
        Ok(())
    }

    /// Calls `f` with the decoded compressed cluster stored at `offset`, decoding it unless
    /// this thread decoded it last.
    fn with_decoded(&self, offset: u64, size: u64, f: impl FnOnce(&[u8])) -> Result<()> {
        let id = self.id;
        DECODED.with(|cell| {
            let mut cached = cell.borrow_mut();
            let (owner, at, bytes) = &mut *cached;
            if *owner != id || *at != offset {
                *at = u64::MAX;
                bytes.clear();
                bytes.resize(self.tables.layout.cluster_size as usize, 0);
                self.read_compressed(offset, size, bytes)?;
                *owner = id;
                *at = offset;
            }
            f(bytes);
            Ok(())
        })
    }

    /// Decodes the compressed cluster at `offset` (at most `size` bytes stored) into `out`.
    fn read_compressed(&self, offset: u64, size: u64, out: &mut [u8]) -> Result<()> {
        STORED.with(|cell| {
            let mut stored = cell.borrow_mut();
            stored.clear();
            stored.resize(size as usize, 0); // at most 2 clusters (4 MiB)
            self.read_host(&mut stored, offset)?;
            cluster::decompress(self.tables.layout.compression, &stored, out, offset)
                .map_err(|e| e.in_file(&self.path))
        })
    }
}

thread_local! {
    /// Each worker's buffer for the stored bytes of a compressed cluster.
    static STORED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

thread_local! {
    /// Each worker's last partly read compressed cluster: (source id, stored offset, bytes).
    static DECODED: RefCell<(u64, u64, Vec<u8>)> = const { RefCell::new((0, u64::MAX, Vec::new())) };
}

/// A run of guest bytes stored contiguously in the file, not yet read.
struct Run {
    dst: usize,
    host: u64,
    len: usize,
}

impl<R: ReadAt> DiskSource for Qcow2Source<R> {
    fn format(&self) -> &'static str {
        "qcow2"
    }

    fn virtual_size(&self) -> u64 {
        self.tables.layout.header.size
    }

    fn next_data(&self, from: u64) -> Result<Option<u64>> {
        let layout = &self.tables.layout;
        if from >= layout.header.size {
            return Ok(None);
        }
        let bits = self.cluster_bits();
        let l2_entries = layout.l2_entries;
        let words = self.tables.entry_words();
        let total = self.virtual_clusters();
        let subcluster_size = layout.cluster_size / 32;
        let mut cluster = from >> bits;
        let mut cache = self.walk_cache.lock().unwrap_or_else(|p| p.into_inner());
        while cluster < total {
            let l1_index = cluster / l2_entries;
            let table_end = ((l1_index + 1) * l2_entries).min(total);
            let l2 = self.tables.l2_offset(l1_index);
            if l2 == 0 {
                cluster = table_end;
                continue;
            }
            if cache.as_ref().map(|(offset, _)| *offset) != Some(l2) {
                let mut bytes = Vec::new();
                let mut table = Vec::new();
                self.tables
                    .read_l2(&self.file, l2, 0, l2_entries, &mut bytes, &mut table)
                    .map_err(|e| e.in_file(&self.path))?;
                *cache = Some((l2, table));
            }
            let table = &cache.as_ref().expect("filled above").1;
            for c in cluster..table_end {
                let index = c - l1_index * l2_entries;
                let word = (index * words) as usize;
                let bitmap = if words == 2 { table[word + 1] } else { 0 };
                let at = l2 + word as u64 * 8;
                let start = c << bits;
                match self
                    .tables
                    .classify(table[word], bitmap, at)
                    .map_err(|e| e.in_file(&self.path))?
                {
                    Cluster::Zero => {}
                    Cluster::Subclusters { allocated, .. } => {
                        let skip = if start < from {
                            (from - start) / subcluster_size
                        } else {
                            0
                        };
                        let wanted = allocated & (u32::MAX << skip);
                        if wanted != 0 {
                            let offset = start + u64::from(wanted.trailing_zeros()) * subcluster_size;
                            return Ok(Some(offset.max(from)));
                        }
                    }
                    Cluster::Data { .. } | Cluster::Compressed { .. } => return Ok(Some(start.max(from))),
                }
            }
            cluster = table_end;
        }
        Ok(None)
    }

    fn read<'a>(&'a self, offset: u64, len: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        let layout = &self.tables.layout;
        let end = offset
            .checked_add(len as u64)
            .filter(|&end| end <= layout.header.size)
            .ok_or_else(|| Error::invalid_argument("read beyond the end of the virtual disk"))?;
        if scratch.len() != len {
            scratch.clear();
            scratch.resize(len, 0);
        }
        let bits = self.cluster_bits();
        let cluster_size = layout.cluster_size;
        let l2_entries = layout.l2_entries;
        let words = self.tables.entry_words();
        let subcluster_size = cluster_size / 32;
        let mut pending: Option<Run> = None;
        let mut pos = offset;
        let out = scratch.as_mut_slice();
        let mut l2_bytes = Vec::new();
        let mut l2_words = Vec::new();
        while pos < end {
            let first_cluster = pos >> bits;
            let l1_index = first_cluster / l2_entries;
            let table_end = ((l1_index + 1) * l2_entries)
                .checked_mul(cluster_size)
                .map_or(end, |e| e.min(end));
            let l2 = self.tables.l2_offset(l1_index);
            if l2 == 0 {
                out[(pos - offset) as usize..(table_end - offset) as usize].fill(0);
                pos = table_end;
                continue;
            }
            let first = first_cluster - l1_index * l2_entries;
            let count = ((table_end - 1) >> bits) - first_cluster + 1;
            self.tables
                .read_l2(&self.file, l2, first, count, &mut l2_bytes, &mut l2_words)
                .map_err(|e| e.in_file(&self.path))?;
            for k in 0..count {
                let word = (k * words) as usize;
                let bitmap = if words == 2 { l2_words[word + 1] } else { 0 };
                let at = l2 + (first + k) * words * 8;
                let start = (first_cluster + k) << bits;
                let a = pos.max(start);
                let b = table_end.min(start + cluster_size);
                let dst = (a - offset) as usize..(b - offset) as usize;
                match self
                    .tables
                    .classify(l2_words[word], bitmap, at)
                    .map_err(|e| e.in_file(&self.path))?
                {
                    Cluster::Zero => out[dst].fill(0),
                    Cluster::Data { host } => {
                        self.queue(out, &mut pending, dst.start, host + (a - start), dst.len())?;
                    }
                    Cluster::Subclusters { host, allocated } => {
                        let mut piece_start = a;
                        while piece_start < b {
                            let index = (piece_start - start) / subcluster_size;
                            let piece_end = (start + (index + 1) * subcluster_size).min(b);
                            let piece = (piece_start - offset) as usize..(piece_end - offset) as usize;
                            if allocated & (1 << index) != 0 {
                                let host = host + (piece_start - start);
                                self.queue(out, &mut pending, piece.start, host, piece.len())?;
                            } else {
                                out[piece].fill(0);
                            }
                            piece_start = piece_end;
                        }
                    }
                    Cluster::Compressed { offset: stored, size } => {
                        if a == start && b == start + cluster_size {
                            self.read_compressed(stored, size, &mut out[dst])?;
                        } else {
                            // Part of a cluster (reads smaller than a cluster, the disk's
                            // last cluster): keep the decoded cluster for the next part.
                            let skip = (a - start) as usize;
                            self.with_decoded(stored, size, |whole| {
                                out[dst.clone()].copy_from_slice(&whole[skip..skip + dst.len()]);
                            })?;
                        }
                    }
                }
            }
            pos = table_end;
        }
        if let Some(run) = pending.take() {
            self.read_host(&mut out[run.dst..run.dst + run.len], run.host)?;
        }
        Ok(scratch)
    }
}

impl<R: ReadAt> Qcow2Source<R> {
    /// Adds `len` bytes stored at `host` for `out[dst..]` to the pending run, reading the
    /// pending run first when the two are not contiguous on both sides.
    fn queue(
        &self,
        out: &mut [u8],
        pending: &mut Option<Run>,
        dst: usize,
        host: u64,
        len: usize,
    ) -> Result<()> {
        if let Some(run) = pending {
            if run.dst + run.len == dst && run.host + run.len as u64 == host {
                run.len += len;
                return Ok(());
            }
            self.read_host(&mut out[run.dst..run.dst + run.len], run.host)?;
        }
        *pending = Some(Run { dst, host, len });
        Ok(())
    }
}

/// The facts about a qcow2 file: the header's in `details`, the virtual size, and either the
/// opened disk or, for an image `convert` would refuse, the reason.
pub fn facts(file: FileAt, path: &Path, options: &OpenOptions) -> Facts {
    let mut facts = Facts::of("qcow2");
    let header = match Header::parse(&file) {
        Ok(header) => header,
        Err(e) => {
            facts.refusal = Some(refusal_text(&e));
            return facts;
        }
    };
    facts.details = describe(&header);
    facts.virtual_size = Some(header.size);
    match Qcow2Source::new(file, path) {
        Ok(source) => match check_virtual_size(header.size, options.limits.max_virtual_size) {
            Ok(()) => facts.source = Some(Box::new(source)),
            Err(e) => facts.refusal = Some(e.to_string()),
        },
        Err(e) => facts.refusal = Some(refusal_text(&e)),
    }
    facts
}

/// The header's facts as `info` reports them.
pub fn describe(header: &Header) -> Map<String, Value> {
    let mut details = Map::new();
    details.insert("version".into(), json!(header.version));
    let cluster_size = (9..=21)
        .contains(&header.cluster_bits)
        .then(|| 1u64 << header.cluster_bits);
    details.insert("cluster_size".into(), json!(cluster_size));
    let compression = match header.compression_type {
        0 => "zlib".to_string(),
        1 => "zstd".to_string(),
        other => format!("unknown ({other})"),
    };
    details.insert("compression_type".into(), json!(compression));
    details.insert("snapshots".into(), json!(header.nb_snapshots));
    details.insert("header_length".into(), json!(header.header_length));
    details.insert(
        "refcount_bits".into(),
        json!(1u64.checked_shl(header.refcount_order)),
    );
    details.insert(
        "extended_l2".into(),
        json!(header.incompatible_features & header::INCOMPAT_EXTENDED_L2 != 0),
    );
    let features = |kind: u8, bits: u64| json!({ "bits": bits, "names": Header::feature_names(kind, bits) });
    details.insert(
        "incompatible_features".into(),
        features(0, header.incompatible_features),
    );
    details.insert(
        "compatible_features".into(),
        features(1, header.compatible_features),
    );
    details.insert(
        "autoclear_features".into(),
        features(2, header.autoclear_features),
    );
    details
}
