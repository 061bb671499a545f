//! `source_sha256`: the SHA-256 of an upload's bytes as received (what `sha256sum upload.img`
//! prints, Glance's checksum of the uploaded data), computed while the upload is registered.
//!
//! [`UploadSha256::start`] looks at how the upload will be read and picks the cheapest way
//! that never reads it a second time from its store:
//!
//! | upload read as | hashed by |
//! |---|---|
//! | a stream (a streaming GET from S3) | the reading thread, as the bytes pass ([`hash_while_reading`]) |
//! | a local file (read in parallel, at random, by the pipeline) | one sequential pass on its own thread, concurrently, holes fed as zeros ([`sha256_of_file`]) |
//! | a random-access format streamed into a temporary file (S3's default) | the download thread, as the bytes pass |
//! | in place by ranged GETs (`IMGPACK_S3_IMAGE_READ=ranged`) | not hashed: it would cost a second download (`None`) |
//!
//! Snapshots of server disks are not uploads and get no `source_sha256`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::objects::UploadBody;
use super::SourceType;
use crate::digest::{hash_while_reading, sha256_of_file, Sha256Handle};

/// The SHA-256 of an upload under way; [`finish`](UploadSha256::finish) gives it once the
/// conversion has read the upload. Dropping it stops a pass still running.
pub(super) struct UploadSha256 {
    how: How,
}

enum How {
    Stream(Sha256Handle),
    FilePass(FilePass),
    NotHashed,
}

impl UploadSha256 {
    /// Starts hashing the upload that `body` reads; returns the body to convert (a stream
    /// now hashed as it is read).
    pub(super) fn start(body: UploadBody, source_type: SourceType) -> (UploadBody, UploadSha256) {
        let not_hashed = UploadSha256 { how: How::NotHashed };
        if source_type != SourceType::Upload {
            return (body, not_hashed);
        }
        // Without the `s3` feature an upload body is only ever a local input.
        #[cfg_attr(not(feature = "s3"), allow(clippy::infallible_destructuring_match))]
        let input = match body {
            UploadBody::Input(input) => input,
            #[cfg(feature = "s3")]
            UploadBody::Ranged(mut upload, format, name) => {
                // The streamed spill hashes the upload as it downloads it.
                let how = upload.take_sha256().map_or(How::NotHashed, How::Stream);
                return (UploadBody::Ranged(upload, format, name), UploadSha256 { how });
            }
            // An uploaded archive is read by ranged GETs, not streamed through a hash.
            #[cfg(feature = "s3")]
            body @ UploadBody::Archive(..) => return (body, not_hashed),
        };
        if let Some(file) = input.opened_file() {
            let how = match FilePass::spawn(file) {
                Some(pass) => How::FilePass(pass),
                None => How::NotHashed,
            };
            return (UploadBody::Input(input), UploadSha256 { how });
        }
        let mut handle = None;
        let input = input.wrap_reader(|reader| {
            let (reader, sha256) = hash_while_reading(reader);
            handle = Some(sha256);
            Box::new(reader)
        });
        let how = handle.map_or(How::NotHashed, How::Stream);
        (UploadBody::Input(input), UploadSha256 { how })
    }

    /// The hex SHA-256 of the whole upload, after a successful conversion: `None` where it is
    /// not computed (see the module doc), or when the stream was not read to its end.
    pub(super) fn finish(self) -> Option<String> {
        match self.how {
            How::Stream(handle) => {
                let sum = handle.result();
                sum.complete.then_some(sum.sha256)
            }
            How::FilePass(mut pass) => pass.join(),
            How::NotHashed => None,
        }
    }
}

/// A sequential pass over a local upload on its own thread.
struct FilePass {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Option<String>>>,
}

impl FilePass {
    /// `None` if the file cannot be duplicated or measured (the conversion will say why).
    fn spawn(file: &std::fs::File) -> Option<FilePass> {
        let file = file.try_clone().ok()?;
        let len = file.metadata().ok()?.len();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("upload-sha256".into())
            .spawn(move || sha256_of_file(&file, len, &stopped).ok().flatten())
            .ok()?;
        Some(FilePass {
            stop,
            thread: Some(thread),
        })
    }

    fn join(&mut self) -> Option<String> {
        self.thread.take()?.join().ok().flatten()
    }
}

impl Drop for FilePass {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.join();
    }
}
