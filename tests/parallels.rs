//! Parallels images read natively: images made by `qemu-img convert -O parallels` (signature
//! `WithouFreSpacExt`, BAT entries in clusters), the same images rewritten to the old signature
//! `WithoutFreeSpace` (BAT entries in sectors), and a dirty one, each byte-exact with what
//! `qemu-img convert -O raw` makes of that very file; `info` reports the facts. Skipped with a
//! notice when qemu-img is absent.

mod common;

use std::path::Path;
use std::process::Command;

use imgpack::{convert, extract, info, ConvertOptions, ErrorKind, ExtractOptions};

/// A 9 MiB + 512-byte disk with data straddling 64 KiB and 1 MiB clusters and in the last sector.
fn pattern() -> Vec<u8> {
    let size = (9 << 20) + 512;
    let mut disk = vec![0u8; size];
    let mut rng = common::Rng::new(77);
    for (offset, len) in [
        (0, 512),
        ((64 << 10) - 10, 20),
        ((1 << 20) - 300, 600),
        ((4 << 20) + 4096, 200_000),
        (size - 512, 512),
    ] {
        rng.fill(&mut disk[offset..offset + len]);
    }
    disk
}

/// Rewrites a `WithouFreSpacExt` image to the old `WithoutFreeSpace` signature: BAT entries
/// become sector numbers. Returns `None` where an entry would not fit in 32 bits.
fn to_old_signature(image: &[u8]) -> Option<Vec<u8>> {
    let mut old = image.to_vec();
    old[..16].copy_from_slice(b"WithoutFreeSpace");
    let tracks = u32::from_le_bytes(old[28..32].try_into().unwrap());
    let entries = u32::from_le_bytes(old[32..36].try_into().unwrap()) as usize;
    for i in 0..entries {
        let at = 64 + 4 * i;
        let entry = u32::from_le_bytes(old[at..at + 4].try_into().unwrap());
        old[at..at + 4].copy_from_slice(&entry.checked_mul(tracks)?.to_le_bytes());
    }
    Some(old)
}

fn roundtrip(image: &Path, dir: &Path) -> Vec<u8> {
    let archive = dir.join("out.imgpack");
    let raw = dir.join("out.raw");
    let _ = std::fs::remove_file(&archive);
    let _ = std::fs::remove_file(&raw);
    let report = convert(image, &archive, &ConvertOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    assert_eq!(report.format, "parallels");
    extract(&archive, &raw, &ExtractOptions::default()).unwrap();
    std::fs::read(raw).unwrap()
}

fn qemu_raw(image: &Path, dir: &Path) -> Vec<u8> {
    let reference = dir.join("reference.raw");
    common::qemu_img(&[
        "convert",
        "-f",
        "parallels",
        "-O",
        "raw",
        image.to_str().unwrap(),
        reference.to_str().unwrap(),
    ]);
    std::fs::read(reference).unwrap()
}

#[test]
fn both_signatures_and_dirty_images_match_qemu_img() {
    if !common::have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("pattern.raw");
    let disk = pattern();
    std::fs::write(&source, &disk).unwrap();
    for cluster in ["1M", "64k", "4k"] {
        let image = dir.path().join(format!("image-{cluster}.hds"));
        common::qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "parallels",
            "-o",
            &format!("cluster_size={cluster}"),
            source.to_str().unwrap(),
            image.to_str().unwrap(),
        ]);
        let bytes = std::fs::read(&image).unwrap();
        let old = dir.path().join(format!("old-{cluster}.hds"));
        std::fs::write(&old, to_old_signature(&bytes).unwrap()).unwrap();
        let mut dirty = bytes.clone();
        dirty[44..48].copy_from_slice(&0x746F_6E59u32.to_le_bytes());
        let dirty_path = dir.path().join(format!("dirty-{cluster}.hds"));
        std::fs::write(&dirty_path, dirty).unwrap();
        for (path, subformat, is_dirty) in [
            (&image, "WithouFreSpacExt", false),
            (&old, "WithoutFreeSpace", false),
            (&dirty_path, "WithouFreSpacExt", true),
        ] {
            let want = qemu_raw(path, dir.path());
            assert_eq!(want, disk, "{}: qemu-img's reading", path.display());
            let got = roundtrip(path, dir.path());
            assert!(got == want, "{}: bytes differ from qemu-img's", path.display());
            let described = info(path, &Default::default()).unwrap();
            assert_eq!(described.format, "parallels");
            assert_eq!(described.refusal, None);
            assert_eq!(described.virtual_size, Some(disk.len() as u64));
            assert_eq!(described.details["parallels_subformat"], subformat);
            assert_eq!(described.details["dirty"], is_dirty);
        }
    }
}

#[test]
fn an_empty_image_is_all_zeros() {
    if !common::have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("empty.hds");
    common::qemu_img(&["create", "-f", "parallels", image.to_str().unwrap(), "3M"]);
    let got = roundtrip(&image, dir.path());
    assert_eq!(got, qemu_raw(&image, dir.path()));
    assert!(got.iter().all(|&b| b == 0));
    assert_eq!(info(&image, &Default::default()).unwrap().disk_size, Some(0));
}

#[test]
fn a_wrong_format_extension_is_refused_as_qemu_refuses_it() {
    if !common::have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("ext.hds");
    common::qemu_img(&["create", "-f", "parallels", image.to_str().unwrap(), "3M"]);
    let mut bytes = std::fs::read(&image).unwrap();
    // ext_off: sector 1, inside the BAT's cluster, where there is no extension magic.
    bytes[56..64].copy_from_slice(&1u64.to_le_bytes());
    std::fs::write(&image, bytes).unwrap();
    let qemu = Command::new("qemu-img")
        .args(["convert", "-f", "parallels", "-O", "raw"])
        .arg(&image)
        .arg(dir.path().join("q.raw"))
        .output()
        .unwrap();
    assert!(!qemu.status.success(), "qemu-img accepted a bad format extension");
    let err = convert(
        &image,
        &dir.path().join("out.imgpack"),
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("format extension"), "{err}");
    assert_eq!(err.offset(), Some(512));
}
