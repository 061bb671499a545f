//! No image is ever mistaken for raw: every format qemu-img probes is either read natively
//! (byte-exact with `qemu-img convert -O raw`) or refused naming the format, never converted as
//! a raw disk. Images qemu-img can write are made by qemu-img; the rest (Bochs, cloop, DMG) are
//! hand-built headers that satisfy qemu's probe rule, cited at each. Each image is also tried
//! inside gzip, which takes the stream path (spill, then the same reader or refusal).
//! Skipped with a notice when qemu-img is absent, except the hand-built cases.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use imgpack::{convert, extract, info, ConvertOptions, ErrorKind, ExtractOptions};

/// A 5 MiB + 1536-byte disk with data across 64 KiB and 1 MiB boundaries and in its last sector.
fn write_pattern(path: &Path) {
    let size = (5 << 20) + 1536;
    let mut disk = vec![0u8; size];
    let mut rng = common::Rng::new(12);
    for (offset, len) in [
        (0, 4096),
        ((1 << 20) - 7, 20),
        (3_000_000, 70_000),
        (size - 600, 600),
    ] {
        rng.fill(&mut disk[offset..offset + len]);
    }
    std::fs::write(path, &disk).unwrap();
}

fn gzipped(image: &Path) -> PathBuf {
    let out = image.with_extension("gz");
    let mut encoder =
        flate2::write::GzEncoder::new(std::fs::File::create(&out).unwrap(), flate2::Compression::fast());
    encoder.write_all(&std::fs::read(image).unwrap()).unwrap();
    encoder.finish().unwrap();
    out
}

/// Converts and extracts `image`, returning the disk's bytes and the reported format.
fn convert_and_extract(image: &Path, dir: &Path) -> imgpack::Result<(Vec<u8>, String)> {
    let archive = dir.join("out.imgpack");
    let raw = dir.join("out.raw");
    let _ = std::fs::remove_file(&archive);
    let _ = std::fs::remove_file(&raw);
    let report = convert(image, &archive, &ConvertOptions::default())?;
    extract(&archive, &raw, &ExtractOptions::default()).unwrap();
    Ok((std::fs::read(&raw).unwrap(), report.format))
}

/// `image` (and its gzipped copy) must be refused as an Unsupported `name` image, by `convert`
/// and in `info`'s `refusal`, and leave no archive behind.
fn assert_refused(image: &Path, dir: &Path, name: &str) {
    let gz = gzipped(image);
    for input in [image, gz.as_path()] {
        let err = convert_and_extract(input, dir)
            .err()
            .unwrap_or_else(|| panic!("{}: converted as a disk", input.display()));
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{}: {err}", input.display());
        assert!(
            err.to_string().contains(&format!("{name} images")),
            "{}: {err}",
            input.display()
        );
        assert!(!dir.join("out.imgpack").exists());
    }
    let described = info(image, &Default::default()).unwrap();
    assert_eq!(described.format, name);
    let refusal = described.refusal.unwrap_or_default();
    assert!(refusal.contains(&format!("{name} images")), "{refusal}");
}

#[test]
fn every_format_qemu_img_writes_is_read_exactly_or_refused_by_name() {
    if !common::have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("pattern.raw");
    write_pattern(&source);
    // (qemu-img format, creation options, imgpack's name, whether imgpack reads it)
    let cases = [
        ("qcow", "", "qcow", false),
        ("qed", "", "qed", false),
        ("parallels", "", "parallels", true),
        ("parallels", "cluster_size=64k", "parallels", true),
        ("vmdk", "", "vmdk", true),
        ("vpc", "", "vpc", true),
        ("vhdx", "", "vhdx", true),
        ("vdi", "", "vdi", true),
        ("qcow2", "", "qcow2", true),
    ];
    for (format, options, name, read) in cases {
        let image = dir.path().join(format!("image.{format}"));
        let mut args = vec!["convert", "-f", "raw", "-O", format];
        if !options.is_empty() {
            args.extend(["-o", options]);
        }
        args.extend([source.to_str().unwrap(), image.to_str().unwrap()]);
        common::qemu_img(&args);
        if !read {
            assert_refused(&image, dir.path(), name);
            continue;
        }
        let want = common::qemu_raw(format, &image, dir.path());
        let gz = gzipped(&image);
        for (input, expected_format) in [(&image, name.to_string()), (&gz, format!("gzip>{name}"))] {
            let (got, reported) =
                convert_and_extract(input, dir.path()).unwrap_or_else(|e| panic!("{format} {options}: {e}"));
            assert_eq!(reported, expected_format, "{format} {options}");
            assert_eq!(got.len(), want.len(), "{format} {options}: virtual size");
            assert!(got == want, "{format} {options}: bytes differ from qemu-img's");
        }
    }
}

