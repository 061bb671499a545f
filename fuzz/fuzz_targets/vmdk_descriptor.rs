#![no_main]
//! Fuzz target: `imgpack::fuzz_targets::vmdk_descriptor` (seeds: the descriptors embedded in
//! testdata/formats/vmdk-*.gz, and edits of them naming other files).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imgpack::fuzz_targets::vmdk_descriptor(data));
