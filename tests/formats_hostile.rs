//! Hostile VHD, VDI, VMDK, VHDX and Parallels images: the committed fixtures (testdata/formats, made by
//! make.sh with qemu-img) truncated at every structure boundary, poked in their headers and
//! tables, mutated at random, and edited to name other files. Each must give an error of the
//! right kind quickly, never a panic, never wrong bytes and never a read of another file.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{damage, Rng};
use imgpack::input::detect::Format;
use imgpack::input::route::open_image;
use imgpack::input::{DiskSource, InputLimits};
use imgpack::read_at::ReadAt;
use imgpack::{ConvertOptions, ErrorKind};
use sha2::{Digest, Sha256};

const FIXTURES: &[(&str, Format)] = &[
    ("vhd-dynamic.vhd", Format::Vhd),
    ("vhd-fixed.vhd", Format::Vhd),
    ("vdi-dynamic.vdi", Format::Vdi),
    ("vdi-static.vdi", Format::Vdi),
    ("vmdk-sparse.vmdk", Format::Vmdk),
    ("vmdk-stream.vmdk", Format::Vmdk),
    ("vhdx-dynamic.vhdx", Format::Vhdx),
    ("vhdx-fixed.vhdx", Format::Vhdx),
    ("parallels.hds", Format::Parallels),
];

/// Opens `file` as `format` with the reader the input layer routes it to, under `limit`.
fn open_native<R: ReadAt + 'static>(
    format: Format,
    file: R,
    limit: u64,
) -> imgpack::Result<Box<dyn DiskSource>> {
    let limits = InputLimits {
        max_virtual_size: limit,
    };
    open_image(format, file, Path::new("image"), &limits)
}

/// The virtual-size limit hostile variants are opened with: large enough for every fixture and
/// for pokes that grow the disk, small enough that walking a poked disk stays quick.
const LIMIT: u64 = 16 << 30;

/// A fixture's bytes, inflated once per test binary (inflating is slow in debug builds).
fn fixture(name: &str) -> Vec<u8> {
    static CACHE: Mutex<Vec<(String, Arc<Vec<u8>>)>> = Mutex::new(Vec::new());
    if let Some((_, bytes)) = CACHE.lock().unwrap().iter().find(|(n, _)| n == name) {
        return bytes.to_vec();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/formats")
        .join(format!("{name}.gz"));
    let gz = std::fs::read(path).unwrap();
    // make.sh writes `gzip -n`: a 10-byte header without a name, then raw deflate, then the
    // crc32 and size. The crc32 is skipped (it is very slow in debug builds); the tests check
    // the disks' sha256 instead.
    assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0], "{name}: unexpected gzip header");
    let size = u32::from_le_bytes(gz[gz.len() - 4..].try_into().unwrap()) as usize;
    let mut out = vec![0u8; size];
    let mut inflater = flate2::Decompress::new(false);
    let status = inflater
        .decompress(&gz[10..], &mut out, flate2::FlushDecompress::Finish)
        .unwrap();
    assert_eq!(status, flate2::Status::StreamEnd, "{name}");
    assert_eq!(inflater.total_out() as usize, size, "{name}");
    CACHE
        .lock()
        .unwrap()
        .push((name.to_string(), Arc::new(out.clone())));
    out
}

fn expected_sha256(name: &str) -> String {
    let sums =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/formats/SHA256SUMS"))
            .unwrap();
    sums.lines()
        .find_map(|l| l.strip_suffix(name).map(|h| h.trim().to_string()))
        .unwrap_or_else(|| panic!("no sum for {name}"))
}

/// A fixture cut to `len` bytes with a few bytes replaced, without copying it.
struct Variant {
    base: Arc<Vec<u8>>,
    len: usize,
    patches: Vec<(usize, u8)>,
}

impl Variant {
    fn new(base: &Arc<Vec<u8>>) -> Variant {
        Variant {
            base: base.clone(),
            len: base.len(),
            patches: Vec::new(),
        }
    }
}

impl ReadAt for Variant {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if self.read_at_most(buf, offset)? < buf.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "past the end",
            ));
        }
        Ok(())
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let n = self.base[..self.len].read_at_most(buf, offset)?;
        for &(at, value) in &self.patches {
            if let Some(i) = (at as u64).checked_sub(offset).filter(|&i| i < n as u64) {
                buf[i as usize] = value;
            }
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.len as u64
    }
}

