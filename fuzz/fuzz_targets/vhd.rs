#![no_main]
//! Fuzz target: `imgpack::fuzz_targets::vhd` (seeds: testdata/formats/vhd-*.gz, inflated).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imgpack::fuzz_targets::vhd(data));
