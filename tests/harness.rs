//! The test suites' own rules, checked: a skip goes through `tests/common/oracle.rs` (so CI
//! can forbid and count skips), and randomness through the one generator in
//! `tests/common/rng.rs`.

mod common;

use std::path::{Path, PathBuf};

use common::oracle::{on_path, skip_with};
use common::{damage, mutations, Rng};

#[test]
fn a_skip_is_a_failure_when_oracles_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips");
    let result = std::panic::catch_unwind(|| skip_with("frobnicator not found", true, Some(&log)));
    assert!(result.is_err(), "a forbidden skip returned");
    // Logged before failing, so the count in CI includes it.
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
}

#[test]
fn every_skip_is_logged_with_its_test() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips");
    skip_with("one not found", false, Some(&log));
    skip_with("two not found", false, Some(&log));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("skipped: harness::every_skip_is_logged_with_its_test: one"),
        "{text}"
    );
}

#[test]
fn tools_are_found_on_the_path_only() {
    assert!(on_path("sh"));
    assert!(!on_path("imgpack-no-such-tool"));
    assert!(!on_path("tmp"), "a directory is not a tool");
}

#[test]
fn the_generator_and_mutations_are_deterministic() {
    let seed = b"QFI\xfb some header bytes".to_vec();
    let (mut a, mut b) = (Rng::new(3), Rng::new(3));
    assert_eq!(mutations(&seed, &mut a, 50), mutations(&seed, &mut b, 50));
    assert_ne!(Rng::new(3).next(), Rng::new(4).next());
    let mut rng = Rng::new(9);
    for _ in 0..100 {
        let patches = damage(&mut rng, |rng| rng.below(10) as usize);
        assert!((1..=4).contains(&patches.len()));
        assert!(patches.iter().all(|&(at, _)| at < 10));
    }
}

/// Every `.rs` file under `tests/`, except the shared helpers in `tests/common/` and this file.
fn test_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path == root.join("common") || path == root.join("harness.rs") {
                continue;
            } else if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 10, "found only {files:?}");
    files
}

#[test]
fn tests_skip_and_draw_random_numbers_only_through_tests_common() {
    let forbidden = [
        ("\"skipped:", "prints its own skip notice: use common::skip/have"),
        ("fn have(", "has its own tool check: use common::have"),
        ("state ^= state <<", "has its own xorshift: use common::Rng"),
        (
            "fn mutations(",
            "has its own mutator: use common::mutations/damage",
        ),
    ];
    for file in test_sources() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (pattern, why) in forbidden {
            assert!(!text.contains(pattern), "{}: {why}", file.display());
        }
    }
}
