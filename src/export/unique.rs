//! Random identifiers for the formats that stamp one into every image (VHD's unique id,
//! VHDX's GUIDs, VMDK's CID), from the standard library's randomly keyed hasher, so no
//! dependency is needed for sixteen bytes that only have to differ between images.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Sixteen random bytes, shaped as a version 4 UUID.
pub fn random_uuid() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for (i, half) in bytes.chunks_exact_mut(8).enumerate() {
        half.copy_from_slice(&random_u64(i as u64).to_le_bytes());
    }
    bytes[7] = (bytes[7] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

/// A random 64-bit value (each `RandomState` is keyed afresh).
pub fn random_u64(salt: u64) -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(salt);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    hasher.write_u64(nanos);
    hasher.finish()
}