/// Every byte of a disk, walking it as the pipeline does (skipping what `next_data` skips).
fn read_disk(source: &dyn DiskSource) -> imgpack::Result<Vec<u8>> {
    const CHUNK: u64 = 256 << 10;
    let size = source.virtual_size();
    let mut out = vec![0u8; size as usize];
    let mut scratch = Vec::new();
    let mut position = 0;
    while let Some(at) = source.next_data(position)? {
        if at >= size {
            break;
        }
        let start = at / CHUNK * CHUNK;
        let len = CHUNK.min(size - start) as usize;
        let data = source.read(start, len, &mut scratch)?;
        out[start as usize..start as usize + len].copy_from_slice(data);
        position = start + CHUNK;
    }
    Ok(out)
}

/// Opens and reads a possibly hostile image; small disks are read whole, large ones only
/// where `next_data` leads, a few chunks deep. Returns the disk when read whole.
fn try_image(format: Format, bytes: Vec<u8>) -> imgpack::Result<Option<Vec<u8>>> {
    probe(format, bytes, true)
}

/// Like [`try_image`]; with `whole` false, reads only a few chunks where `next_data` leads
/// (enough to reach the decoders) so that sweeps over thousands of variants stay fast.
fn probe<R: ReadAt + 'static>(format: Format, bytes: R, whole: bool) -> imgpack::Result<Option<Vec<u8>>> {
    let source = open_native(format, bytes, LIMIT)?;
    if whole && source.virtual_size() <= 64 << 20 {
        return read_disk(source.as_ref()).map(Some);
    }
    // A scratch buffer kept across probes, as the pipeline's workers keep theirs (growing a
    // fresh one is slow in debug builds).
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| walk_a_little(source.as_ref(), &mut cell.borrow_mut()))?;
    Ok(None)
}

fn walk_a_little(source: &dyn DiskSource, scratch: &mut Vec<u8>) -> imgpack::Result<()> {
    let mut position = 0;
    for _ in 0..2 {
        match source.next_data(position)? {
            Some(at) if at < source.virtual_size() => {
                let len = (256u64 << 10).min(source.virtual_size() - at) as usize;
                source.read(at, len, scratch)?;
                position = at + (256 << 10);
            }
            _ => break,
        }
    }
    Ok(())
}

/// Runs `f` on every fixture, one thread each.
fn each_fixture(f: impl Fn(&str, Format, Arc<Vec<u8>>) + Sync) {
    std::thread::scope(|scope| {
        for &(file, format) in FIXTURES {
            let f = &f;
            scope.spawn(move || f(file, format, Arc::new(fixture(file))));
        }
    });
}

fn assert_refused(name: Format, bytes: Vec<u8>, kind: ErrorKind, needle: &str) {
    let err = match try_image(name, bytes) {
        Err(e) => e,
        Ok(_) => panic!("{name}: accepted, expected {kind:?} ({needle})"),
    };
    assert_eq!(err.kind(), kind, "{name}: {err}");
    assert!(err.to_string().contains(needle), "{name}: {err} lacks {needle:?}");
}

fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}

