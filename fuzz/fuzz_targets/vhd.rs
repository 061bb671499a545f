//! Fuzzes the VHD reader (seed corpus: testdata/formats/vhd-*.gz, inflated).
#![no_main]

mod disk_image;

libfuzzer_sys::fuzz_target!(|data: &[u8]| disk_image::exercise("vpc", data));
