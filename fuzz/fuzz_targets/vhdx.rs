#![no_main]
//! Fuzz target: `imgpack::fuzz_targets::vhdx` (seeds: testdata/formats/vhdx-*.gz, inflated).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imgpack::fuzz_targets::vhdx(data));
