//! Fuzzes the VMDK reader (seed corpus: testdata/formats/vmdk-*.gz, inflated).
#![no_main]

mod disk_image;

libfuzzer_sys::fuzz_target!(|data: &[u8]| disk_image::exercise("vmdk", data));
