//! Export's O_DIRECT data path (`sys::DirectWriter`), on file systems that take O_DIRECT:
//! every planned format written into the target directory (on the disk, not a tmpfs /tmp) is
//! identical to the original for `qemu-img compare`, and its data never went through the page
//! cache (`fincore` finds only metadata pages resident); and a full file system refuses a
//! direct export with a clear error, leaving nothing. Direct writes are opt-in
//! (`IMGPACK_EXPORT_DIRECT=1`), so both tests switch them on first.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use common::{have_all, names_in, random, texty, Layout, Rng};
use imgpack::export::{ExportFormat, Subformat};
use imgpack::{convert, export, ConvertOptions, ErrorKind, ExportOptions};

/// Switches export's direct writes on for this test process (both tests want them).
fn direct_writes_on() {
    std::env::set_var("IMGPACK_EXPORT_DIRECT", "1");
}

/// Whether files in `dir` can be opened with O_DIRECT.
fn takes_o_direct(dir: &Path) -> bool {
    let probe = dir.join("probe");
    let ok = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(probe);
    ok
}

/// Bytes of `path` resident in the page cache, as `fincore` counts them.
fn resident(path: &Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fincore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn options(format: ExportFormat, subformat: Option<Subformat>) -> ExportOptions {
    ExportOptions {
        format,
        subformat,
        ..ExportOptions::default()
    }
}

#[test]
fn on_a_real_disk_the_data_bypasses_the_page_cache_and_every_planned_format_is_identical() {
    direct_writes_on();
    if !have_all(&["qemu-img", "fincore"]) {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    assert!(
        takes_o_direct(dir.path()),
        "the target directory's file system refuses O_DIRECT: this test needs one that takes it"
    );
    // 24 MiB and three sectors, data everywhere including the unaligned last page.
    let len = (24 << 20) + 1536;
    let mut rng = Rng::new(41);
    let mut layout = Layout::new("direct", len);
    let mut data = 0;
    for i in 0..12u64 {
        let n = (1 << 20) + rng.below(500_000) as usize;
        let at = i * (2 << 20) + rng.below(4096);
        let bytes = if i % 2 == 0 {
            random(&mut rng, n)
        } else {
            texty(&mut rng, n)
        };
        data += n as u64;
        layout = layout.with(at, bytes);
    }
    layout = layout.with(len - 700, random(&mut rng, 700));
    let original = dir.path().join("original.raw");
    layout.write_to(&original);
    let archive = dir.path().join("disk.imgpack");
    convert(&original, &archive, &ConvertOptions::default()).unwrap();
    for (name, qemu_format, opts) in [
        ("raw", "raw", options(ExportFormat::Raw, None)),
        ("qcow2", "qcow2", options(ExportFormat::Qcow2, None)),
        ("vhd dynamic", "vpc", options(ExportFormat::Vhd, None)),
        (
            "vhd fixed",
            "vpc",
            options(ExportFormat::Vhd, Some(Subformat::Fixed)),
        ),
        ("vhdx dynamic", "vhdx", options(ExportFormat::Vhdx, None)),
        (
            "vhdx fixed",
            "vhdx",
            options(ExportFormat::Vhdx, Some(Subformat::Fixed)),
        ),
        (
            "vmdk monolithicSparse",
            "vmdk",
            options(ExportFormat::Vmdk, Some(Subformat::MonolithicSparse)),
        ),
    ] {
        let out = dir.path().join("out");
        export(&archive, &out, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Written buffered, every data page would still be cached right after the export.
        let cached = resident(&out);
        assert!(
            cached < data / 8,
            "{name}: {cached} bytes of the output in the page cache, of {data} bytes of data"
        );
        let compare = Command::new("qemu-img")
            .args(["compare", "-f", qemu_format, "-F", "raw"])
            .args([&out, &original])
            .output()
            .unwrap();
        assert!(
            compare.status.success(),
            "{name}: qemu-img compare: {}{}",
            String::from_utf8_lossy(&compare.stdout),
            String::from_utf8_lossy(&compare.stderr)
        );
        std::fs::remove_file(out).unwrap();
    }
}

#[test]
fn a_full_file_system_refuses_a_direct_export_cleanly_and_leaves_nothing() {
    direct_writes_on();
    if !have_all(&["mount", "umount"]) {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        common::skip("cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN)");
        return;
    }
    let direct = takes_o_direct(&small);
    let mut rng = Rng::new(7);
    let original = dir.path().join("original.raw");
    Layout::new("full", 12 << 20)
        .with(0, random(&mut rng, 12 << 20))
        .write_to(&original);
    let archive = dir.path().join("disk.imgpack");
    convert(&original, &archive, &ConvertOptions::default()).unwrap();
    let mut results = Vec::new();
    for format in [ExportFormat::Raw, ExportFormat::Vhdx, ExportFormat::Vhd] {
        let out = small.join("x");
        results.push((
            format,
            export(&archive, &out, &options(format, None)),
            names_in(&small),
        ));
    }
    let _ = Command::new("umount").arg(&small).status();
    if !direct {
        // tmpfs takes O_DIRECT from Linux 6.6; before, this is the buffered path again.
        common::skip("this kernel's tmpfs refuses O_DIRECT");
        return;
    }
    for (format, result, left) in results {
        let err = result.expect_err("an export into a full file system succeeded");
        assert_eq!(err.kind(), ErrorKind::Io, "{format:?}: {err}");
        let chain = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(chain.contains("No space left"), "{format:?}: {chain}");
        assert!(left.is_empty(), "{format:?}: left behind: {left:?}");
    }
}
