//! Property tests: the fast code against a naive reference, on inputs proptest generates (and
//! shrinks to a minimal case when they disagree). Zero detection against the byte-by-byte
//! check, size parsing and formatting against a straightforward re-statement of their rules,
//! and the archive against the disk it was made from, over random sparse layouts.
//! Case counts are kept small so each property runs in a few seconds in a debug build.

mod common;

use common::Layout;
use imgpack::units::{format_size, parse_size};
use imgpack::zero::{is_zero, is_zero_naive};
use imgpack::{convert, extract, ConvertOptions, ErrorKind, ExtractOptions};
use proptest::prelude::*;

/// `cases` cases; a failure prints its shrunk input (copy it into an ordinary test) rather than
/// writing a `proptest-regressions/` file, which integration tests have no source tree for.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A buffer of zeros with a few bytes set, and a start offset into it (so the fast check also
/// runs on slices that are not 8-byte aligned).
fn mostly_zero() -> impl Strategy<Value = (Vec<u8>, usize)> {
    (0usize..9000).prop_flat_map(|len| {
        let pokes = proptest::collection::vec((0..len.max(1), 1u8..=255), 0..3);
        (Just(len), pokes, 0..8usize).prop_map(|(len, pokes, start)| {
            let mut bytes = vec![0u8; len];
            for (at, value) in pokes {
                if at < len {
                    bytes[at] = value;
                }
            }
            (bytes, start.min(len))
        })
    })
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn zero_detection_agrees_with_the_naive_check((bytes, start) in mostly_zero()) {
        let slice = &bytes[start..];
        prop_assert_eq!(is_zero(slice), is_zero_naive(slice));
    }
}

/// The suffixes `parse_size` accepts, with the power of two each stands for.
const SUFFIXES: &[(&str, u32)] = &[
    ("", 0),
    ("b", 0),
    ("k", 10),
    ("ki", 10),
    ("kib", 10),
    ("kb", 10),
    ("m", 20),
    ("mi", 20),
    ("mib", 20),
    ("mb", 20),
    ("g", 30),
    ("gi", 30),
    ("gib", 30),
    ("gb", 30),
    ("t", 40),
    ("ti", 40),
    ("tib", 40),
    ("tb", 40),
    ("p", 50),
    ("pi", 50),
    ("pib", 50),
    ("pb", 50),
    ("e", 60),
    ("ei", 60),
    ("eib", 60),
    ("eb", 60),
];

/// The reference: digits, then a suffix from the table in any case, surrounding whitespace
/// ignored; the value times the unit must fit in a u64 (computed in u128, digit by digit).
fn naive_parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    let suffix = text[digits.len()..].to_ascii_lowercase();
    let (_, shift) = SUFFIXES.iter().find(|(s, _)| *s == suffix)?;
    let mut value: u128 = 0;
    for digit in digits.bytes() {
        value = value * 10 + u128::from(digit - b'0');
        if value > u128::from(u64::MAX) {
            return None;
        }
    }
    u64::try_from(value << shift).ok()
}

