//! A registrar's view of imgpack: an upload arrives as a byte stream (here a stand-in for an
//! HTTP request body that hands over the file in small, irregular pieces), and the archive
//! goes to a sink of the registrar's own (here a stand-in for an object store's multipart
//! upload, which collects 8 MiB parts and completes the object only in `finish`).
//!
//! ```sh
//! cargo run --release --example upload -- testdata/demo.raw /tmp/demo.imgpack
//! ```
//!
//! Nothing is written unless the whole conversion succeeds: on any error the sink is dropped
//! unfinished and its parts are discarded, as an aborted multipart upload would be.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use imgpack::{convert_to, ArchiveSink, ConvertOptions, Input};

/// Reads the file in pieces of 1 to 64 KiB, as a network body arrives.
struct HttpBody<R> {
    inner: R,
    next_piece: usize,
}

impl<R: Read> Read for HttpBody<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.next_piece = (self.next_piece * 7 + 4093) % (64 << 10) + 1;
        let n = buf.len().min(self.next_piece);
        self.inner.read(&mut buf[..n])
    }
}

/// Collects the archive in parts, and "completes the upload" (writes the object) in `finish`.
struct MultipartSink {
    object: PathBuf,
    parts: Vec<Vec<u8>>,
    current: Vec<u8>,
}

const PART_SIZE: usize = 8 << 20;

impl Write for MultipartSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(PART_SIZE - self.current.len());
        self.current.extend_from_slice(&buf[..n]);
        if self.current.len() == PART_SIZE {
            self.parts.push(std::mem::take(&mut self.current));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ArchiveSink for MultipartSink {
    fn name(&self) -> String {
        format!("multipart:{}", self.object.display())
    }

    fn finish(mut self) -> imgpack::Result<()> {
        self.parts.push(std::mem::take(&mut self.current));
        let whole: Vec<u8> = self.parts.concat();
        std::fs::write(&self.object, whole)
            .map_err(|e| imgpack::Error::io("completing the upload", e).in_file(&self.object))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        eprintln!("usage: upload IMAGE ARCHIVE");
        std::process::exit(2);
    };
    let body = HttpBody {
        inner: std::fs::File::open(&input)?,
        next_piece: 1,
    };
    let sink = MultipartSink {
        object: output.into(),
        parts: Vec::new(),
        current: Vec::new(),
    };
    let report = convert_to(Input::reader(body, "upload"), sink, &ConvertOptions::default())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
