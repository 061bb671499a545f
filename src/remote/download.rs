//! [`ObjectReader`]: one streaming GET read front to back as a [`Read`], so the layer-peeling
//! pipeline (`Input::reader`) consumes an object as it arrives, with no temporary file.

use std::io::{self, Read};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::ObjectStoreExt;

use super::{object_path, redact, store_error, S3Client};
use crate::error::{Error, ErrorKind, Result};

/// A streaming GET. The body must be exactly as long as the object's length the reply
/// announced: a short body (a dropped connection) or a long one is an error, never a
/// silently truncated disk.
pub struct ObjectReader {
    client: S3Client,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    current: Bytes,
    url: String,
    expected: u64,
    received: u64,
    ended: bool,
}

impl ObjectReader {
    /// Starts the GET of `key`; `Ok(None)` if there is no such object.
    pub fn open(client: &S3Client, key: &str) -> Result<Option<ObjectReader>> {
        let path = object_path(key)?;
        let url = client.url(key);
        let got = match client.block_on(client.store().get(&path)) {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error("reading", &url, e)),
        };
        Ok(Some(ObjectReader {
            client: client.clone(),
            expected: got.meta.size,
            stream: got.into_stream(),
            current: Bytes::new(),
            url,
            received: 0,
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

    fn failure(&self, message: String) -> io::Error {
        io::Error::other(Error::new(ErrorKind::Io, redact(&message)))
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() && !self.ended {
            match self.client.block_on(self.stream.next()) {
                Some(Ok(bytes)) => {
                    self.received += bytes.len() as u64;
                    if self.received > self.expected {
                        return Err(self.failure(format!(
                            "reading {}: the store sent more than the {} bytes it announced",
                            self.url, self.expected
                        )));
                    }
                    self.current = bytes;
                }
                Some(Err(e)) => {
                    return Err(self.failure(format!("reading {} at byte {}: {e}", self.url, self.received)))
                }
                None => {
                    self.ended = true;
                    if self.received != self.expected {
                        return Err(self.failure(format!(
                            "reading {}: the body ended after {} of the {} bytes announced",
                            self.url, self.received, self.expected
                        )));
                    }
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}
