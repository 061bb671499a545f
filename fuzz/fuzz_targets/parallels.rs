#![no_main]
//! Fuzz target: `imgpack::fuzz_targets::parallels` (seeds: testdata/formats/parallels.hds.gz,
//! inflated, and the small images fuzz/seed.sh makes).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imgpack::fuzz_targets::parallels(data));
