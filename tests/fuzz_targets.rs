//! The fuzz targets (`imgpack::fuzz_targets`, also driven by cargo-fuzz in `fuzz/`), run on
//! stable over their seeds and thousands of deterministic mutations of them, plus every input
//! kept in `tests/regressions/` (each one a crash a fuzzer once found). A panic fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{mutations, names_in, texty, Layout, Rng};
use imgpack::fuzz_targets as target;

fn archive_seeds() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(5);
    let layouts = [
        Layout::new("small", 200_000).with(5000, texty(&mut rng, 70_000)),
        Layout::new("two chunks", 130_000)
            .with(0, vec![1; 10])
            .with(129_000, vec![2; 1000]),
        Layout::new("empty", 0),
    ];
    layouts
        .iter()
        .map(|layout| {
            use imgpack::input::{Body, Opened};
            let opened = Opened {
                layers: Vec::new(),
                inner: "raw",
                body: Body::Stream(Box::new(std::io::Cursor::new(layout.bytes()))),
            };
            let options = imgpack::ConvertOptions {
                chunk_size: 64 << 10,
                ..Default::default()
            };
            imgpack::convert::encode(opened, Vec::new(), &options).unwrap().0
        })
        .collect()
}

/// `tests/regressions/`, which must exist: a missing directory would silently stop every
/// crash input from being checked.
fn regressions_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    assert!(
        dir.join("README.md").is_file(),
        "{} is missing: it holds the inputs fuzzing found crashes with (see fuzz/README.md)",
        dir.display()
    );
    dir
}

/// The fuzz targets, by the names of their cargo-fuzz binaries in `fuzz/fuzz_targets/`.
fn fuzz_target_names() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let names: Vec<String> = names_in(&dir)
        .into_iter()
        .filter_map(|name| name.strip_suffix(".rs").map(str::to_string))
        .collect();
    assert!(!names.is_empty(), "no fuzz targets in {}", dir.display());
    names
}

