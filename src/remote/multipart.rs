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
/// How often a marker with a note ([`MultipartSink::create_noted`]) is written again with a
/// fresh note, checked as each part is sent.
pub const MARKER_RENEW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Text a marker carries after the upload's key and id (e.g. who uploads and until when),
/// made afresh each time the marker is renewed.
pub type MarkerNote = Box<dyn Fn() -> String + Send>;

/// What a marker object records: the key being uploaded, the multipart upload's id, and the
/// note (empty if none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedUpload {
    /// The object key the multipart upload writes.
    pub key: String,
    /// The multipart upload's id.
    pub id: String,
    /// The note, as last written.
    pub note: String,
}

/// A multipart upload in progress; see the module docs.
pub struct MultipartSink {
    client: S3Client,
    path: ObjectPath,
    key: String,
    url: String,
    id: MultipartId,
    marker: Option<String>,
    note: Option<MarkerNote>,
    renewed: std::time::Instant,
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
        Self::create_noted(client, key, marker, None)
    }

    /// [`create`](Self::create) with a note in the marker, written again every
    /// [`MARKER_RENEW_INTERVAL`] while parts are sent: how a process that has no catalog
    /// record (`images upload`) tells recovery it is still alive.
    pub fn create_noted(
        client: &S3Client,
        key: &str,
        marker: Option<&str>,
        note: Option<MarkerNote>,
    ) -> Result<MultipartSink> {
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
            note,
            renewed: std::time::Instant::now(),
            buffer: Vec::with_capacity(PART_SIZE),
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            next_part: 0,
            written: 0,
            finished: false,
        };
        if let Some(marker) = marker {
            // Dropping `sink` on failure aborts the upload just started.
            client.put_small(marker, sink.marker_text().into_bytes())?;
        }
        Ok(sink)
    }

    /// The marker's content: key, upload id and the note, one per line.
    fn marker_text(&self) -> String {
        let note = self.note.as_ref().map(|note| note()).unwrap_or_default();
        format!("{}\n{}\n{note}\n", self.key, self.id)
    }

    /// Writes the marker again with a fresh note, if it is due. A failed write is not an
    /// error here: the next part's upload meets the same store, and at worst the upload is
    /// judged dead and aborted, which its completion then reports.
    fn renew_marker(&mut self) {
        if self.note.is_none() || self.renewed.elapsed() < MARKER_RENEW_INTERVAL {
            return;
        }
        if let Some(marker) = &self.marker {
            let _ = self.client.put_small(marker, self.marker_text().into_bytes());
        }
        self.renewed = std::time::Instant::now();
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
        self.renew_marker();
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
                    .completing_store()
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

/// Reads the marker object `marker`: `Ok(None)` if there is none, `Ok(Some(Err(())))` if it
/// is damaged (not two or three lines).
pub fn read_marker(
    client: &S3Client,
    marker: &str,
) -> Result<Option<std::result::Result<RecordedUpload, ()>>> {
    let Some(bytes) = client.get_small(marker, MAX_MARKER_LEN)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    Ok(Some(match (lines.next(), lines.next()) {
        (Some(key), Some(id)) if !key.is_empty() && !id.is_empty() => Ok(RecordedUpload {
            key: key.to_string(),
            id: id.to_string(),
            note: lines.next().unwrap_or_default().to_string(),
        }),
        _ => Err(()),
    }))
}

/// Aborts the multipart upload `recorded` (a missing one is not an error), then removes
/// `marker`.
pub fn abort_upload(client: &S3Client, marker: &str, recorded: &RecordedUpload) -> Result<()> {
    let path = object_path(&recorded.key)?;
    match client.block_on(client.store().abort_multipart(&path, &recorded.id)) {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => {
            return Err(store_error(
                "aborting the multipart upload of",
                &client.url(&recorded.key),
                e,
            ))
        }
    }
    client.delete(marker)
}

/// Aborts the multipart upload to `expected_key` recorded in `marker` (by
/// [`MultipartSink::create`] of a process that died) and removes the marker. `Ok(false)` if
/// there was no marker, or it named another key (never acted upon).
pub fn abort_recorded(client: &S3Client, marker: &str, expected_key: &str) -> Result<bool> {
    match read_marker(client, marker)? {
        None => Ok(false),
        Some(Ok(recorded)) if recorded.key == expected_key => {
            abort_upload(client, marker, &recorded)?;
            Ok(true)
        }
        Some(_) => {
            // Not ours to interpret: a damaged marker is removed, the upload (if any) is left
            // to the bucket's lifecycle rule.
            client.delete(marker)?;
            Ok(false)
        }
    }
}
