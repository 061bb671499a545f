//! The image digest, `sha256-tree`: one SHA-256 that names a virtual disk's content, whatever
//! its chunk size, compression level or input format (defined byte for byte in
//! `docs/FORMAT.md`, "The image digest").
//!
//! The disk is cut into leaves of [`LEAF_SIZE`] (1 MiB; the last one may be shorter). The
//! digest is
//!
//! ```text
//! SHA-256( SHA-256(leaf 0) || SHA-256(leaf 1) || ... || SHA-256(leaf n-1) || u64le(virtual_size) )
//! ```
//!
//! and is written `sha256-tree:<64 lowercase hex digits>` ([`ImageDigest`]). A leaf of zeros has
//! a hash that never changes, so [`TreeHasher`] lets callers skip all-zero leaves and puts the
//! precomputed hash in their place: a sparse disk costs what its data costs, plus 32 bytes of
//! hashing per MiB of virtual size.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};

/// log2 of the leaf size.
pub const LEAF_SHIFT: u32 = 20;
/// The leaf size: 1 MiB.
pub const LEAF_SIZE: u64 = 1 << LEAF_SHIFT;
/// The name of the scheme, the prefix of the digest's text form.
pub const SCHEME: &str = "sha256-tree";

/// A SHA-256 value.
pub type Sha256Hash = [u8; 32];

/// A static block of zeros to feed hashers with, so zero runs need no buffer of their own.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Sha256Hash {
    Sha256::digest(bytes).into()
}

/// Feeds `count` zero bytes to `hasher`.
pub fn update_zeros(hasher: &mut Sha256, mut count: u64) {
    while count > 0 {
        let n = count.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..n]);
        count -= n as u64;
    }
}

/// The SHA-256 of `len` zero bytes.
pub fn zeros_sha256(len: u64) -> Sha256Hash {
    let mut hasher = Sha256::new();
    update_zeros(&mut hasher, len);
    hasher.finalize().into()
}

/// The SHA-256 of a full leaf of zeros, computed once.
pub fn zero_leaf_hash() -> &'static Sha256Hash {
    static ZERO_LEAF: OnceLock<Sha256Hash> = OnceLock::new();
    ZERO_LEAF.get_or_init(|| zeros_sha256(LEAF_SIZE))
}

/// Lowercase hexadecimal, as `sha256sum` prints.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 15)] as char);
    }
    text
}

/// An image digest (`sha256-tree:<hex>` as text).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageDigest(pub Sha256Hash);

impl fmt::Display for ImageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}:{}", to_hex(&self.0))
    }
}

impl fmt::Debug for ImageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ImageDigest {
    type Err = Error;

    /// Parses `sha256-tree:` followed by 64 hex digits (either case).
    fn from_str(text: &str) -> Result<Self> {
        let bad = || Error::invalid_argument(format!("`{text}` is not a {SCHEME}:<64 hex digits> digest"));
        let hex = text
            .strip_prefix(SCHEME)
            .and_then(|rest| rest.strip_prefix(':'))
            .filter(|hex| hex.len() == 64 && hex.is_ascii())
            .ok_or_else(bad)?;
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(ImageDigest(bytes))
    }
}

/// Builds the digest from leaf hashes given in increasing leaf order; leaves never given are
/// all zero and take the precomputed hash.
#[derive(Clone)]
pub struct TreeHasher {
    root: Sha256,
    next_leaf: u64,
}

impl Default for TreeHasher {
    fn default() -> Self {
        TreeHasher::new()
    }
}

impl TreeHasher {
    /// A digest of no leaves yet.
    pub fn new() -> Self {
        TreeHasher {
            root: Sha256::new(),
            next_leaf: 0,
        }
    }

