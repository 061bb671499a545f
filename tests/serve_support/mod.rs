//! Helpers for the `serve` tests: a server process that is always killed (no strays), test
//! disks made by qemu-img, and running NBD clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::{qemu_img, random, texty, Layout, Rng};

/// A running `imgpack serve`, killed (SIGKILL) and reaped when dropped.
pub struct ServerProcess {
    child: Option<Child>,
    /// The URI from its `listening` event.
    pub uri: String,
    /// The socket it listens on.
    pub socket: PathBuf,
}

impl ServerProcess {
    /// Starts `imgpack serve SOURCE --socket SOCKET --json EXTRA...` and waits for its
    /// `listening` event.
    pub fn start(source: &Path, socket: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_imgpack"))
            .arg("serve")
            .arg(source)
            .arg("--socket")
            .arg(socket)
            .arg("--json")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start imgpack serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        if line.is_empty() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            let _ = child.wait();
            panic!("imgpack serve did not start: {err}");
        }
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["event"], "listening", "{line}");
        // Keep reading stdout in the background so the exit summary never blocks the server.
        let summary = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
            rest
        });
        drop(summary);
        ServerProcess {
            child: Some(child),
            uri: event["uri"].as_str().unwrap().to_string(),
            socket: socket.to_path_buf(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `signal` (by name, as `kill -s`), waits for the exit, and returns the status and
    /// standard error.
    pub fn stop_with(mut self, signal: &str) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-s", signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        (status, err)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a client; panics with its output unless it succeeds; returns its standard output.
pub fn client(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a client and returns whether it succeeded and its combined output.
pub fn client_status(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().expect(program);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A random sparse disk of `len` bytes: `regions` runs of text-like or random bytes at random
/// (unaligned) offsets, and one run of zeros inside data.
pub fn random_layout(seed: u64, len: u64, regions: usize) -> Layout {
    let mut rng = Rng::new(seed);
    let mut layout = Layout::new(&format!("random sparse {seed}"), len);
    for _ in 0..regions {
        let size = 1 + rng.below(300_000) as usize;
        let offset = rng.below(len - size as u64);
        let bytes = if rng.below(2) == 0 {
            texty(&mut rng, size)
        } else {
            random(&mut rng, size)
        };
        layout = layout.with(offset, bytes);
    }
    layout
}

/// Makes the test image: the layout as raw, converted by qemu-img to qcow2 (the upload),
/// converted by imgpack to an archive with `chunk_size`. Returns (raw, archive).
pub fn make_archive(dir: &Path, layout: &Layout, chunk_size: &str) -> (PathBuf, PathBuf) {
    let raw = dir.join("disk.raw");
    let qcow2 = dir.join("disk.qcow2");
    let archive = dir.join("disk.imgpack");
    layout.write_to(&raw);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(["convert", "--quiet", "--chunk-size", chunk_size])
        .arg(&qcow2)
        .arg("-o")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (raw, archive)
}

/// Parses `nbdinfo --map` output into (offset, length, type) rows.
pub fn parse_map(text: &str) -> Vec<(u64, u64, u32)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace();
            let offset = f.next().unwrap().parse().unwrap();
            let len = f.next().unwrap().parse().unwrap();
            let kind = f.next().unwrap().parse().unwrap();
            (offset, len, kind)
        })
        .collect()
}

/// Parses the hex dumps of `qemu-io -c 'read -v ...'` into (offset, byte) pairs.
pub fn parse_dump(text: &str) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((address, rest)) = line.split_once(":  ") else {
            continue;
        };
        let Ok(address) = u64::from_str_radix(address.trim(), 16) else {
            continue;
        };
        // The hex column ends at the two spaces before the ASCII column.
        let hex = rest.split("  ").next().unwrap_or("");
        for (i, byte) in hex.split_whitespace().enumerate() {
            out.push((address + i as u64, u8::from_str_radix(byte, 16).unwrap()));
        }
    }
    out
}
