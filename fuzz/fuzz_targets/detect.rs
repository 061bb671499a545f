#![no_main]
//! Fuzz target: `imgpack::fuzz_targets::detect_format`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imgpack::fuzz_targets::detect_format(data));
