//! Truncated uploads are refused: images made by qemu-img (qcow2, VMDK, VHD, VHDX, VDI,
//! Parallels) cut at several points inside their metadata tables must fail with a Corrupt error
//! naming the table and carrying an offset, and leave no archive; while the tail qemu-img
//! legitimately leaves short (the bytes of a last cluster past the end of the virtual disk) is
//! still accepted, byte-exact with `qemu-img convert -O raw`. Before this, a qcow2 cut a few
//! bytes into an L2 table converted with exit 0 into a disk of zeros.
//! Skipped with a notice when qemu-img is absent.

mod common;

use std::path::Path;

use imgpack::{convert, extract, ConvertOptions, ErrorKind, ExtractOptions};

fn be32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_be_bytes(b[at..at + 4].try_into().unwrap()))
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}
fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A 5 MiB + 1536-byte disk with data in its first, middle and last clusters.
fn pattern() -> Vec<u8> {
    let size = (5 << 20) + 1536;
    let mut disk = vec![0u8; size];
    let mut rng = common::Rng::new(5);
    for (offset, len) in [
        (0, 8192),
        ((1 << 20) - 7, 20),
        (3_000_000, 70_000),
        (size - 1000, 1000),
    ] {
        rng.fill(&mut disk[offset..offset + len]);
    }
    disk
}

/// A table to cut into: what the error must name, where the table starts and its length.
struct Table {
    needle: &'static str,
    start: u64,
    len: u64,
}

fn table(needle: &'static str, start: u64, len: u64) -> Table {
    assert!(len > 0, "{needle}: empty");
    Table { needle, start, len }
}

/// The metadata tables of a qemu-img-made image of `format`, read from its bytes.
fn tables(format: &str, b: &[u8]) -> Vec<Table> {
    match format {
        "qcow2" => {
            let cluster = 1u64 << be32(b, 20);
            let l1 = be64(b, 40);
            let refcount_table = be64(b, 48);
            let first_l2 = be64(b, l1 as usize) & 0x00ff_ffff_ffff_fe00;
            let first_block = be64(b, refcount_table as usize) & !0x1ff;
            vec![
                table("refcount table", refcount_table, be32(b, 56) * cluster),
                table("refcount block 0", first_block, cluster),
                table("L1 table", l1, be32(b, 36) * 8),
                table("the L2 table of L1 entry 0", first_l2, cluster),
            ]
        }
        "vpc" => {
            let header = be64(b, 16) as usize;
            let bat = be64(b, header + 16);
            vec![table("VHD block allocation table", bat, be32(b, header + 28) * 4)]
        }
        "vdi" => vec![table("VDI block map", le32(b, 340), le32(b, 384) * 4)],
        "vmdk" => {
            let directory = le64(b, 56) * 512;
            let first_table = le32(b, directory as usize) * 512;
            vec![
                table("VMDK grain directory", directory, 4),
                table("VMDK grain table", first_table, le32(b, 44) * 4),
            ]
        }
        "vhdx" => {
            // qemu-img puts the BAT before the metadata region, which is read first (it sizes
            // the BAT): a cut in either names the metadata table.
            let regions = 192 << 10;
            let count = le32(b, regions + 8) as usize;
            let region = |guid_start: &[u8]| {
                (0..count)
                    .map(|i| regions + 16 + 32 * i)
                    .find(|&at| b[at..].starts_with(guid_start))
                    .map(|at| (le64(b, at + 16), le32(b, at + 24)))
                    .unwrap()
            };
            let (bat, _) = region(&[0x66, 0x77, 0xc2, 0x2d]);
            let (metadata, metadata_len) = region(&[0x06, 0xa2, 0x7c, 0x8b]);
            assert!(bat < metadata, "qemu-img's VHDX layout changed");
            vec![
                table("VHDX metadata table", bat, 64),
                table("VHDX metadata table", metadata, metadata_len.min(64 << 10)),
            ]
        }
        "parallels" => vec![table("Parallels BAT", 64, le32(b, 32) * 4)],
        other => panic!("no tables for {other}"),
    }
}

/// Converts `image`; returns the disk on success.
fn try_convert(image: &Path, dir: &Path) -> imgpack::Result<Vec<u8>> {
    let archive = dir.join("out.imgpack");
    let raw = dir.join("out.raw");
    let _ = std::fs::remove_file(&raw);
    let result = convert(image, &archive, &ConvertOptions::default());
    if result.is_err() {
        assert!(!archive.exists(), "{}: an archive was left", image.display());
    }
    result?;
    extract(&archive, &raw, &ExtractOptions::default()).unwrap();
    std::fs::remove_file(&archive).unwrap();
    Ok(std::fs::read(&raw).unwrap())
}

