#![no_main]
//! Fuzz target: `imgpack::fuzz_targets::qcow2`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imgpack::fuzz_targets::qcow2(data));
