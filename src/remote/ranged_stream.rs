//! [`RangedStream`]: an object read front to back as a [`Read`], fetched by ranged GETs of
//! [`STREAM_BLOCK`] bytes with [`STREAM_GETS`] of them in flight, in order.
//!
//! Why not one streaming GET ([`ObjectReader`](super::ObjectReader))? One request is one
//! connection served by one task of the server: on s3s-fs a single GET of 1 GiB took 11-14 s
//! and 11 CPU-seconds of the server, four ranged GETs in parallel 4.8 s and 6-7 (loopback,
//! docs/SCALE.md). Parallel ranges are also how S3's own guidance says to download fast.
//! Every range is bound to the version opened (`If-Match` its ETag), must be exactly as long
//! as asked, and memory stays at `(STREAM_GETS + 1) * STREAM_BLOCK` (40 MiB).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::ops::Range;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::task::JoinHandle;

use super::{object_path, redact, S3Client};
use crate::error::{Error, ErrorKind, Result};

/// Bytes per ranged GET (S3's guidance for ranged downloads: 8-16 MiB).
pub const STREAM_BLOCK: u64 = 8 << 20;
/// Ranged GETs in flight at once.
pub const STREAM_GETS: usize = 4;

type Fetch = JoinHandle<object_store::Result<Bytes>>;

/// See the module docs.
pub struct RangedStream {
    client: S3Client,
    path: ObjectPath,
    url: String,
    etag: Option<String>,
    size: u64,
    /// Where the next range to ask for starts.
    next: u64,
    in_flight: VecDeque<(Range<u64>, Fetch)>,
    current: Bytes,
    /// A read failed: every later one fails too, never skipping to the next range.
    failed: bool,
}

impl RangedStream {
    /// Reads `key`, `size` bytes long (as its HEAD found it), only the version `etag` if
    /// given: a version stored meanwhile is an error, never read in its place.
    pub fn open(client: &S3Client, key: &str, etag: Option<&str>, size: u64) -> Result<RangedStream> {
        Ok(RangedStream {
            client: client.clone(),
            path: object_path(key)?,
            url: client.url(key),
            etag: etag.map(str::to_string),
            size,
            next: 0,
            in_flight: VecDeque::new(),
            current: Bytes::new(),
            failed: false,
        })
    }

    /// The object's length.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Asks for ranges until [`STREAM_GETS`] are in flight or the object is covered.
    fn ask(&mut self) {
        while self.in_flight.len() < STREAM_GETS && self.next < self.size {
            let range = self.next..(self.next + STREAM_BLOCK).min(self.size);
            self.next = range.end;
            let options = GetOptions {
                range: Some(GetRange::Bounded(range.clone())),
                if_match: self.etag.clone(),
                ..GetOptions::default()
            };
            let store = std::sync::Arc::clone(self.client.store());
            let path = self.path.clone();
            let fetch = self
                .client
                .spawn(async move { store.get_opts(&path, options).await?.bytes().await });
            self.in_flight.push_back((range, fetch));
        }
    }

    /// The next range's bytes, checked; `None` at the end.
    fn next_block(&mut self) -> Result<Option<Bytes>> {
        self.ask();
        let Some((range, fetch)) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        let at = format!("{} bytes {}-{}", self.url, range.start, range.end);
        let bytes = match self.client.block_on(fetch) {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(object_store::Error::Precondition { .. })) => {
                return Err(Error::invalid_argument(format!(
                    "{} was replaced by another upload while it was being read",
                    self.url
                )))
            }
            Ok(Err(e)) => return Err(Error::new(ErrorKind::Io, redact(&format!("reading {at}: {e}")))),
            Err(e) => return Err(Error::new(ErrorKind::Io, format!("reading {at}: {e}"))),
        };
        if bytes.len() as u64 != range.end - range.start {
            return Err(Error::new(
                ErrorKind::Io,
                format!("reading {at}: the store sent {} bytes", bytes.len()),
            ));
        }
        self.ask();
        Ok(Some(bytes))
    }
}

impl Read for RangedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.current.is_empty() {
            if self.failed {
                return Err(io::Error::other(format!(
                    "an earlier read of {} failed",
                    self.url
                )));
            }
            match self.next_block() {
                Ok(Some(bytes)) => self.current = bytes,
                Ok(None) => return Ok(0),
                Err(e) => {
                    self.failed = true;
                    return Err(io::Error::other(e));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

impl Drop for RangedStream {
    fn drop(&mut self) {
        for (_, fetch) in self.in_flight.drain(..) {
            fetch.abort();
        }
    }
}