#[test]
fn images_cut_inside_their_tables_are_refused_naming_the_table() {
    if !common::have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("pattern.raw");
    std::fs::write(&source, pattern()).unwrap();
    let cases = [
        ("qcow2", "cluster_size=64k"),
        ("qcow2", "cluster_size=4k,refcount_bits=64"),
        ("vmdk", "subformat=monolithicSparse"),
        ("vmdk", "subformat=streamOptimized"),
        ("vpc", "subformat=dynamic"),
        ("vhdx", "subformat=dynamic"),
        ("vdi", "static=off"),
        ("parallels", "cluster_size=64k"),
    ];
    let cut_image = dir.path().join("cut.img");
    for (format, options) in cases {
        let image = dir.path().join(format!("image.{format}"));
        common::qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            format,
            "-o",
            options,
            source.to_str().unwrap(),
            image.to_str().unwrap(),
        ]);
        let bytes = std::fs::read(&image).unwrap();
        let reference = dir.path().join("reference.raw");
        common::qemu_img(&[
            "convert",
            "-f",
            format,
            "-O",
            "raw",
            image.to_str().unwrap(),
            reference.to_str().unwrap(),
        ]);
        let whole = try_convert(&image, dir.path()).unwrap();
        assert!(whole == std::fs::read(&reference).unwrap(), "{format} {options}");
        let all = tables(format, &bytes);
        for t in &all {
            let end = t.start + t.len;
            let cuts = [t.start + 1, t.start + 3, t.start + t.len / 2, end - 1];
            for cut in cuts.into_iter().filter(|&c| c > t.start && c < end) {
                std::fs::write(&cut_image, &bytes[..cut as usize]).unwrap();
                let what = format!("{format} {options} cut at {cut} inside {}", t.needle);
                let err = try_convert(&cut_image, dir.path())
                    .err()
                    .unwrap_or_else(|| panic!("{what}: converted"));
                assert_eq!(err.kind(), ErrorKind::Corrupt, "{what}: {err}");
                // The error names this table or a later one that the cut also removed.
                let message = err.to_string();
                let missing = all.iter().filter(|u| u.start + u.len > cut);
                assert!(
                    missing.clone().any(|u| message.contains(u.needle)),
                    "{what}: {message}"
                );
                assert!(
                    [
                        "outside the file",
                        "past the end of the file",
                        "beyond the end of the file"
                    ]
                    .iter()
                    .any(|phrase| message.contains(phrase)),
                    "{what}: {message}"
                );
                assert!(err.offset().is_some(), "{what}: no offset in {message}");
            }
        }
    }
}

#[test]
fn a_stream_optimized_vmdk_cut_inside_a_grain_is_refused() {
    if !common::have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("pattern.raw");
    std::fs::write(&source, pattern()).unwrap();
    let image = dir.path().join("image.vmdk");
    common::qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        source.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&image).unwrap();
    // Every stored grain of the first grain table: a marker (sector u64, size u32), then data.
    let directory = le64(&bytes, 56) as usize * 512;
    let table = le32(&bytes, directory) as usize * 512;
    let grains: Vec<usize> = (0..le32(&bytes, 44) as usize)
        .map(|i| le32(&bytes, table + 4 * i) as usize * 512)
        .filter(|&at| at != 0)
        .collect();
    assert!(grains.len() >= 4, "qemu-img stored {} grains", grains.len());
    let cut_image = dir.path().join("cut.vmdk");
    for at in grains {
        let size = le32(&bytes, at + 8) as usize;
        for cut in [at + 6, at + 12 + size / 2] {
            std::fs::write(&cut_image, &bytes[..cut]).unwrap();
            let err = match try_convert(&cut_image, dir.path()) {
                Ok(_) => panic!("cut at {cut} inside the grain at {at}: converted"),
                Err(e) => e,
            };
            assert_eq!(err.kind(), ErrorKind::Corrupt, "cut at {cut}: {err}");
            assert!(err.to_string().contains("grain"), "cut at {cut}: {err}");
            assert!(err.offset().is_some(), "cut at {cut}: {err}");
        }
    }
}

/// The bytes of each format's last cluster (or block) past the end of the virtual disk may be
/// missing: qemu-img reads them as zeros and never shows them, so such a file is accepted.
#[test]
fn a_last_cluster_cut_after_the_end_of_the_disk_is_accepted() {
    if !common::have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("pattern.raw");
    let disk = pattern();
    std::fs::write(&source, &disk).unwrap();
    for (format, options) in [
        ("qcow2", "cluster_size=64k"),
        ("vdi", "static=off"),
        ("parallels", "cluster_size=1M"),
    ] {
        let image = dir.path().join(format!("tail.{format}"));
        common::qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            format,
            "-o",
            options,
            source.to_str().unwrap(),
            image.to_str().unwrap(),
        ]);
        let bytes = std::fs::read(&image).unwrap();
        // The disk's last 1536 bytes are the first of its last cluster; find where that
        // cluster is stored by its content, and cut the file just after the disk's end.
        let last = &disk[disk.len() - 1536..];
        let host = bytes
            .windows(last.len())
            .rposition(|w| w == last)
            .unwrap_or_else(|| panic!("{format}: last cluster not found"));
        let cut = host + last.len();
        assert!(cut < bytes.len(), "{format}: nothing to cut");
        let cut_image = dir.path().join(format!("tail-cut.{format}"));
        std::fs::write(&cut_image, &bytes[..cut]).unwrap();
        let want = common::qemu_raw(format, &cut_image, dir.path());
        assert!(want == disk, "{format}: qemu-img reads the cut file differently");
        let got = try_convert(&cut_image, dir.path()).unwrap_or_else(|e| panic!("{format}: {e}"));
        assert!(got == want, "{format}: bytes differ from qemu-img's");
    }
}

/// A refcount block cut short by the end of the file is refused naming it, even though the
/// reader never needs refcounts: qemu-img writes every refcount block whole, so a short one
/// means the file was cut (here the file ends half-way into the block the table names).
#[test]
fn a_refcount_block_past_the_end_is_refused() {
    if !common::have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.qcow2");
    common::qemu_img(&["create", "-f", "qcow2", image.to_str().unwrap(), "4M"]);
    let mut bytes = std::fs::read(&image).unwrap();
    let cluster = 1u64 << be32(&bytes, 20);
    let table = be64(&bytes, 48) as usize;
    let block = bytes.len() as u64;
    bytes.extend(vec![0u8; cluster as usize / 2]);
    bytes[table..table + 8].copy_from_slice(&block.to_be_bytes());
    let cut = dir.path().join("cut.qcow2");
    std::fs::write(&cut, &bytes).unwrap();
    let err = try_convert(&cut, dir.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("refcount block 0"), "{err}");
    assert_eq!(err.offset(), Some(table as u64));
}
