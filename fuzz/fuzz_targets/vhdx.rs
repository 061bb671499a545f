//! Fuzzes the VHDX reader (seed corpus: testdata/formats/vhdx-*.gz, inflated).
#![no_main]

mod disk_image;

libfuzzer_sys::fuzz_target!(|data: &[u8]| disk_image::exercise("vhdx", data));
