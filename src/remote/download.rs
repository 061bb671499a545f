//! [`ObjectReader`]: one streaming GET read front to back as a [`Read`], so the layer-peeling
//! pipeline (`Input::reader`) consumes an object as it arrives, with no temporary file.
//!
//! A task on the client's runtime drives the download and hands the reader pieces of
//! [`PIECE_LEN`] bytes through a channel of [`PIECES_AHEAD`]: the download runs ahead of the
//! conversion by a bounded amount (about 4 MiB), and the reading thread wakes once per piece
//! rather than once per network packet.

use std::io::{self, Read};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::{GetOptions, ObjectStore};
use tokio::sync::mpsc;

use super::{object_path, redact, store_error, S3Client};
use crate::error::{Error, ErrorKind, Result};

/// Bytes handed to the reader at a time.
pub const PIECE_LEN: usize = 1 << 20;
/// Pieces downloaded ahead of the reader.
pub const PIECES_AHEAD: usize = 4;

/// A streaming GET. The body must be exactly as long as the object's length the reply
/// announced: a short body (a dropped connection) or a long one is an error, never a
/// silently truncated disk.
pub struct ObjectReader {
    pieces: mpsc::Receiver<std::result::Result<Bytes, String>>,
    current: Bytes,
    expected: u64,
    ended: bool,
}

impl ObjectReader {
    /// Starts the GET of `key`; `Ok(None)` if there is no such object.
    pub fn open(client: &S3Client, key: &str) -> Result<Option<ObjectReader>> {
        Self::open_version(client, key, None)
    }

    /// Starts the GET of `key`, only of the version whose ETag is `etag` if one is given (an
    /// object stored again meanwhile is an error, never read in its place); `Ok(None)` if
    /// there is no such object.
    pub fn open_version(client: &S3Client, key: &str, etag: Option<&str>) -> Result<Option<ObjectReader>> {
        let path = object_path(key)?;
        let url = client.url(key);
        let options = GetOptions {
            if_match: etag.map(str::to_string),
            ..GetOptions::default()
        };
        let got = match client.block_on(client.store().get_opts(&path, options)) {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(object_store::Error::Precondition { .. }) => {
                return Err(Error::invalid_argument(format!(
                    "{url} was replaced by another upload while it was being opened"
                )))
            }
            Err(e) => return Err(store_error("reading", &url, e)),
        };
        let expected = got.meta.size;
        let (sender, pieces) = mpsc::channel(PIECES_AHEAD);
        let mut stream = got.into_stream();
        // Ends when the body does, on the first error, or when the reader is dropped (the
        // send fails), which also drops the connection.
        client.spawn(async move {
            let mut received = 0u64;
            let mut piece = BytesMut::with_capacity(PIECE_LEN);
            loop {
                let failure = match stream.next().await {
                    Some(Ok(bytes)) => {
                        received += bytes.len() as u64;
                        if received > expected {
                            Some(format!(
                                "reading {url}: the store sent more than the {expected} bytes it announced"
                            ))
                        } else {
                            piece.extend_from_slice(&bytes);
                            if piece.len() >= PIECE_LEN
                                && sender.send(Ok(piece.split().freeze())).await.is_err()
                            {
                                return;
                            }
                            continue;
                        }
                    }
                    Some(Err(e)) => Some(format!("reading {url} at byte {received}: {e}")),
                    None if received != expected => Some(format!(
                        "reading {url}: the body ended after {received} of the {expected} bytes announced"
                    )),
                    None => None,
                };
                if !piece.is_empty() && failure.is_none() {
                    let _ = sender.send(Ok(piece.split().freeze())).await;
                }
                if let Some(why) = failure {
                    let _ = sender.send(Err(redact(&why))).await;
                }
                return;
            }
        });
        Ok(Some(ObjectReader {
            pieces,
            current: Bytes::new(),
            expected,
            ended: false,
        }))
    }

    /// The object's length as announced.
    pub fn len(&self) -> u64 {
        self.expected
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.expected == 0
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() && !self.ended {
            match self.pieces.blocking_recv() {
                Some(Ok(piece)) => self.current = piece,
                Some(Err(why)) => {
                    self.ended = true;
                    return Err(io::Error::other(Error::new(ErrorKind::Io, why)));
                }
                None => self.ended = true,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}
