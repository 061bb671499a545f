#![no_main]
//! Fuzz target: `imgpack::fuzz_targets::images` (seeds: `fuzz/seed.sh` packs every image seed).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imgpack::fuzz_targets::images(data));
