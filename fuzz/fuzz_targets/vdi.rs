//! Fuzzes the VDI reader (seed corpus: testdata/formats/vdi-*.gz, inflated).
#![no_main]

mod disk_image;

libfuzzer_sys::fuzz_target!(|data: &[u8]| disk_image::exercise("vdi", data));
