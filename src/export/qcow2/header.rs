//! The qcow2 header, byte for byte (docs/interop/qcow2.txt in qemu):
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `QFI\xfb` |
//! | 4 | version (2 or 3) |
//! | 20 | cluster bits |
//! | 24 | virtual size |
//! | 36 | L1 entries |
//! | 40 | L1 table offset |
//! | 48 | refcount table offset |
//! | 56 | refcount table clusters |
//! | 72 | v3: incompatible features (bit 3: compression type) |
//! | 96 | v3: refcount order (4: 16-bit refcounts) |
//! | 100 | v3: header length (112) |
//! | 104 | v3: compression type (0 deflate, 1 zstd) |
//!
//! Backing file, encryption, snapshots and the other feature words are zero; the bytes after
//! the header are zero, which reads as the end of the header extensions.

use super::Settings;
use crate::export::options::{CompressionType, Qcow2Compat};

const MAGIC: u32 = 0x5146_49fb;
const V3_HEADER_LENGTH: u32 = 112;
const INCOMPATIBLE_COMPRESSION_TYPE: u64 = 1 << 3;

/// Where the tables are.
pub struct Tables {
    pub l1_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u64,
}

/// The header cluster's bytes.
pub fn encode(settings: &Settings, tables: &Tables) -> Vec<u8> {
    let mut h = vec![0u8; V3_HEADER_LENGTH as usize];
    put(&mut h, 0, &MAGIC.to_be_bytes());
    let version: u32 = match settings.compat {
        Qcow2Compat::V2 => 2,
        Qcow2Compat::V3 => 3,
    };
    put(&mut h, 4, &version.to_be_bytes());
    put(&mut h, 20, &settings.cluster_bits().to_be_bytes());
    put(&mut h, 24, &settings.virtual_size.to_be_bytes());
    put(&mut h, 36, &(settings.l1_entries() as u32).to_be_bytes());
    put(&mut h, 40, &tables.l1_offset.to_be_bytes());
    put(&mut h, 48, &tables.refcount_table_offset.to_be_bytes());
    put(&mut h, 56, &(tables.refcount_table_clusters as u32).to_be_bytes());
    if settings.compat == Qcow2Compat::V2 {
        h.truncate(72);
        return h;
    }
    let zstd = settings.compression == Some(CompressionType::Zstd);
    let incompatible = if zstd { INCOMPATIBLE_COMPRESSION_TYPE } else { 0 };
    put(&mut h, 72, &incompatible.to_be_bytes());
    put(&mut h, 96, &4u32.to_be_bytes());
    put(&mut h, 100, &V3_HEADER_LENGTH.to_be_bytes());
    h[104] = u8::from(zstd);
    h
}

fn put(h: &mut [u8], at: usize, bytes: &[u8]) {
    h[at..at + bytes.len()].copy_from_slice(bytes);
}