/// Sizes as people type them: a number (small, or anywhere in u64), a suffix in random case,
/// sometimes surrounding spaces; and now and then arbitrary text.
fn size_text() -> impl Strategy<Value = String> {
    let number = prop_oneof![0u64..5000, any::<u64>(), Just(u64::MAX), Just(16)];
    let suffix = proptest::sample::select(SUFFIXES).prop_map(|(s, _)| s.to_string());
    let written = (number, suffix, any::<u64>(), 0usize..3, 0usize..3).prop_map(
        |(number, suffix, case_bits, before, after)| {
            let cased: String = suffix
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if case_bits >> i & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            format!("{}{number}{cased}{}", " ".repeat(before), "\t".repeat(after))
        },
    );
    prop_oneof![4 => written, 1 => "[ 0-9a-zA-Z.+-]{0,12}", 1 => any::<String>()]
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn size_parsing_agrees_with_the_reference(text in size_text()) {
        match (parse_size(&text), naive_parse_size(&text)) {
            (Ok(parsed), Some(want)) => prop_assert_eq!(parsed, want, "{:?}", text),
            (Err(error), None) => {
                prop_assert_eq!(error.kind(), ErrorKind::InvalidArgument);
                prop_assert!(error.to_string().contains("size"), "{}", error);
            }
            (parsed, want) => prop_assert!(false, "{:?}: parsed {:?}, reference {:?}", text, parsed.map_err(|e| e.to_string()), want),
        }
    }

    #[test]
    fn formatted_sizes_are_within_rounding_of_the_bytes(bytes in prop_oneof![0u64..4096, any::<u64>()]) {
        let text = format_size(bytes);
        if bytes < 1024 {
            prop_assert_eq!(text, format!("{bytes} B"));
        } else {
            let (number, unit) = text.split_once(' ').expect("number and unit");
            let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
            let power = units.iter().position(|u| *u == unit).expect("a binary unit") as i32 + 1;
            let value: f64 = number.parse().unwrap();
            prop_assert!(number.split_once('.').is_some_and(|(_, d)| d.len() == 2), "{}", text);
            // The largest unit the value reaches (1024.00 only by rounding up).
            prop_assert!((1.0..=1024.0).contains(&value), "{}", text);
            let exact = bytes as f64 / 1024f64.powi(power);
            prop_assert!((value - exact).abs() <= 0.005 + exact * 1e-12, "{} for {}", text, bytes);
        }
    }
}

/// A sparse disk: up to 3 MiB long, a few regions of random, repeated or single bytes.
fn sparse_layout() -> impl Strategy<Value = Layout> {
    (0u64..3 << 20).prop_flat_map(|len| {
        let region = (0..len.max(1), 1usize..150_000, 0u8..3, any::<u64>());
        proptest::collection::vec(region, 0..6).prop_map(move |regions| {
            let mut layout = Layout::new("generated", len);
            for (offset, size, kind, seed) in regions {
                if offset >= len {
                    continue;
                }
                let size = size.min((len - offset) as usize);
                let mut rng = common::Rng::new(seed);
                let bytes = match kind {
                    0 => common::random(&mut rng, size),
                    1 => vec![(seed as u8) | 1; size],
                    _ => {
                        let mut b = vec![0u8; size];
                        b[size - 1] = 1; // one byte at the end of a zero run
                        b
                    }
                };
                layout = layout.with(offset, bytes);
            }
            layout
        })
    })
}

proptest! {
    #![proptest_config(config(40))]

    #[test]
    fn archives_give_back_the_disk_they_were_made_from(
        layout in sparse_layout(),
        chunk_size in prop_oneof![Just(64u64 << 10), Just(128 << 10), Just(1 << 20)],
        threads in 1usize..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (raw, archive, restored) = (
            dir.path().join("disk.raw"),
            dir.path().join("disk.imgpack"),
            dir.path().join("restored.raw"),
        );
        layout.write_to(&raw);
        let options = ConvertOptions { chunk_size, threads: Some(threads), ..ConvertOptions::default() };
        let report = convert(&raw, &archive, &options).unwrap();
        // A raw disk is a whole number of 512-byte sectors, as qemu-img reads it: a file of
        // another length is the disk padded with zeros to the next sector.
        let disk = Layout { len: layout.len.next_multiple_of(512), ..layout.clone() };
        let disk_len = disk.len;
        prop_assert_eq!(report.virtual_size, disk_len);
        prop_assert_eq!(report.disk_size, disk.disk_size());
        let extracted = extract(&archive, &restored, &ExtractOptions::default()).unwrap();
        prop_assert_eq!(extracted.virtual_size, disk_len);
        prop_assert!(std::fs::read(&restored).unwrap() == disk.bytes(), "restored disk differs");
    }
}
