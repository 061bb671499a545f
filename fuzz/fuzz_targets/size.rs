#![no_main]
//! Fuzz target: `imgpack::fuzz_targets::size_argument`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imgpack::fuzz_targets::size_argument(data));
