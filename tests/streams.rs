//! Compressed inputs end to end: files made by the real gzip, pigz, xz, zstd and qemu-img
//! tools are converted and extracted again, and must give back the uncompressed source byte for
//! byte; damaged, truncated, too-deep and bomb inputs must be refused with the right kind and
//! leave neither an output nor a temporary file behind.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::have;
use imgpack::{convert, extract, ConvertOptions, ErrorKind, ExtractOptions};
use tempfile::TempDir;

/// Runs `tool args` with `input` on stdin (if any), returning stdout; panics on failure.
fn run(tool: &str, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    if let Some(data) = input {
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || stdin.write_all(&data).unwrap());
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{tool} {args:?} failed");
    out.stdout
}

/// A few MiB that look like a disk: text, a run of zeros, random bytes, a repeated pattern and
/// an unaligned tail.
fn disk() -> Vec<u8> {
    let mut data = Vec::with_capacity(6 << 20);
    let mut line = 0u64;
    while data.len() < 1 << 20 {
        data.extend_from_slice(
            format!("line {line}: the quick brown fox {}\n", line * 7919 % 1000).as_bytes(),
        );
        line += 1;
    }
    data.resize(3 << 20, 0);
    let mut rng = common::Rng::new(0x9e37_79b9_7f4a_7c15);
    while data.len() < 4 << 20 {
        data.extend_from_slice(&rng.next().to_le_bytes());
    }
    while data.len() < (5 << 20) + 12345 {
        data.extend_from_slice(b"\x55\xaa\x00\x01imgpack");
    }
    data.truncate((5 << 20) + 12345);
    data
}