#[test]
fn fixtures_read_as_recorded() {
    for &(file, format) in FIXTURES {
        let bytes = fixture(file);
        let head = &bytes[..512];
        let tail = &bytes[bytes.len() - 512..];
        let detected = imgpack::input::detect::detect(head, Some(tail)).unwrap();
        assert_eq!(detected, format, "{file}");
        let disk = try_image(format, bytes).unwrap().unwrap();
        assert_eq!(hex(&Sha256::digest(&disk)), expected_sha256(file), "{file}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn truncations_give_an_error_or_the_same_disk() {
    each_fixture(|file, name, bytes| {
        let whole = probe(name, Variant::new(&bytes), true).unwrap().unwrap();
        let mut cuts: Vec<usize> = (0..8 * 1024).step_by(512).collect();
        cuts.extend(
            (0..bytes.len().min(1 << 20))
                .step_by(64 << 10)
                .flat_map(|c| [c, c + 1, c + 4096]),
        );
        cuts.extend((0..bytes.len()).step_by(1 << 20).flat_map(|c| [c, c + 512]));
        cuts.extend((1..=8).map(|k| bytes.len().saturating_sub(k * 512)));
        cuts.extend([1, 7, 100, 511, 513, bytes.len() - 1]);
        for cut in cuts.into_iter().filter(|&c| c < bytes.len()) {
            let start = Instant::now();
            let variant = Variant {
                len: cut,
                ..Variant::new(&bytes)
            };
            if let Ok(Some(disk)) = probe(name, variant, true) {
                assert!(
                    disk == whole,
                    "{file} cut at {cut}: read different bytes without an error"
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{file} cut at {cut}: slow"
            );
        }
    });
}

#[test]
fn poked_headers_never_panic_or_hang() {
    each_fixture(|file, name, bytes| {
        let mut spots: Vec<usize> = (0..512).step_by(2).collect();
        spots.extend((bytes.len() - 1536..bytes.len()).step_by(8));
        if name == Format::Vhdx {
            spots.extend((64 << 10)..(64 << 10) + 80);
            spots.extend((192 << 10)..(192 << 10) + 80);
        }
        for at in spots {
            let mut poked = Variant::new(&bytes);
            poked.patches.push((at, if bytes[at] == 0xff { 0 } else { 0xff }));
            let start = Instant::now();
            let _ = probe(name, poked, false);
            assert!(start.elapsed() < Duration::from_secs(5), "{file} byte {at}: slow");
        }
    });
}

#[test]
fn random_mutations_never_panic_or_hang() {
    each_fixture(|file, name, bytes| {
        let mut rng = Rng::new(bytes.len() as u64);
        for _ in 0..100 {
            let mut mutated = Variant::new(&bytes);
            // Mostly the structures: the first 1 MiB and the last 1.5 KiB.
            mutated.patches = damage(&mut rng, |rng| {
                if rng.below(4) == 0 {
                    bytes.len() - 1 - rng.below(1536) as usize
                } else {
                    rng.below(bytes.len().min(1 << 20) as u64) as usize
                }
            });
            let start = Instant::now();
            let _ = probe(name, mutated, true);
            assert!(start.elapsed() < Duration::from_secs(5), "{file}: slow mutation");
        }
    });
}

#[test]
fn images_above_the_virtual_size_limit_are_refused() {
    for &(file, format) in FIXTURES {
        let err = open_native(format, fixture(file), 1 << 20).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{file}: {err}");
    }
}

// ---- VMDK ----

fn vmdk_descriptor_edit(from: &str, to: &str) -> Vec<u8> {
    let mut bytes = fixture("vmdk-sparse.vmdk");
    let desc_at = u64::from_le_bytes(bytes[28..36].try_into().unwrap()) as usize * 512;
    let desc_len = u64::from_le_bytes(bytes[36..44].try_into().unwrap()) as usize * 512;
    let text = String::from_utf8_lossy(&bytes[desc_at..desc_at + desc_len]).to_string();
    let end = text.find('\0').unwrap();
    let edited = text[..end].replace(from, to);
    assert_ne!(edited, text[..end], "{from:?} not in the descriptor");
    assert!(edited.len() <= desc_len);
    bytes[desc_at..desc_at + desc_len].fill(0);
    put(&mut bytes, desc_at, edited.as_bytes());
    bytes
}

fn sparse_extent_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().find(|l| l.starts_with("RW ")).unwrap().to_string()
}

#[test]
fn vmdk_descriptors_naming_other_files_are_refused() {
    let line = sparse_extent_line(&fixture("vmdk-sparse.vmdk"));
    let flat = vmdk_descriptor_edit(&line, "RW 6147 FLAT \"/etc/passwd\" 0");
    assert_refused(Format::Vmdk, flat, ErrorKind::Unsupported, "/etc/passwd");
    let two = vmdk_descriptor_edit(&line, &format!("{line}\nRW 6147 SPARSE \"/etc/shadow\""));
    assert_refused(Format::Vmdk, two, ErrorKind::Unsupported, "extents");
    let parent = vmdk_descriptor_edit(
        "parentCID=ffffffff",
        "parentCID=ffffffff\nparentFileNameHint=\"/etc/hosts\"",
    );
    assert_refused(Format::Vmdk, parent, ErrorKind::Unsupported, "parent");
    let split = vmdk_descriptor_edit("monolithicSparse", "twoGbMaxExtentSparse");
    assert_refused(
        Format::Vmdk,
        split,
        ErrorKind::Unsupported,
        "twoGbMaxExtentSparse",
    );
}

#[test]
fn a_vmdk_descriptor_file_is_refused_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("disk.vmdk");
    std::fs::write(
        &input,
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\
         RW 100 FLAT \"/etc/passwd\" 0\n",
    )
    .unwrap();
    let output = dir.path().join("out.imgpack");
    let err = imgpack::convert(&input, &output, &ConvertOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(!output.exists());
}

#[test]
fn vmdk_header_damage_is_refused() {
    let base = fixture("vmdk-sparse.vmdk");
    let cases: [(usize, &[u8], ErrorKind, &str); 6] = [
        (12, &0u64.to_le_bytes(), ErrorKind::Unsupported, "capacity 0"),
        (12, &u64::MAX.to_le_bytes(), ErrorKind::Corrupt, "overflows"),
        (20, &(1u64 << 40).to_le_bytes(), ErrorKind::Corrupt, "grain"),
        (44, &0u32.to_le_bytes(), ErrorKind::Corrupt, "grain table"),
        (44, &4096u32.to_le_bytes(), ErrorKind::Corrupt, "grain table"),
        (
            56,
            &(1u64 << 40).to_le_bytes(),
            ErrorKind::Corrupt,
            "grain directory",
        ),
    ];
    for (at, value, kind, needle) in cases {
        let mut bytes = base.clone();
        put(&mut bytes, at, value);
        assert_refused(Format::Vmdk, bytes, kind, needle);
    }
    let mut version = base.clone();
    put(&mut version, 4, &7u32.to_le_bytes());
    assert_refused(Format::Vmdk, version, ErrorKind::Unsupported, "version");
}

#[test]
fn vmdk_grain_tables_pointing_outside_the_file_are_refused() {
    let mut bytes = fixture("vmdk-sparse.vmdk");
    let gd = u64::from_le_bytes(bytes[56..64].try_into().unwrap()) as usize * 512;
    let gt = u32::from_le_bytes(bytes[gd..gd + 4].try_into().unwrap()) as usize * 512;
    let mut grain_entry = bytes.clone();
    put(&mut grain_entry, gt, &0x7fff_ffffu32.to_le_bytes());
    assert_refused(Format::Vmdk, grain_entry, ErrorKind::Corrupt, "outside the file");
    put(&mut bytes, gd, &0x7fff_ffffu32.to_le_bytes());
    assert_refused(Format::Vmdk, bytes, ErrorKind::Corrupt, "outside the file");
}

#[test]
fn damaged_stream_optimized_grains_are_refused() {
    let base = fixture("vmdk-stream.vmdk");
    // The first grain follows the overhead the header names.
    let first = u64::from_le_bytes(base[64..72].try_into().unwrap()) as usize * 512;
    let mut size = base.clone();
    put(&mut size, first + 8, &u32::MAX.to_le_bytes());
    assert_refused(Format::Vmdk, size, ErrorKind::Corrupt, "compressed grain");
    let mut data = base.clone();
    data[first + 12..first + 40].fill(0x5a);
    assert_refused(Format::Vmdk, data, ErrorKind::Corrupt, "grain");
    // The header at the start may defer to the footer for the grain directory.
    // qemu-img writes no footer, so build one as VMware does: footer marker, header, end of
    // stream, each a sector.
    let mut deferred = base.clone();
    let mut marker = vec![0u8; 512];
    put(&mut marker, 12, &3u32.to_le_bytes());
    deferred.extend_from_slice(&marker);
    deferred.extend_from_slice(&base[..512]);
    deferred.extend_from_slice(&[0u8; 512]);
    put(&mut deferred, 56, &u64::MAX.to_le_bytes());
    let want = try_image(Format::Vmdk, base.clone()).unwrap();
    assert_eq!(
        try_image(Format::Vmdk, deferred.clone()).unwrap(),
        want,
        "read through the footer"
    );
    let len = deferred.len();
    deferred[len - 1024..len - 1020].copy_from_slice(b"XXXX");
    assert_refused(Format::Vmdk, deferred, ErrorKind::Corrupt, "footer");
}

// ---- VHD ----

fn vhd_fix_checksum(bytes: &mut [u8], start: usize, len: usize, field: usize) {
    let sum = imgpack::input::vhd::checksum(&bytes[start..start + len], field);
    put(bytes, start + field, &sum.to_be_bytes());
}

#[test]
fn vhd_damage_is_refused() {
    let base = fixture("vhd-dynamic.vhd");
    let mut checksum = base.clone();
    checksum[40] ^= 1;
    assert_refused(Format::Vhd, checksum, ErrorKind::Checksum, "footer checksum");

    let mut differencing = base.clone();
    put(&mut differencing, 60, &4u32.to_be_bytes());
    vhd_fix_checksum(&mut differencing, 0, 512, 64);
    assert_refused(Format::Vhd, differencing, ErrorKind::Unsupported, "parent");

    let mut header = base.clone();
    header[512 + 100] ^= 1;
    assert_refused(Format::Vhd, header, ErrorKind::Checksum, "dynamic header");

    let header_edit = |at: usize, value: &[u8]| {
        let mut bytes = base.clone();
        put(&mut bytes, 512 + at, value);
        vhd_fix_checksum(&mut bytes, 512, 1024, 36);
        bytes
    };
    assert_refused(
        Format::Vhd,
        header_edit(32, &3u32.to_be_bytes()),
        ErrorKind::Corrupt,
        "block size",
    );
    assert_refused(
        Format::Vhd,
        header_edit(28, &1u32.to_be_bytes()),
        ErrorKind::Corrupt,
        "too small",
    );
    assert_refused(
        Format::Vhd,
        header_edit(28, &u32::MAX.to_be_bytes()),
        ErrorKind::LimitExceeded,
        "table",
    );
    assert_refused(
        Format::Vhd,
        header_edit(16, &(1u64 << 50).to_be_bytes()),
        ErrorKind::Corrupt,
        "outside the file",
    );

    let mut bat = base.clone();
    let table = u64::from_be_bytes(base[512 + 16..512 + 24].try_into().unwrap()) as usize;
    put(&mut bat, table, &0x00ff_ffffu32.to_be_bytes());
    assert_refused(Format::Vhd, bat, ErrorKind::Corrupt, "past the end of the file");

    let mut size = fixture("vhd-fixed.vhd");
    let footer = size.len() - 512;
    put(&mut size, footer + 28, b"win ");
    put(&mut size, footer + 48, &(8u64 << 30).to_be_bytes());
    vhd_fix_checksum(&mut size, footer, 512, 64);
    assert_refused(Format::Vhd, size, ErrorKind::Corrupt, "truncated");
}

// ---- VDI ----

#[test]
fn vdi_damage_is_refused() {
    let base = fixture("vdi-dynamic.vdi");
    let edit = |at: usize, value: &[u8]| {
        let mut bytes = base.clone();
        put(&mut bytes, at, value);
        bytes
    };
    assert_refused(Format::Vdi, edit(440, &[1; 16]), ErrorKind::Unsupported, "parent");
    assert_refused(Format::Vdi, edit(424, &[1; 16]), ErrorKind::Unsupported, "link");
    assert_refused(
        Format::Vdi,
        edit(76, &4u32.to_le_bytes()),
        ErrorKind::Unsupported,
        "differencing",
    );
    assert_refused(
        Format::Vdi,
        edit(376, &(2u32 << 20).to_le_bytes()),
        ErrorKind::Unsupported,
        "block size",
    );
    assert_refused(
        Format::Vdi,
        edit(368, &u64::MAX.to_le_bytes()),
        ErrorKind::Corrupt,
        "disk size",
    );
    assert_refused(
        Format::Vdi,
        edit(384, &u32::MAX.to_le_bytes()),
        ErrorKind::LimitExceeded,
        "block map",
    );
    assert_refused(
        Format::Vdi,
        edit(340, &(1u32 << 30).to_le_bytes()),
        ErrorKind::Corrupt,
        "outside the file",
    );
    assert_refused(
        Format::Vdi,
        edit(68, &0x0002_0000u32.to_le_bytes()),
        ErrorKind::Unsupported,
        "version",
    );
    let map = u32::from_le_bytes(base[340..344].try_into().unwrap()) as usize;
    assert_refused(
        Format::Vdi,
        edit(map, &0x7fff_0000u32.to_le_bytes()),
        ErrorKind::Corrupt,
        "past the end",
    );
}

#[test]
fn a_polyglot_vdi_that_is_also_a_vmdk_is_refused() {
    let mut bytes = fixture("vdi-dynamic.vdi");
    put(&mut bytes, 0, b"KDMV");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("disk.img");
    std::fs::write(&input, bytes).unwrap();
    let err =
        imgpack::convert(&input, &dir.path().join("o.imgpack"), &ConvertOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidFormat);
    assert!(err.to_string().contains("polyglot"), "{err}");
}

// ---- VHDX ----

const KIB: usize = 1024;

fn vhdx_fix_header(bytes: &mut [u8], at: usize) {
    let sum = imgpack::input::vhdx::checksum(&bytes[at..at + 4 * KIB], 4);
    put(bytes, at + 4, &sum.to_le_bytes());
}

/// File offset of the region whose GUID starts with `first` (little-endian data1).
fn vhdx_region(bytes: &[u8], first: u32) -> usize {
    let table = 192 * KIB;
    let count = u32::from_le_bytes(bytes[table + 8..table + 12].try_into().unwrap()) as usize;
    (0..count)
        .map(|i| table + 16 + 32 * i)
        .find(|&e| bytes[e..e + 4] == first.to_le_bytes())
        .map(|e| u64::from_le_bytes(bytes[e + 16..e + 24].try_into().unwrap()) as usize)
        .unwrap()
}

#[test]
fn vhdx_damage_is_refused() {
    let base = fixture("vhdx-dynamic.vhdx");
    let mut headers = base.clone();
    headers[64 * KIB + 20] ^= 1;
    headers[128 * KIB + 20] ^= 1;
    assert_refused(Format::Vhdx, headers, ErrorKind::Checksum, "header");

    let mut one_header = base.clone();
    one_header[64 * KIB + 20] ^= 1;
    assert!(
        try_image(Format::Vhdx, one_header).is_ok(),
        "the other header should be used"
    );

    let mut log = base.clone();
    for at in [64 * KIB, 128 * KIB] {
        log[at + 48..at + 64].fill(0x42);
        vhdx_fix_header(&mut log, at);
    }
    assert_refused(Format::Vhdx, log, ErrorKind::Unsupported, "log");

    let mut regions = base.clone();
    regions[192 * KIB + 40] ^= 1;
    assert_refused(Format::Vhdx, regions, ErrorKind::Checksum, "region table");

    let bat = vhdx_region(&base, 0x2dc2_7766);
    let mut partial = base.clone();
    partial[bat] = (partial[bat] & !7) | 7;
    assert_refused(Format::Vhdx, partial, ErrorKind::Corrupt, "partially present");
    let mut far = base.clone();
    put(&mut far, bat, &((1u64 << 40) | 6).to_le_bytes());
    assert_refused(Format::Vhdx, far, ErrorKind::Corrupt, "past the end");
    let mut header_block = base.clone();
    put(&mut header_block, bat, &6u64.to_le_bytes());
    assert_refused(Format::Vhdx, header_block, ErrorKind::Corrupt, "header");

    // Metadata items: find the file parameters (GUID data1 0xcaa16737).
    let meta = vhdx_region(&base, 0x8b7c_a206);
    let count = u16::from_le_bytes(base[meta + 10..meta + 12].try_into().unwrap()) as usize;
    let params = (0..count)
        .map(|i| meta + 32 + 32 * i)
        .find(|&e| base[e..e + 4] == 0xcaa1_6737u32.to_le_bytes())
        .map(|e| meta + u32::from_le_bytes(base[e + 16..e + 20].try_into().unwrap()) as usize)
        .unwrap();
    let mut parent = base.clone();
    parent[params + 4] |= 2;
    assert_refused(Format::Vhdx, parent, ErrorKind::Unsupported, "parent");
    let mut block = base.clone();
    put(&mut block, params, &(3u32 << 20).to_le_bytes());
    assert_refused(Format::Vhdx, block, ErrorKind::Corrupt, "block size");
    let mut locator = base.clone();
    let entry = meta + 32;
    put(
        &mut locator,
        entry,
        &[
            0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c,
        ],
    );
    assert_refused(Format::Vhdx, locator, ErrorKind::Unsupported, "parent locator");
}

#[test]
fn a_huge_vmdk_directory_aliasing_one_empty_table_is_walked_quickly() {
    // 64 TiB of directory entries all pointing at one empty grain table, except the last,
    // which points at the fixture's real table: the walk must skip the empty spans in one
    // step each and find the data at the very end.
    let base = fixture("vmdk-sparse.vmdk");
    let line = sparse_extent_line(&base);
    let capacity: u64 = (64 << 40) / 512;
    let mut bytes = vmdk_descriptor_edit(&line, &line.replace("6147", &capacity.to_string()));
    let gd = u64::from_le_bytes(bytes[56..64].try_into().unwrap()) as usize * 512;
    let real_table = u32::from_le_bytes(bytes[gd..gd + 4].try_into().unwrap());
    let entries = (64u64 << 40) / (512 * 65536);
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    let empty_table = (bytes.len() / 512) as u32;
    bytes.resize(bytes.len() + 2048, 0);
    let directory = (bytes.len() / 512) as u64;
    for i in 0..entries {
        let table = if i + 1 == entries { real_table } else { empty_table };
        bytes.extend_from_slice(&table.to_le_bytes());
    }
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    put(&mut bytes, 12, &capacity.to_le_bytes());
    put(&mut bytes, 56, &directory.to_le_bytes());
    let start = Instant::now();
    let source = open_native(Format::Vmdk, bytes, 64 << 40).unwrap();
    let last_span = (entries - 1) * 512 * 65536;
    assert_eq!(source.next_data(0).unwrap(), Some(last_span));
    let mut scratch = Vec::new();
    let data = source.read(last_span, 4096, &mut scratch).unwrap().to_vec();
    let original = open_native(Format::Vmdk, base, LIMIT).unwrap();
    assert_eq!(data, original.read(0, 4096, &mut scratch).unwrap());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn fuzz_entry_points_take_the_fixtures_and_their_cuts() {
    type Target = fn(&[u8]);
    let targets: [(&str, Target); 5] = [
        ("parallels", imgpack::fuzz_targets::parallels),
        ("vhd", imgpack::fuzz_targets::vhd),
        ("vdi", imgpack::fuzz_targets::vdi),
        ("vmdk", imgpack::fuzz_targets::vmdk),
        ("vhdx", imgpack::fuzz_targets::vhdx),
    ];
    for (file, _) in FIXTURES {
        let bytes = fixture(file);
        let target = targets
            .iter()
            .find(|(prefix, _)| {
                file.starts_with(&format!("{prefix}-")) || file.starts_with(&format!("{prefix}."))
            })
            .unwrap()
            .1;
        for cut in [bytes.len(), bytes.len() / 2, 4096, 600, 0] {
            target(&bytes[..cut]);
        }
    }
}

/// `info` on a damaged or truncated image succeeds and says why `convert` would refuse it in
/// `refusal` (the README's promise), for damage found on open and damage found while reading.
#[test]
fn info_reports_damage_as_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let stream = fixture("vmdk-stream.vmdk");
    let first_grain = u64::from_le_bytes(stream[64..72].try_into().unwrap()) as usize * 512;
    let mut cases: Vec<(&str, &str, Vec<u8>, &str)> = Vec::new();
    let mut vhd = fixture("vhd-dynamic.vhd");
    vhd[70] ^= 0xff; // inside the footer copy, covered by its checksum
    cases.push(("vhd-checksum", "vpc", vhd, "checksum mismatch"));
    let mut vhdx = fixture("vhdx-dynamic.vhdx");
    for header in [64 << 10, 128 << 10] {
        vhdx[header + 10] ^= 0xff;
    }
    cases.push(("vhdx-headers", "vhdx", vhdx, "neither VHDX header is valid"));
    let mut vmdk = fixture("vmdk-sparse.vmdk");
    put(&mut vmdk, 56, &(1u64 << 40).to_le_bytes());
    cases.push(("vmdk-directory", "vmdk", vmdk, "grain directory"));
    let mut grain = stream.clone();
    for byte in &mut grain[first_grain + 12..first_grain + 40] {
        *byte = 0x55; // the zlib stream of the first compressed grain
    }
    cases.push(("vmdk-grain", "vmdk", grain, "compressed grain"));
    for (file, format) in [
        ("vhd-dynamic.vhd", "vpc"),
        ("vhdx-dynamic.vhdx", "vhdx"),
        ("vdi-dynamic.vdi", "vdi"),
    ] {
        let mut cut = fixture(file);
        cut.truncate(cut.len() / 3);
        cases.push((file, format, cut, "past the end of the file"));
    }
    for (name, format, bytes, needle) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let described = imgpack::info(&path, &Default::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(described.format, format, "{name}");
        let refusal = described.refusal.unwrap_or_else(|| panic!("{name}: no refusal"));
        assert!(refusal.contains(needle), "{name}: {refusal}");
        let err =
            imgpack::convert(&path, &dir.path().join("out.imgpack"), &ConvertOptions::default()).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Corrupt | ErrorKind::Checksum),
            "{name}: {err}"
        );
    }
}