    /// Adds the hash of leaf number `leaf` (offset / 1 MiB). Leaves must come in strictly
    /// increasing order; those skipped are taken as all zero.
    pub fn add_leaf(&mut self, leaf: u64, hash: &Sha256Hash) -> Result<()> {
        if leaf < self.next_leaf {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("leaf {leaf} added after leaf {}", self.next_leaf - 1),
            ));
        }
        self.add_zero_leaves(leaf - self.next_leaf);
        self.root.update(hash);
        self.next_leaf = leaf + 1;
        Ok(())
    }

    fn add_zero_leaves(&mut self, count: u64) {
        const BATCH: usize = 1024;
        let zero = zero_leaf_hash();
        let batch: Vec<u8> = zero.repeat(BATCH);
        let mut left = count;
        while left > 0 {
            let n = left.min(BATCH as u64) as usize;
            self.root.update(&batch[..n * 32]);
            left -= n as u64;
        }
    }

    /// The digest of a disk of `virtual_size` bytes. Fails if a leaf was added past its end.
    pub fn finish(mut self, virtual_size: u64) -> Result<ImageDigest> {
        let leaves = virtual_size.div_ceil(LEAF_SIZE);
        if self.next_leaf > leaves {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "leaf {} lies past the end of a {virtual_size}-byte disk",
                    self.next_leaf - 1
                ),
            ));
        }
        if self.next_leaf < leaves {
            self.add_zero_leaves(leaves - 1 - self.next_leaf);
            // The last leaf may be short: its hash is that of its own length of zeros.
            let last_len = virtual_size - (leaves - 1) * LEAF_SIZE;
            self.root.update(zeros_sha256(last_len));
        }
        self.root.update(virtual_size.to_le_bytes());
        Ok(ImageDigest(self.root.finalize().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule written out naively: hash every leaf, zeros included.
    fn naive(disk: &[u8]) -> ImageDigest {
        let mut root = Sha256::new();
        for leaf in disk.chunks(LEAF_SIZE as usize) {
            root.update(sha256(leaf));
        }
        root.update((disk.len() as u64).to_le_bytes());
        ImageDigest(root.finalize().into())
    }

    fn skipping_zero_leaves(disk: &[u8]) -> ImageDigest {
        let mut tree = TreeHasher::new();
        for (i, leaf) in disk.chunks(LEAF_SIZE as usize).enumerate() {
            if leaf.iter().any(|&b| b != 0) {
                tree.add_leaf(i as u64, &sha256(leaf)).unwrap();
            }
        }
        tree.finish(disk.len() as u64).unwrap()
    }

    #[test]
    fn skipped_zero_leaves_give_the_naive_digest() {
        for size in [0usize, 1, 4096, 1 << 20, (1 << 20) + 1, 3 << 20, (5 << 20) - 512] {
            let mut disk = vec![0u8; size];
            assert_eq!(skipping_zero_leaves(&disk), naive(&disk), "zeros, {size}");
            if size > 0 {
                disk[size / 2] = 1;
                disk[size - 1] = 2;
                assert_eq!(skipping_zero_leaves(&disk), naive(&disk), "data, {size}");
            }
        }
    }

    #[test]
    fn zero_leaf_hash_is_the_one_docs_format_md_gives() {
        assert_eq!(
            to_hex(zero_leaf_hash()),
            "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58"
        );
    }

    #[test]
    fn empty_disk_digest_is_the_hash_of_its_size() {
        let empty = TreeHasher::new().finish(0).unwrap();
        assert_eq!(empty.0, sha256(&0u64.to_le_bytes()));
    }

    #[test]
    fn text_form_round_trips_and_rejects_other_schemes() {
        let d = naive(b"abc");
        let text = d.to_string();
        assert!(text.starts_with("sha256-tree:") && text.len() == 12 + 64);
        assert_eq!(text.parse::<ImageDigest>().unwrap(), d);
        assert_eq!(
            text.to_uppercase()
                .replace("SHA256-TREE", "sha256-tree")
                .parse::<ImageDigest>()
                .unwrap(),
            d
        );
        for bad in [
            "",
            "sha256:00",
            &text[..text.len() - 1],
            &text.replace("sha256-tree", "sha1-tree"),
        ] {
            assert!(bad.parse::<ImageDigest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn out_of_order_and_past_the_end_leaves_are_refused() {
        let mut tree = TreeHasher::new();
        tree.add_leaf(3, &[1; 32]).unwrap();
        assert!(tree.add_leaf(3, &[1; 32]).is_err());
        assert!(tree.clone().finish(3 << 20).is_err());
        assert!(tree.finish((3 << 20) + 1).is_ok());
    }
}
