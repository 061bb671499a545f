//! The one deterministic generator of the test suites ([`Rng`], xorshift64*) and the one
//! mutation harness built on it: [`mutations`] for whole inputs (the fuzz targets) and
//! [`damage`] for a few poked bytes in a large image (the hostile-input suites).
//! Deterministic so that every failure reproduces from its seed.

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// One random byte.
    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            *b = self.byte();
        }
    }
}

/// Mutations of `seed`: bit flips, truncations, poked 64/32-bit values (big and little
/// endian: huge, zero, misaligned, all-ones), and random tails.
pub fn mutations(seed: &[u8], rng: &mut Rng, count: usize) -> Vec<Vec<u8>> {
    (0..count).map(|_| mutate(seed, rng)).collect()
}

/// One mutation of `seed` (see [`mutations`]).
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut m = seed.to_vec();
    match rng.below(5) {
        0 if !m.is_empty() => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(m.len() as u64) as usize;
                m[i] ^= 1 << rng.below(8);
            }
        }
        1 => m.truncate(rng.below(m.len() as u64 + 1) as usize),
        2 | 3 if m.len() >= 8 => {
            let values = [
                u64::MAX,
                0,
                1,
                1 << 63,
                0x7fff_ffff_ffff_ffff,
                513,
                1 << 40,
                rng.next(),
            ];
            let v = values[rng.below(values.len() as u64) as usize];
            let i = rng.below(m.len() as u64 - 7) as usize;
            let bytes = if rng.below(2) == 0 {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            let width = if rng.below(2) == 0 { 8 } else { 4 };
            m[i..i + width].copy_from_slice(&bytes[8 - width..]);
        }
        _ => {
            for _ in 0..rng.below(64) {
                m.push(rng.byte());
            }
        }
    }
    m
}

/// One to four byte patches `(offset, value)` for an image: offsets from `spot` (which
/// chooses where the structures worth damaging are), values all-ones, zero or random.
pub fn damage(rng: &mut Rng, mut spot: impl FnMut(&mut Rng) -> usize) -> Vec<(usize, u8)> {
    (0..1 + rng.below(4))
        .map(|_| {
            let at = spot(rng);
            let value = match rng.below(3) {
                0 => 0xff,
                1 => 0,
                _ => rng.byte(),
            };
            (at, value)
        })
        .collect()
}
