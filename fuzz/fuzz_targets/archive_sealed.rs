#![no_main]
//! Fuzz target: `imgpack::fuzz_targets::archive_sealed` (seeds: the `archive` corpus).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imgpack::fuzz_targets::archive_sealed(data));
