//! Chunk-level deduplication: each stored chunk's zstd frame is kept once, as an object of its
//! own, and an image is an *index* naming the frame object of each of its chunks.
//!
//! | key                                       | what                                              |
//! |-------------------------------------------|---------------------------------------------------|
//! | `chunks/<ab>/<sha256 hex>-<gen 16 hex>`   | one chunk's zstd frame, exactly as in an archive ([`chunk_key`]) |
//! | `images/<image-id>.index`                 | the image's index ([`index`]): the self-contained archive minus its frames, plus each frame's generation |
//!
//! `<gen>` is a random u64 drawn by the uploader: an object store has no conditional delete, so
//! a name is never reused once deleted, and the garbage collector's deletes can only ever hit
//! garbage (docs/STORE.md gives the whole argument).
//!
//! The catalog keeps which frames exist ([`catalog::ChunkCatalog`]: rows `(sha, gen)`
//! `pending` or `stored`) and which image references which (a set of rows, so a reference
//! count cannot drift). A registration pins a stored frame the moment it chooses it
//! ([`session`]); [`VirtualArchive`] presents an image's index and frames as the bytes of its
//! self-contained archive, so every reader of archives works unchanged; [`gc`] removes what no
//! image references.

pub mod catalog;
pub mod gc;
pub mod index;
mod prefetch;
pub mod session;
mod virtual_archive;

pub use catalog::{ChunkCatalog, ChunkRow};
pub use index::ImageIndex;
pub use session::{DedupSession, DedupStats, IndexSink};
pub use virtual_archive::VirtualArchive;

use crate::archive::digest::Sha256Hash;
use crate::error::{Error, ErrorKind, Result};

/// The prefix of every chunk object.
pub const CHUNKS: &str = "chunks";
/// The index object's suffix, beside `images/<id>`.
pub const INDEX_SUFFIX: &str = ".index";

/// Lowercase hex of a SHA-256.
pub fn hex(sha256: &Sha256Hash) -> String {
    sha256.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 spelled by 64 lowercase hex digits.
pub fn parse_hex(text: &str) -> Option<Sha256Hash> {
    if text.len() != 64
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `chunks/<first two hex digits>/<sha256 hex>-<gen as 16 hex digits>`.
pub fn chunk_key(sha256_hex: &str, gen: u64) -> String {
    format!("{CHUNKS}/{}/{sha256_hex}-{gen:016x}", &sha256_hex[..2])
}

/// The `(sha256 hex, gen)` a chunk key names, if it is one (anything else under `chunks/`
/// is not ours to judge and is left alone).
pub fn parse_chunk_key(key: &str) -> Option<(String, u64)> {
    let rest = key.strip_prefix(CHUNKS)?.strip_prefix('/')?;
    let (fan, name) = rest.split_once('/')?;
    let (sha, gen) = name.split_once('-')?;
    if gen.len() != 16 || parse_hex(sha).is_none() || !sha.starts_with(fan) || fan.len() != 2 {
        return None;
    }
    Some((sha.to_string(), u64::from_str_radix(gen, 16).ok()?))
}

/// `images/<id>.index`, for a valid image id.
pub fn index_key(image: &str) -> Result<String> {
    if !super::id::is_image_id(image) {
        return Err(Error::invalid_argument(format!("{image:?} is not an image id")));
    }
    Ok(format!("{}/{image}{INDEX_SUFFIX}", super::objects::keys::IMAGES))
}

/// A fresh random generation for a new chunk object.
pub fn new_generation() -> Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot get random bytes for a chunk generation: {e}"),
        )
    })?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_round_trip_and_refuse_strangers() {
        let sha = hex(&[0xab; 32]);
        let key = chunk_key(&sha, 0x0123_4567_89ab_cdef);
        assert_eq!(key, format!("chunks/ab/{sha}-0123456789abcdef"));
        assert_eq!(parse_chunk_key(&key), Some((sha.clone(), 0x0123_4567_89ab_cdef)));
        for bad in [
            format!("chunks/ac/{sha}-0123456789abcdef"),
            format!("chunks/ab/{sha}-0123"),
            format!("chunks/ab/{sha}"),
            "chunks/ab/../x-0123456789abcdef".to_string(),
            format!("images/ab/{sha}-0123456789abcdef"),
        ] {
            assert_eq!(parse_chunk_key(&bad), None, "{bad}");
        }
        assert!(index_key("img-abcde")
            .unwrap()
            .ends_with("images/img-abcde.index"));
        assert!(index_key("../x").is_err());
    }
}
