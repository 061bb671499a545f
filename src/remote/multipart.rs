//! [`MultipartSink`]: an archive (or any upload) written straight into an object as an S3
//! multipart upload, which appears only when [`finish`](ArchiveSink::finish)ed.
//!
//! Parts of [`PART_SIZE`] bytes are uploaded concurrently, at most [`PARTS_IN_FLIGHT`] at a
//! time: a writer that gets ahead waits for the oldest part, so memory stays bounded at about
//! `(PARTS_IN_FLIGHT + 1) * PART_SIZE` (40 MiB). A sink dropped unfinished (an error, the
//! size limit, a cancellation) aborts the upload, so no object appears and the store frees
//! the parts. A process killed outright cannot abort: for that, the upload's id is recorded
//! in a small marker object first, which recovery reads to abort it ([`abort_recorded`]).

use std::collections::VecDeque;
use std::io::{self, Write};

use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::MultipartId;
use tokio::task::JoinHandle;

use super::{object_path, redact, store_error, S3Client};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::ArchiveSink;

/// Bytes per part: above S3's 5 MiB minimum, small enough that the parts in flight stay far
/// below the memory budget, large enough that a 50 GiB archive needs 6,400 of S3's 10,000.
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once: enough to keep a loopback or LAN link busy while the encoder
/// produces the next part.
pub const PARTS_IN_FLIGHT: usize = 4;
/// Longest marker object accepted back from the store.
const MAX_MARKER_LEN: u64 = 4096;

/// A multipart upload in progress; see the module docs.
pub struct MultipartSink {
    client: S3Client,
    path: ObjectPath,
    key: String,
    url: String,
    id: MultipartId,
    marker: Option<String>,
    buffer: Vec<u8>,
    in_flight: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    parts: Vec<PartId>,
    next_part: usize,
    written: u64,
    finished: bool,
}

impl MultipartSink {
    /// Starts a multipart upload to `key`. With `marker`, the upload's id is first recorded
    /// in that object (removed again on finish or abort) so recovery can abort it.
    pub fn create(client: &S3Client, key: &str, marker: Option<&str>) -> Result<MultipartSink> {
        let path = object_path(key)?;
        let url = client.url(key);
        let id = client
            .block_on(client.store().create_multipart(&path))
            .map_err(|e| store_error("starting the multipart upload of", &url, e))?;
        let sink = MultipartSink {
            client: client.clone(),
            path,
            key: key.to_string(),
            url,
            id,
            marker: marker.map(str::to_string),
            buffer: Vec::with_capacity(PART_SIZE),
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            next_part: 0,
            written: 0,
            finished: false,
        };
        if let Some(marker) = marker {
            // Dropping `sink` on failure aborts the upload just started.
            client.put_small(marker, format!("{key}\n{}\n", sink.id).into_bytes())?;
        }
        Ok(sink)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Waits for the oldest part in flight.
    fn wait_oldest(&mut self) -> Result<()> {
        if let Some(handle) = self.in_flight.pop_front() {
            let part = self
                .client
                .block_on(handle)
                .map_err(|e| Error::new(ErrorKind::Io, format!("uploading a part of {}: {e}", self.url)))?
                .map_err(|e| store_error("uploading a part of", &self.url, e))?;
            self.parts.push(part);
        }
        Ok(())
    }

    /// Sends the buffer as the next part, waiting first if too many are in flight.
    fn send_part(&mut self) -> Result<()> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(PART_SIZE));
        let store = std::sync::Arc::clone(self.client.store());
        let (path, id, index) = (self.path.clone(), self.id.clone(), self.next_part);
        self.next_part += 1;
        self.in_flight.push_back(
            self.client
                .spawn(async move { store.put_part(&path, &id, index, data.into()).await }),
        );
        Ok(())
    }

    /// Aborts the upload and removes its marker; what the store says is returned.
    fn abort(&mut self) -> Result<()> {
        for handle in self.in_flight.drain(..) {
            handle.abort();
        }
        self.client
            .block_on(self.client.store().abort_multipart(&self.path, &self.id))
            .map_err(|e| store_error("aborting the multipart upload of", &self.url, e))?;
        if let Some(marker) = self.marker.take() {
            self.client.delete(&marker)?;
        }
        Ok(())
    }
}

impl Write for MultipartSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(PART_SIZE - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..n]);
        self.written += n as u64;
        if self.buffer.len() == PART_SIZE {
            self.send_part().map_err(io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ArchiveSink for MultipartSink {
    fn name(&self) -> String {
        self.url.clone()
    }

    fn finish(mut self) -> Result<()> {
        // S3 needs at least one part, so an empty object is one empty part.
        if !self.buffer.is_empty() || self.next_part == 0 {
            self.send_part()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        let parts = std::mem::take(&mut self.parts);
        self.client
            .block_on(
                self.client
                    .store()
                    .complete_multipart(&self.path, &self.id, parts),
            )
            .map_err(|e| store_error("completing the multipart upload of", &self.url, e))?;
        self.finished = true;
        if let Some(marker) = self.marker.take() {
            // The object is complete; a marker left behind only costs recovery one abort of
            // an upload that no longer exists.
            let _ = self.client.delete(&marker);
        }
        Ok(())
    }
}

impl Drop for MultipartSink {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.abort() {
                eprintln!(
                    "warning: {}",
                    redact(&format!("could not abort the upload of {}: {e}", self.key))
                );
            }
        }
    }
}

/// Aborts the multipart upload to `expected_key` recorded in `marker` (by
/// [`MultipartSink::create`] of a process that died) and removes the marker. `Ok(false)` if
/// there was no marker, or it named another key (never acted upon).
pub fn abort_recorded(client: &S3Client, marker: &str, expected_key: &str) -> Result<bool> {
    let Some(bytes) = client.get_small(marker, MAX_MARKER_LEN)? else {
        return Ok(false);
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    let (Some(key), Some(id)) = (lines.next().filter(|k| *k == expected_key), lines.next()) else {
        // Not ours to interpret: a damaged marker is removed, the upload (if any) is left to
        // the bucket's lifecycle rule.
        client.delete(marker)?;
        return Ok(false);
    };
    let path = object_path(key)?;
    match client.block_on(client.store().abort_multipart(&path, &id.to_string())) {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => {
            return Err(store_error(
                "aborting the multipart upload of",
                &client.url(key),
                e,
            ))
        }
    }
    client.delete(marker)?;
    Ok(true)
}
