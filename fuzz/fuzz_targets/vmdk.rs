#![no_main]
//! Fuzz target: `imgpack::fuzz_targets::vmdk` (seeds: testdata/formats/vmdk-*.gz, inflated).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imgpack::fuzz_targets::vmdk(data));