#[test]
fn a_luks_image_is_refused_by_name() {
    if !common::have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.luks");
    common::qemu_img(&[
        "create",
        "-f",
        "luks",
        "--object",
        "secret,id=sec0,data=imgpack",
        "-o",
        "key-secret=sec0,iter-time=10",
        image.to_str().unwrap(),
        "4M",
    ]);
    assert_refused(&image, dir.path(), "luks");
}

/// A hand-built Bochs growing image: block/bochs.c `bochs_probe` wants 512 bytes starting with
/// the NUL-terminated magic "Bochs Virtual HD Image", type "Redolog" at 32, subtype "Growing"
/// at 48 and version 0x00020000 (little-endian) at 64.
fn bochs_image() -> Vec<u8> {
    let mut image = vec![0u8; 512];
    image[..22].copy_from_slice(b"Bochs Virtual HD Image");
    image[32..39].copy_from_slice(b"Redolog");
    image[48..55].copy_from_slice(b"Growing");
    image[64..68].copy_from_slice(&0x0002_0000u32.to_le_bytes());
    image[68..72].copy_from_slice(&512u32.to_le_bytes());
    image.extend(vec![0xffu8; 4096]); // a catalog of unallocated extents
    image
}

/// A hand-built cloop image: block/cloop.c `cloop_probe` wants the V2.0 shell-script preamble
/// "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
/// followed by more bytes.
fn cloop_image() -> Vec<u8> {
    let mut image =
        b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n".to_vec();
    image.resize(128, 0);
    image.extend_from_slice(&65536u32.to_be_bytes()); // block size
    image.extend_from_slice(&1u32.to_be_bytes()); // blocks
    image.resize(4096, 0);
    image
}

/// A hand-built DMG: qemu's `dmg_probe` goes by the `.dmg` file name, and `dmg_open` reads the
/// UDIF trailer, magic "koly" (big-endian 0x6b6f6c79), in the file's last 512 bytes. imgpack
/// never trusts names, so the trailer decides.
fn dmg_image() -> Vec<u8> {
    let mut image = vec![0x5au8; 8192];
    let mut trailer = vec![0u8; 512];
    trailer[..4].copy_from_slice(b"koly");
    trailer[4..8].copy_from_slice(&4u32.to_be_bytes()); // version
    trailer[8..12].copy_from_slice(&512u32.to_be_bytes()); // header size
    image.extend(trailer);
    image
}

#[test]
fn hand_built_bochs_cloop_and_dmg_headers_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("bochs", bochs_image()),
        ("cloop", cloop_image()),
        ("dmg", dmg_image()),
    ] {
        let image = dir.path().join(format!("image.{name}.img"));
        std::fs::write(&image, bytes).unwrap();
        if name == "dmg" {
            // The trailer is only seen at the end of a file: inside gzip, a DMG is unseen
            // (like a fixed VHD on standard input); only the file itself is checked.
            let Err(err) = convert_and_extract(&image, dir.path()) else {
                panic!("dmg: converted as a disk");
            };
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
            assert!(err.to_string().contains("dmg images"), "{err}");
            continue;
        }
        assert_refused(&image, dir.path(), name);
    }
}
