#![no_main]
//! Fuzz target: `imgpack::fuzz_targets::streams` (gzip, xz and zstd through the layered open path).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imgpack::fuzz_targets::streams(data));
