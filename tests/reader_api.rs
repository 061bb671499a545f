//! The registrar's API: an image arriving as a byte stream, or as a file already opened,
//! converts into any `ArchiveSink` exactly as the same image does from a path; a failed
//! conversion never finishes its sink.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use imgpack::{
    convert, convert_reader, convert_to, extract, ArchiveSink, ConvertOptions, ErrorKind, ExtractOptions,
    FileSink, Input,
};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

/// Hands over at most a few KiB per call, like a network body.
struct Trickle<R>(R, usize);

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.1 = (self.1 * 31 + 17) % 5000 + 1;
        let n = buf.len().min(self.1);
        self.0.read(&mut buf[..n])
    }
}

/// The disk an archive holds, extracted.
fn disk_of(archive: &Path) -> Vec<u8> {
    let out = archive.with_extension("raw");
    extract(archive, &out, &ExtractOptions::default()).unwrap();
    std::fs::read(out).unwrap()
}

/// Converts `image` from its path and from a trickling stream; both must hold the same disk.
fn stream_matches_path(image: &Path, format: &str) {
    let dir = tempfile::tempdir().unwrap();
    let from_path = dir.path().join("path.imgpack");
    let expected = convert(image, &from_path, &ConvertOptions::default()).unwrap();
    let from_stream = dir.path().join("stream.imgpack");
    let body = Trickle(File::open(image).unwrap(), 1);
    let options = ConvertOptions {
        temp_dir: Some(dir.path().to_path_buf()),
        ..ConvertOptions::default()
    };
    let report = convert_reader(body, FileSink::create(&from_stream).unwrap(), &options).unwrap();
    assert_eq!(report.format, format);
    assert_eq!(report.input, "stream");
    assert_eq!(report.output, from_stream.display().to_string());
    assert_eq!(
        (report.virtual_size, report.disk_size),
        (expected.virtual_size, expected.disk_size)
    );
    assert!(
        disk_of(&from_stream) == disk_of(&from_path),
        "{format}: disks differ"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 4, "no spill file may remain: {left:?}");
}

#[test]
fn a_raw_stream_converts_like_the_file() {
    stream_matches_path(&testdata("demo.raw"), "raw");
}

#[test]
fn a_qcow2_stream_is_spilled_and_read_natively() {
    stream_matches_path(&testdata("qcow2/zstd-extl2.qcow2"), "qcow2");
}

#[test]
fn an_opened_file_is_read_from_its_start_whatever_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let image = testdata("qcow2/v2-512.qcow2");
    let mut file = File::open(&image).unwrap();
    file.seek(SeekFrom::Start(1000)).unwrap();
    let archive = dir.path().join("opened.imgpack");
    let report = convert_to(
        Input::file(file, "upload.qcow2"),
        FileSink::create(&archive).unwrap(),
        &ConvertOptions::default(),
    )
    .unwrap();
    assert_eq!(report.input, "upload.qcow2");
    assert_eq!(report.format, "qcow2");
    let reference = dir.path().join("reference.imgpack");
    convert(&image, &reference, &ConvertOptions::default()).unwrap();
    assert!(disk_of(&archive) == disk_of(&reference));
}

/// A sink that records whether it was finished.
struct Recording {
    written: u64,
    finished: Arc<AtomicBool>,
}

impl Write for Recording {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ArchiveSink for Recording {
    fn name(&self) -> String {
        "recording".into()
    }
    fn finish(self) -> imgpack::Result<()> {
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn a_damaged_stream_fails_with_its_name_and_never_finishes_the_sink() {
    let mut qcow2 = std::fs::read(testdata("qcow2/v2-512.qcow2")).unwrap();
    qcow2[40..48].copy_from_slice(&u64::MAX.to_be_bytes()); // L1 table offset: nowhere
    let finished = Arc::new(AtomicBool::new(false));
    let sink = Recording {
        written: 0,
        finished: Arc::clone(&finished),
    };
    let err = convert_to(
        Input::reader(io::Cursor::new(qcow2), "upload-7.qcow2"),
        sink,
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert_eq!(err.path(), Some(Path::new("upload-7.qcow2")), "{err}");
    assert!(!finished.load(Ordering::SeqCst));
}

#[test]
fn a_sink_that_fails_stops_the_conversion_with_its_error() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "quota reached"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl ArchiveSink for Full {
        fn name(&self) -> String {
            "full".into()
        }
        fn finish(self) -> imgpack::Result<()> {
            panic!("a failed conversion finished its sink");
        }
    }
    let err = convert_reader(
        File::open(testdata("demo.raw")).unwrap(),
        Full,
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(format!("{err:?}").contains("quota reached"), "{err:?}");
}