struct Fixture {
    dir: TempDir,
    source: Vec<u8>,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            source: disk(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    /// A spill directory of its own, to check that nothing is left in it.
    fn spill_dir(&self) -> PathBuf {
        let dir = self.path("spill");
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn options(&self) -> ConvertOptions {
        ConvertOptions {
            temp_dir: Some(self.spill_dir()),
            ..ConvertOptions::default()
        }
    }

    fn assert_no_leftovers(&self, output: &Path) {
        assert!(!output.exists(), "{} was left behind", output.display());
        let spilled: Vec<_> = fs::read_dir(self.spill_dir()).unwrap().collect();
        assert!(spilled.is_empty(), "temporary files left: {spilled:?}");
    }

    /// Converts `input`, extracts the archive and compares with `want` (for a raw payload,
    /// `want` rounded up to a whole sector, as qemu-img reads raw disks).
    fn round_trip(&self, input: &Path, format: &str, want: &[u8]) {
        let rounded = sector_rounded(want);
        let want: &[u8] = if format.ends_with(">raw") { &rounded } else { want };
        let archive = input.with_extension("imgpack");
        let report =
            convert(input, &archive, &self.options()).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        assert_eq!(report.format, format, "{}", input.display());
        assert_eq!(report.virtual_size, want.len() as u64);
        let back = input.with_extension("back");
        extract(&archive, &back, &ExtractOptions::default()).unwrap();
        assert!(
            fs::read(&back).unwrap() == want,
            "{} does not round-trip",
            input.display()
        );
        self.assert_no_leftovers(&self.path("none"));
        fs::remove_file(archive).unwrap();
        fs::remove_file(back).unwrap();
    }

    /// Converting `input` must fail with one of `kinds`, leaving nothing behind.
    fn refused(&self, input: &Path, kinds: &[ErrorKind]) -> imgpack::Error {
        let archive = input.with_extension("imgpack");
        let err = match convert(input, &archive, &self.options()) {
            Ok(_) => panic!("{} was accepted", input.display()),
            Err(e) => e,
        };
        assert!(
            kinds.contains(&err.kind()),
            "{}: unexpected {:?}: {err}",
            input.display(),
            err.kind()
        );
        self.assert_no_leftovers(&archive);
        err
    }

    /// Damages `file` at several offsets and truncates it at several lengths: every variant
    /// must be refused.
    fn damaged_variants_refused(&self, name: &str, file: &[u8]) {
        let len = file.len();
        for tenth in [2, 5, 8] {
            let mut bad = file.to_vec();
            bad[len * tenth / 10] ^= 0x5a;
            let path = self.write(&format!("flip{tenth}-{name}"), &bad);
            let err = self.refused(&path, &[ErrorKind::Corrupt, ErrorKind::Checksum]);
            assert!(err.to_string().contains("offset"), "no offset in: {err}");
            fs::remove_file(path).unwrap();
        }
        for cut in [len / 3, len / 2, len - 9, len - 1] {
            let path = self.write(&format!("cut{cut}-{name}"), &file[..cut]);
            self.refused(&path, &[ErrorKind::Corrupt, ErrorKind::Checksum]);
            fs::remove_file(path).unwrap();
        }
    }
}

#[test]
fn gzip_gzip_pigz_and_concatenated_members() {
    if !have("gzip") {
        return;
    }
    let f = Fixture::new();
    let plain = run("gzip", &["-c", "-6"], Some(&f.source));
    f.round_trip(&f.write("a.gz", &plain), "gzip>raw", &f.source);

    // FNAME set by gzip -N on a named file.
    let named = f.write("disk.raw", &f.source);
    let with_name = run("gzip", &["-c", "-N", "-1", named.to_str().unwrap()], None);
    f.round_trip(&f.write("named.gz", &with_name), "gzip>raw", &f.source);

    // Concatenated members, then zero padding after the last one.
    let (one, two) = f.source.split_at(2_000_001);
    let mut members = run("gzip", &["-c"], Some(one));
    members.extend(run("gzip", &["-c", "-9"], Some(two)));
    f.round_trip(&f.write("members.gz", &members), "gzip>raw", &f.source);
    let mut padded = members.clone();
    padded.extend_from_slice(&[0u8; 1000]);
    f.round_trip(&f.write("padded.gz", &padded), "gzip>raw", &f.source);
    padded.extend_from_slice(b"junk");
    let err = f.refused(&f.write("garbage.gz", &padded), &[ErrorKind::Corrupt]);
    assert!(err.to_string().contains("trailing garbage"), "{err}");

    f.damaged_variants_refused("plain.gz", &plain);
    f.damaged_variants_refused("members.gz", &members);

    if have("pigz") {
        let pigz = run("pigz", &["-c", "-p", "2", "-b", "128"], Some(&f.source));
        f.round_trip(&f.write("pigz.gz", &pigz), "gzip>raw", &f.source);
        let independent = run("pigz", &["-c", "-i", "-p", "2"], Some(&f.source));
        f.round_trip(&f.write("pigz-i.gz", &independent), "gzip>raw", &f.source);
        f.damaged_variants_refused("pigz.gz", &pigz);
    }
}

#[test]
fn xz_threads_blocks_checks_and_streams() {
    if !have("xz") {
        return;
    }
    let f = Fixture::new();
    let single = run("xz", &["-c", "-T1", "-3"], Some(&f.source));
    f.round_trip(&f.write("t1.xz", &single), "xz>raw", &f.source);
    let blocks = run("xz", &["-c", "-T2", "-3", "--block-size=1MiB"], Some(&f.source));
    f.round_trip(&f.write("t2.xz", &blocks), "xz>raw", &f.source);
    for check in ["none", "crc32", "crc64", "sha256"] {
        let file = run(
            "xz",
            &[
                "-c",
                "-1",
                "-T2",
                "--block-size=2MiB",
                &format!("--check={check}"),
            ],
            Some(&f.source),
        );
        let path = f.write(&format!("{check}.xz"), &file);
        f.round_trip(&path, "xz>raw", &f.source);
        if check != "none" {
            f.damaged_variants_refused(&format!("{check}.xz"), &file);
        }
    }

    // Concatenated streams with stream padding between and after them.
    let (one, two) = f.source.split_at(3_000_003);
    let mut streams = run("xz", &["-c", "-1"], Some(one));
    streams.extend_from_slice(&[0u8; 8]);
    streams.extend(run(
        "xz",
        &["-c", "-1", "-T2", "--block-size=1MiB", "--check=sha256"],
        Some(two),
    ));
    streams.extend_from_slice(&[0u8; 4]);
    f.round_trip(&f.write("streams.xz", &streams), "xz>raw", &f.source);
    f.damaged_variants_refused("streams.xz", &streams);

    // Padding that is not a multiple of four, and garbage after the last stream.
    let mut odd = streams.clone();
    odd.extend_from_slice(&[0u8; 3]);
    f.refused(&f.write("odd.xz", &odd), &[ErrorKind::Corrupt]);
    let mut junk = streams.clone();
    junk.extend_from_slice(b"junk");
    f.refused(&f.write("junk.xz", &junk), &[ErrorKind::Corrupt]);
}

#[test]
fn xz_damage_names_the_block() {
    if !have("xz") {
        return;
    }
    let f = Fixture::new();
    let file = run("xz", &["-c", "-1", "-T2", "--block-size=1MiB"], Some(&f.source));
    let mut bad = file.clone();
    bad[file.len() / 2] ^= 0xff;
    let err = f.refused(
        &f.write("bad.xz", &bad),
        &[ErrorKind::Corrupt, ErrorKind::Checksum],
    );
    let text = err.to_string();
    assert!(text.contains("block") && text.contains("stream 1"), "{text}");
}

#[test]
fn zstd_frames_skippable_frames_and_checksums() {
    if !have("zstd") {
        return;
    }
    let f = Fixture::new();
    let single = run("zstd", &["-c", "-q", "-3"], Some(&f.source));
    f.round_trip(&f.write("one.zst", &single), "zstd>raw", &f.source);
    let (one, two) = f.source.split_at(1_234_567);
    let mut frames = run("zstd", &["-c", "-q", "--no-check"], Some(one));
    // A skippable frame (magic 0x184D2A53, 6 bytes of user data) between the two.
    frames.extend_from_slice(&[0x53, 0x2a, 0x4d, 0x18, 6, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    frames.extend(run("zstd", &["-c", "-q", "-19", "--check"], Some(two)));
    f.round_trip(&f.write("frames.zst", &frames), "zstd>raw", &f.source);
    // A file that starts with a skippable frame.
    let mut skip_first = vec![0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
    skip_first.extend_from_slice(&single);
    f.round_trip(&f.write("skipfirst.zst", &skip_first), "zstd>raw", &f.source);
    f.damaged_variants_refused("one.zst", &single);

    // Files (not pipes) get their content size recorded, which `info` adds up.
    let (first, second) = (f.write("first.raw", one), f.write("second.raw", two));
    let mut sized = run("zstd", &["-c", "-q", first.to_str().unwrap()], None);
    sized.extend(run("zstd", &["-c", "-q", second.to_str().unwrap()], None));
    let sized = f.write("sized.zst", &sized);
    let info = imgpack::info(&sized, &Default::default()).unwrap();
    assert_eq!(info.details["uncompressed_size"], f.source.len() as u64);
    assert_eq!(info.virtual_size, Some(sector_rounded(&f.source).len() as u64));
    f.round_trip(&sized, "zstd>raw", &f.source);

    // A frame asking for a 2 GiB window is refused rather than given the memory.
    let long = run("zstd", &["-c", "-q", "--long=31"], Some(&f.source[..100_000]));
    let err = f.refused(&f.write("long.zst", &long), &[ErrorKind::LimitExceeded]);
    assert!(err.to_string().contains("128 MiB"), "{err}");

    // A flipped content checksum is a checksum error.
    let mut bad = single.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let err = f.refused(&f.write("sum.zst", &bad), &[ErrorKind::Checksum]);
    assert!(err.to_string().contains("zstd frame 1"), "{err}");
}

#[test]
fn two_compression_layers_are_read_and_a_third_is_refused() {
    if !(have("gzip") && have("xz") && have("zstd")) {
        return;
    }
    let f = Fixture::new();
    let gz = run("gzip", &["-c", "-1"], Some(&f.source));
    let xz_gz = run("xz", &["-c", "-0"], Some(&gz));
    f.round_trip(&f.write("two.xz", &xz_gz), "xz>gzip>raw", &f.source);
    // Damage in the inner layer is placed in the outer layer's decoded data.
    let mut bad_gz = gz.clone();
    let at = bad_gz.len() / 2;
    bad_gz[at] ^= 0x33;
    let bad = f.write("inner-bad.xz", &run("xz", &["-c", "-0"], Some(&bad_gz)));
    let err = f.refused(&bad, &[ErrorKind::Corrupt, ErrorKind::Checksum]);
    assert!(
        err.to_string()
            .contains("decoded from the xz layer: gzip member 1"),
        "{err}"
    );

    let three = run("zstd", &["-c", "-q"], Some(&xz_gz));
    let err = f.refused(&f.write("three.zst", &three), &[ErrorKind::Unsupported]);
    assert!(err.to_string().contains("deeper than 2 layers"), "{err}");
    let info = imgpack::info(&f.path("three.zst"), &Default::default()).unwrap();
    assert!(info.refusal.unwrap().contains("deeper"));
}

#[test]
fn qcow2_inside_gzip_and_xz() {
    if !(have("qemu-img") && have("gzip") && have("xz")) {
        return;
    }
    let f = Fixture::new();
    let raw = f.write("src.raw", &f.source);
    let qcow2 = f.path("src.qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .unwrap();
    assert!(status.success());
    let image = fs::read(&qcow2).unwrap();
    // qemu-img rounds the virtual size up to whole 512-byte sectors.
    let mut want = f.source.clone();
    want.resize(f.source.len().div_ceil(512) * 512, 0);
    let gz = f.write("disk.qcow2.gz", &run("gzip", &["-c"], Some(&image)));
    let xz = f.write(
        "disk.qcow2.xz",
        &run("xz", &["-c", "-1", "-T2", "--block-size=1MiB"], Some(&image)),
    );

    let info = imgpack::info(&xz, &Default::default()).unwrap();
    assert_eq!(info.format, "xz>qcow2");
    assert_eq!(info.virtual_size, Some(want.len() as u64));

    // A qcow2 larger than the limit is refused from its header, before anything is spilled.
    let small = ConvertOptions {
        limits: imgpack::InputLimits {
            max_virtual_size: 1 << 20,
        },
        ..f.options()
    };
    let err = convert(&gz, &f.path("small.imgpack"), &small).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded);
    f.assert_no_leftovers(&f.path("small.imgpack"));

    // Nested too deep: qcow2 inside gzip inside xz is three layers.
    let deep = f.write(
        "deep.xz",
        &run("xz", &["-c", "-0"], Some(&fs::read(&gz).unwrap())),
    );
    f.refused(&deep, &[ErrorKind::Unsupported]);

    f.round_trip(&gz, "gzip>qcow2", &want);
    f.round_trip(&xz, "xz>qcow2", &want);

    // Through standard input too: the spill file takes the place of random access.
    let archive = f.path("stdin.imgpack");
    let out = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(["convert", "-", "-q", "--json", "--temp-dir"])
        .arg(f.spill_dir())
        .arg("-o")
        .arg(&archive)
        .stdin(fs::File::open(&xz).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["format"], "xz>qcow2");
    let back = f.path("stdin.back");
    extract(&archive, &back, &ExtractOptions::default()).unwrap();
    assert!(fs::read(&back).unwrap() == want);
    f.assert_no_leftovers(&f.path("none"));

    // A damaged qcow2 inside a sound gzip stream is refused by the qcow2 reader, and the
    // spill file goes with it.
    let mut broken = image.clone();
    broken[20..24].copy_from_slice(&40u32.to_be_bytes()); // cluster_bits out of range
    let broken = f.write("broken.qcow2.gz", &run("gzip", &["-c"], Some(&broken)));
    f.refused(
        &broken,
        &[
            ErrorKind::Corrupt,
            ErrorKind::InvalidFormat,
            ErrorKind::Unsupported,
        ],
    );
}

/// A gzip file of `members` copies of one member holding `member_size` zeros.
fn gzip_bomb(member_size: usize, members: usize) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![0u8; member_size]).unwrap();
    let member = encoder.finish().unwrap();
    member.repeat(members)
}

#[test]
fn decompression_bombs_stop_at_the_limit() {
    let f = Fixture::new();
    // 64 GiB of zeros in about 4 MB of gzip.
    let bomb = f.write("bomb.gz", &gzip_bomb(64 << 20, 1024));
    let options = ConvertOptions {
        limits: imgpack::InputLimits {
            max_virtual_size: 32 << 20,
        },
        ..f.options()
    };
    let start = Instant::now();
    let info = imgpack::info(&bomb, &Default::default()).unwrap();
    assert_eq!(info.format, "gzip>raw");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "info took {:?}",
        start.elapsed()
    );

    let output = f.path("bomb.imgpack");
    let err = convert(&bomb, &output, &options).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    f.assert_no_leftovers(&output);

    // Through standard input, where nothing is known in advance.
    let status = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(["convert", "-", "-q", "--max-virtual-size", "64M", "-o"])
        .arg(&output)
        .stdin(fs::File::open(&bomb).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!status.status.success());
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("exceeds the limit"), "{stderr}");
    f.assert_no_leftovers(&output);

    if have("xz") {
        // The xz index gives the size away: refused before decoding.
        let zeros = vec![0u8; 64 << 20];
        let xz = f.write("bomb.xz", &run("xz", &["-c", "-1", "-T1"], Some(&zeros)));
        let small = ConvertOptions {
            limits: imgpack::InputLimits {
                max_virtual_size: 16 << 20,
            },
            ..f.options()
        };
        let err = convert(&xz, &output, &small).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
        f.assert_no_leftovers(&output);
        let info = imgpack::info(
            &xz,
            &imgpack::InfoOptions {
                limits: imgpack::input::InputLimits {
                    max_virtual_size: 16 << 20,
                },
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(info.details["uncompressed_size"], 64u64 << 20);
        assert!(info.refusal.is_some());
    }
}

#[test]
fn standard_input_streams_through() {
    if !(have("xz") && have("gzip")) {
        return;
    }
    let f = Fixture::new();
    for (tool, args, format) in [
        ("xz", ["-c", "-T2"], "xz>raw"),
        ("gzip", ["-c", "-1"], "gzip>raw"),
    ] {
        let compressed = f.write("in", &run(tool, &args, Some(&f.source)));
        let archive = f.path("stdin.imgpack");
        let out = Command::new(env!("CARGO_BIN_EXE_imgpack"))
            .args(["convert", "-", "-q", "--json", "-o"])
            .arg(&archive)
            .stdin(fs::File::open(&compressed).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["format"], format);
        let back = f.path("stdin.back");
        extract(&archive, &back, &ExtractOptions::default()).unwrap();
        assert!(fs::read(&back).unwrap() == sector_rounded(&f.source));
    }
}

#[test]
fn an_archive_on_standard_output_is_the_archive_alone() {
    // The summary once followed the archive on standard output, so `convert -o - > A` wrote
    // an archive with a line of text after its footer.
    let f = Fixture::new();
    let input = f.write("disk.raw", &f.source);
    let file = f.path("file.imgpack");
    let status = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(["convert", "-q", "-o"])
        .arg(&file)
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success());
    for json in [false, true] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_imgpack"));
        command.args(["convert", "-o", "-"]).arg(&input);
        if json {
            command.arg("--json");
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.stdout == fs::read(&file).unwrap(),
            "--json {json}: stdout is not the archive"
        );
        if json {
            let report: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
            assert_eq!(report["output"], "-");
        }
    }
}

/// A raw disk's bytes as imgpack (and qemu-img) read them: rounded up to a 512-byte sector.
fn sector_rounded(bytes: &[u8]) -> Vec<u8> {
    let mut disk = bytes.to_vec();
    disk.resize(bytes.len().next_multiple_of(512), 0);
    disk
}

/// Ctrl-C while an upload is still arriving on standard input: exit status 130, no output and
/// no temporary file, both for a raw payload (streamed) and a qcow2 payload (spilled).
#[test]
fn interrupt_during_an_upload_leaves_nothing() {
    if !(have("gzip") && have("qemu-img") && have("kill")) {
        return;
    }
    let f = Fixture::new();
    let raw = f.write("src.raw", &f.source);
    let qcow2 = f.path("src.qcow2");
    let made = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .unwrap();
    assert!(made.success());
    for payload in [f.source.clone(), fs::read(&qcow2).unwrap()] {
        let compressed = run("gzip", &["-c", "-1"], Some(&payload));
        let output = f.path("upload.imgpack");
        let mut child = Command::new(env!("CARGO_BIN_EXE_imgpack"))
            .args(["convert", "-", "-q", "--temp-dir"])
            .arg(f.spill_dir())
            .arg("-o")
            .arg(&output)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let (go_on, wait) = std::sync::mpsc::channel::<()>();
        let (written, half_written) = std::sync::mpsc::channel::<()>();
        // Far more than a pipe holds: once written, imgpack is running and reading.
        let half = compressed.len() / 2;
        assert!(half > 256 << 10);
        let writer = std::thread::spawn(move || {
            stdin.write_all(&compressed[..half]).unwrap();
            written.send(()).unwrap();
            let _ = wait.recv();
            let _ = stdin.write_all(&compressed[half..]); // may meet a closed pipe
        });
        half_written.recv().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let killed = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        go_on.send(()).unwrap();
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert_eq!(
            out.status.code(),
            Some(130),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        f.assert_no_leftovers(&output);
        let names: Vec<_> = fs::read_dir(f.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains("upload"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }
}
