//! Zero detection: is a block all zero bytes?
//!
//! The hot loop of every conversion. [`is_zero`] OR-folds the block as 64-bit words, eight
//! independent accumulators wide, with no data-dependent branch inside a 64-byte stride, so the
//! compiler vectorises it and it runs near memory bandwidth. It stops early only between strides,
//! which costs nothing on zero data and saves the rest of the block on data.
//! [`is_zero_naive`] is the byte-by-byte reference the tests compare it with.

/// Whether every byte of `bytes` is zero.
#[inline]
pub fn is_zero(bytes: &[u8]) -> bool {
    const STRIDE: usize = 64;
    let mut strides = bytes.chunks_exact(STRIDE);
    for stride in &mut strides {
        let mut acc = [0u64; 8];
        for (a, word) in acc.iter_mut().zip(stride.chunks_exact(8)) {
            *a |= u64::from_ne_bytes(word.try_into().expect("8-byte word"));
        }
        if acc.iter().fold(0, |x, y| x | y) != 0 {
            return false;
        }
    }
    strides.remainder().iter().all(|&b| b == 0)
}

/// Byte-by-byte reference for [`is_zero`]; only for tests and benchmarks.
pub fn is_zero_naive(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_naive_on_every_single_nonzero_position() {
        for len in [0, 1, 7, 8, 63, 64, 65, 4095, 4096, 4097] {
            let mut buf = vec![0u8; len];
            assert!(is_zero(&buf));
            for i in 0..len {
                buf[i] = 0x80;
                assert_eq!(is_zero(&buf), is_zero_naive(&buf), "len {len} pos {i}");
                assert!(!is_zero(&buf));
                buf[i] = 0;
            }
        }
    }

    #[test]
    fn works_on_unaligned_slices() {
        let mut buf = vec![0u8; 4096 + 9];
        for start in 0..9 {
            assert!(is_zero(&buf[start..start + 4096]));
        }
        buf[4100] = 1;
        assert!(!is_zero(&buf[5..4101]));
    }
}