/// Every input kept in `tests/regressions/TARGET/` (none yet for a target that never crashed).
fn regression_inputs(target: &str) -> Vec<Vec<u8>> {
    let dir = regressions_dir().join(target);
    if !dir.exists() {
        return Vec::new();
    }
    names_in(&dir)
        .iter()
        .map(|name| {
            let path = dir.join(name);
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

/// Runs `run` over the seeds, their mutations and the regressions, within a time budget.
fn exercise(name: &str, seeds: Vec<Vec<u8>>, per_seed: usize, run: impl Fn(&[u8])) {
    let start = Instant::now();
    let mut rng = Rng::new(name.len() as u64);
    // Regressions are filed under the cargo-fuzz target's name, so the two must agree.
    assert!(
        fuzz_target_names().iter().any(|t| t == name),
        "{name}: no such fuzz target"
    );
    let run_one = |input: &[u8]| {
        let one = Instant::now();
        run(input);
        assert!(
            one.elapsed() < Duration::from_secs(5),
            "{name}: one input took {:?}",
            one.elapsed()
        );
    };
    let mut count = 0;
    for input in regression_inputs(name) {
        run_one(&input);
        count += 1;
    }
    for seed in &seeds {
        run_one(seed);
        for m in mutations(seed, &mut rng, per_seed) {
            run_one(&m);
            count += 1;
        }
    }
    println!("{name}: {count} inputs in {:?}", start.elapsed());
}

#[test]
fn regressions_are_filed_under_fuzz_targets() {
    let targets = fuzz_target_names();
    let dir = regressions_dir();
    for name in names_in(&dir) {
        if name == "README.md" {
            continue;
        }
        assert!(
            targets.contains(&name) && dir.join(&name).is_dir(),
            "tests/regressions/{name}: not a directory named after a fuzz target ({targets:?})"
        );
        for input in names_in(&dir.join(&name)) {
            let path = dir.join(&name).join(&input);
            assert!(path.is_file(), "{}: not a regular file", path.display());
        }
    }
}

#[test]
fn archive_reader_survives_mutated_archives() {
    exercise("archive", archive_seeds(), 1500, target::archive);
}

#[test]
fn detection_survives_anything() {
    let seeds = vec![
        b"QFI\xfb\0\0\0\x03".to_vec(),
        vec![0x1f, 0x8b, 8, 0],
        b"KDMV".to_vec(),
        vec![0; 1024],
    ];
    exercise("detect", seeds, 500, target::detect_format);
}

#[test]
fn size_parsing_survives_anything() {
    let seeds = ["4M", "50G", "18446744073709551615", "1.5G", "16E", ""]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    exercise("size", seeds, 500, target::size_argument);
}

#[test]
fn any_bytes_round_trip_through_the_pipeline() {
    let mut rng = Rng::new(9);
    let seeds = vec![texty(&mut rng, 100_000), vec![0; 70_000], vec![]];
    exercise("convert", seeds, 40, target::convert_bytes);
}

#[test]
fn qcow2_reader_survives_mutated_images() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/qcow2");
    let seeds = ["v2-512.qcow2", "zlib-4k.qcow2", "zstd-extl2.qcow2"]
        .iter()
        .map(|name| std::fs::read(dir.join(name)).unwrap())
        .collect();
    exercise("qcow2", seeds, 300, target::qcow2);
}

/// A fixture from `testdata/formats`, gunzipped.
fn format_fixture(name: &str) -> Vec<u8> {
    use std::io::Read;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/formats")
        .join(format!("{name}.gz"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn vhd_reader_survives_mutated_images() {
    let seeds = vec![format_fixture("vhd-dynamic.vhd"), format_fixture("vhd-fixed.vhd")];
    exercise("vhd", seeds, 60, target::vhd);
}

#[test]
fn vdi_reader_survives_mutated_images() {
    let seeds = vec![
        format_fixture("vdi-dynamic.vdi"),
        format_fixture("vdi-static.vdi"),
    ];
    exercise("vdi", seeds, 60, target::vdi);
}

#[test]
fn vmdk_reader_survives_mutated_images() {
    let seeds = vec![
        format_fixture("vmdk-sparse.vmdk"),
        format_fixture("vmdk-stream.vmdk"),
    ];
    exercise("vmdk", seeds, 60, target::vmdk);
}

#[test]
fn parallels_reader_survives_mutated_images() {
    // The same image with the old signature, whose BAT entries count sectors, not clusters.
    let mut old_signature = format_fixture("parallels.hds");
    old_signature[..16].copy_from_slice(b"WithoutFreeSpace");
    let tracks = u32::from_le_bytes(old_signature[28..32].try_into().unwrap());
    let entries = u32::from_le_bytes(old_signature[32..36].try_into().unwrap()) as usize;
    for entry in old_signature[64..64 + 4 * entries].chunks_exact_mut(4) {
        let cluster = u32::from_le_bytes(entry.try_into().unwrap());
        entry.copy_from_slice(&(cluster * tracks).to_le_bytes());
    }
    let seeds = vec![format_fixture("parallels.hds"), old_signature];
    exercise("parallels", seeds, 60, target::parallels);
}

#[test]
fn vmdk_descriptor_parser_survives_mutated_text() {
    let mut seeds = Vec::new();
    for name in ["vmdk-sparse.vmdk", "vmdk-stream.vmdk"] {
        let image = format_fixture(name);
        let at = u64::from_le_bytes(image[28..36].try_into().unwrap()) as usize * 512;
        let len = u64::from_le_bytes(image[36..44].try_into().unwrap()) as usize * 512;
        let text = &image[at..at + len];
        let end = text.iter().position(|&b| b == 0).unwrap_or(len);
        seeds.push(text[..end].to_vec());
    }
    let flat = String::from_utf8_lossy(&seeds[0]).replace("SPARSE", "FLAT");
    seeds.push(flat.into_bytes());
    exercise("vmdk_descriptor", seeds, 300, target::vmdk_descriptor);
}

#[test]
fn vhdx_reader_survives_mutated_images() {
    let seeds = vec![
        format_fixture("vhdx-dynamic.vhdx"),
        format_fixture("vhdx-fixed.vhdx"),
    ];
    exercise("vhdx", seeds, 60, target::vhdx);
}

/// `image` in the compact sparse form of `fuzz_targets::images` (as `fuzz/pack_image.py`
/// writes it): format selector, length, then the non-zero 512-byte runs as pieces.
fn pack_image(selector: u8, image: &[u8]) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend_from_slice(&(image.len() as u32).to_le_bytes());
    for (i, sector) in image.chunks(512).enumerate() {
        if sector.iter().any(|&b| b != 0) {
            out.extend_from_slice(&((i * 512) as u32).to_le_bytes());
            out.extend_from_slice(&(sector.len() as u16).to_le_bytes());
            out.extend_from_slice(sector);
        }
    }
    out
}

/// One image per format of `fuzz_targets::PACKED_FORMATS`, in that order.
fn packed_originals() -> Vec<Vec<u8>> {
    let qcow2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/qcow2/zstd-extl2.qcow2");
    vec![
        std::fs::read(qcow2).unwrap(),
        format_fixture("vhd-dynamic.vhd"),
        format_fixture("vdi-dynamic.vdi"),
        format_fixture("vmdk-stream.vmdk"),
        format_fixture("vhdx-dynamic.vhdx"),
    ]
}

fn packed_seeds() -> Vec<Vec<u8>> {
    let originals = packed_originals().into_iter().enumerate();
    originals
        .map(|(selector, image)| pack_image(selector as u8, &image))
        .collect()
}

#[test]
fn packed_images_unpack_to_the_image_they_describe() {
    let cases = packed_seeds().into_iter().zip(packed_originals());
    for ((packed, original), format) in cases.zip(target::PACKED_FORMATS) {
        let (name, file) = target::unpack_image(&packed).unwrap();
        assert_eq!(name, format);
        assert!(file == original, "{format}: unpacked image differs");
    }
    // Pieces past the end are cut, a partial trailing piece is ignored, the length is capped.
    let mut odd = vec![0, 10, 0, 0, 0];
    odd.extend_from_slice(&[8, 0, 0, 0, 4, 0, 1, 2, 3, 4]);
    odd.extend_from_slice(&[0, 0, 0, 0, 9, 0, 7]);
    assert_eq!(
        target::unpack_image(&odd).unwrap().1,
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 2]
    );
    let huge = [0, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(target::unpack_image(&huge).unwrap().1.len(), 16 << 20);
    assert!(target::unpack_image(&[3, 1, 2]).is_none());
}

#[test]
fn every_image_reader_survives_mutated_packed_images() {
    exercise("images", packed_seeds(), 300, target::images);
}

#[test]
fn archive_reader_survives_mutated_resealed_archives() {
    let mut seeds = archive_seeds();
    for seed in &mut seeds {
        let before = seed.clone();
        target::reseal(seed);
        assert_eq!(*seed, before, "resealing an intact archive changes nothing");
    }
    exercise("archive_sealed", seeds, 1500, target::archive_sealed);
}

#[test]
fn stream_decoders_survive_mutated_streams() {
    use std::io::Write;
    let mut rng = Rng::new(11);
    let mut raw = vec![0u8; 130_000];
    raw[5000..45_000].copy_from_slice(&texty(&mut rng, 40_000));
    let qcow2 =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/qcow2/v2-512.qcow2")).unwrap();
    let gzip = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let xz = |data: &[u8]| {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let zstd = |data: &[u8]| zstd::encode_all(data, 3).unwrap();
    let seeds = vec![
        gzip(&raw),
        xz(&raw),
        zstd(&raw),
        gzip(&qcow2),
        xz(&qcow2),
        zstd(&qcow2),
        xz(&gzip(&raw)),
        zstd(&gzip(&raw[..1000])),
    ];
    exercise("streams", seeds, 150, target::streams);
}
