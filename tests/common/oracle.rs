//! Oracle tools and privileges: the one place a test decides it cannot run.
//!
//! A test that needs an external tool (qemu-img, gzip, ...) or a privilege (mounting a tmpfs)
//! asks [`have`] or calls [`skip`]. Without `IMGPACK_REQUIRE_ORACLES` a missing tool is a skip:
//! the test prints `skipped: ...` and returns. With `IMGPACK_REQUIRE_ORACLES=1` (as `.ci/run`
//! sets it) it is a failure, so a machine without the tools cannot go green having checked
//! nothing. Every skip is also appended to the file named by `IMGPACK_SKIP_LOG`, if set, because
//! libtest captures a passing test's output: `.ci/run` counts that file's lines.

use std::io::Write;
use std::path::Path;

/// Set to `1` to turn every skip into a failure.
pub const REQUIRE_ENV: &str = "IMGPACK_REQUIRE_ORACLES";
/// A file every skip appends one line to (`skipped: TEST: WHY`).
pub const SKIP_LOG_ENV: &str = "IMGPACK_SKIP_LOG";

/// Whether `tool` is an executable on the PATH; when it is not, [`skip`]s (which fails the
/// test under `IMGPACK_REQUIRE_ORACLES=1`).
pub fn have(tool: &str) -> bool {
    if on_path(tool) {
        return true;
    }
    skip(&format!("{tool} not found"));
    false
}

/// Whether every one of `tools` is on the PATH (the first missing one is reported).
pub fn have_all(tools: &[&str]) -> bool {
    tools.iter().all(|tool| have(tool))
}

/// Records that the current test cannot check what it is for, because of `why`; panics
/// instead when skipping is not allowed. The caller returns right after.
pub fn skip(why: &str) {
    let log = std::env::var_os(SKIP_LOG_ENV);
    skip_with(why, skipping_forbidden(), log.as_deref().map(Path::new));
}

/// [`skip`] with its environment spelled out: panics if `forbidden`, appends to `log` first.
pub fn skip_with(why: &str, forbidden: bool, log: Option<&Path>) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    let line = format!("skipped: {}::{test}: {why}", env!("CARGO_CRATE_NAME"));
    if let Some(log) = log {
        // O_APPEND writes of one short line do not interleave between test processes.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{SKIP_LOG_ENV}={}: {e}", log.display()));
        file.write_all(format!("{line}\n").as_bytes())
            .expect("writing the skip log");
    }
    if forbidden {
        panic!("{line} ({REQUIRE_ENV} is set, so a missing tool or privilege is a failure)");
    }
    println!("{line}");
}

/// Whether `IMGPACK_REQUIRE_ORACLES` asks for every oracle test to run.
pub fn skipping_forbidden() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether `tool` is an executable file in one of the PATH's directories.
pub fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(tool)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Runs `qemu-img ARGS`, failing the test with its error output if it fails. Check
/// [`have`]`("qemu-img")` first.
pub fn qemu_img(args: &[&str]) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The disk `qemu-img convert -O raw` reads from `image` (of qemu-img format `format`), made in
/// `dir`: the reference imgpack's readers are compared with.
pub fn qemu_raw(format: &str, image: &std::path::Path, dir: &std::path::Path) -> Vec<u8> {
    let reference = dir.join("reference.raw");
    qemu_img(&[
        "convert",
        "-f",
        format,
        "-O",
        "raw",
        image.to_str().unwrap(),
        reference.to_str().unwrap(),
    ]);
    std::fs::read(&reference).unwrap()
}
