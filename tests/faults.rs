//! Faults while writing and reading: a file-size limit, a full file system, and an input that
//! fails part-way. Each ends in an error, with no output and no temporary file left behind.

mod common;

use std::io::{self, Read};
use std::path::Path;
use std::process::Command;

use common::{names_in, random, Layout, Rng};
use imgpack::input::{Body, Opened};
use imgpack::{ConvertOptions, ErrorKind};

fn incompressible(path: &Path, len: usize) {
    let mut rng = Rng::new(21);
    Layout::new("random", len as u64)
        .with(0, random(&mut rng, len))
        .write_to(path);
}

#[test]
fn a_file_size_limit_mid_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.raw");
    incompressible(&input, 8 << 20);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let output = out_dir.join("x.imgpack");
    // ulimit -f counts 1 KiB blocks: the archive may grow to 1 MiB, far less than it needs.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -f 1024 && exec {} convert {} -o {} --quiet",
            env!("CARGO_BIN_EXE_imgpack"),
            input.display(),
            output.display()
        ))
        .status()
        .unwrap();
    assert!(!status.success(), "conversion past the file-size limit succeeded");
    assert!(
        names_in(&out_dir).is_empty(),
        "left behind: {:?}",
        names_in(&out_dir)
    );
}

#[test]
fn a_full_file_system_gives_a_clear_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", small.to_str().unwrap()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        common::skip("cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN)");
        return;
    }
    let input = dir.path().join("in.raw");
    incompressible(&input, 4 << 20);
    let output = small.join("x.imgpack");
    let result = imgpack::convert(&input, &output, &ConvertOptions::default());
    let left = names_in(&small);
    let _ = Command::new("umount").arg(&small).status();
    let err = result.expect_err("conversion into a full file system succeeded");
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(chain.contains("No space left"), "{chain}");
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A reader that fails after `good` bytes, like a dropped upload or a failing disk.
struct FailingReader {
    good: usize,
    given: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.given >= self.good {
            return Err(io::Error::other("device went away"));
        }
        let n = buf.len().min(self.good - self.given).min(10_000);
        buf[..n].fill(0x5a);
        self.given += n;
        Ok(n)
    }
}

#[test]
fn an_input_failing_part_way_is_an_error_not_a_short_archive() {
    for good in [0, 1, 4096, 1 << 20, (3 << 20) + 17] {
        let opened = Opened {
            layers: Vec::new(),
            inner: "raw",
            body: Body::Stream(Box::new(FailingReader { good, given: 0 })),
        };
        let err = imgpack::convert::encode(opened, Vec::new(), &ConvertOptions::default())
            .expect_err("a failing input produced an archive");
        assert_eq!(err.kind(), ErrorKind::Io, "after {good} bytes: {err}");
        assert!(err.to_string().contains("input"), "{err}");
    }
}
