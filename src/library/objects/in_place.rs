//! [`InPlaceUpload`]: an upload in a random-access format (qcow2, VMDK, VHD, ...) read for a
//! registration without first copying all of it out of the store, in one of two ways:
//!
//! | how | what | when |
//! |---|---|---|
//! | streamed spill (default) | the upload front to back (parallel ranged GETs, or one streaming GET) into an unnamed temporary file; the conversion reads the file as it grows ([`GrowingSpill`]) | one sequential pass, overlapped with the conversion |
//! | ranged (`IMGPACK_S3_IMAGE_READ=ranged`) | ranged GETs through a block cache ([`S3ReadAt`]) | no temporary file, but a request per scattered read |
//!
//! The streamed spill reads the whole upload front to back, so it also hashes it for
//! `source_sha256` as it passes; ranged reading does not see every byte and hashes nothing.

use std::io::{self, Read};
use std::sync::Arc;

use crate::digest::{hash_while_reading, Sha256Handle};
use crate::error::{Error, ErrorKind, Result};
use crate::input::stream::spill_limit;
use crate::input::InputLimits;
use crate::read_at::ReadAt;
use crate::remote::{GrowingSpill, S3ReadAt};
use crate::units::format_size;

/// An upload opened for reading in place; see the module docs.
pub struct InPlaceUpload {
    reading: Reading,
    sha256: Option<Sha256Handle>,
}

enum Reading {
    Ranged(S3ReadAt),
    Spilling(Arc<GrowingSpill>),
}

impl InPlaceUpload {
    /// Reads `object` by ranged GETs.
    pub(super) fn ranged(object: S3ReadAt) -> InPlaceUpload {
        InPlaceUpload {
            reading: Reading::Ranged(object),
            sha256: None,
        }
    }

    /// Starts copying `reader` (the upload front to back, `size` bytes as its HEAD found
    /// it) into a temporary file in the system's temporary directory; `name` labels errors.
    pub(super) fn spilling(reader: Box<dyn Read + Send>, size: u64, name: &str) -> Result<InPlaceUpload> {
        let (reader, sha256) = hash_while_reading(reader);
        let spill = GrowingSpill::start(Box::new(reader), size, &std::env::temp_dir(), name)?;
        Ok(InPlaceUpload {
            reading: Reading::Spilling(Arc::new(spill)),
            sha256: Some(sha256),
        })
    }

    /// The SHA-256 of the upload as the streamed spill reads it (taken once; `None` when read
    /// by ranged GETs).
    pub(in crate::library) fn take_sha256(&mut self) -> Option<Sha256Handle> {
        self.sha256.take()
    }

    /// Refuses an upload that would spill more than an image within `limits` can take,
    /// before the conversion reads any of it (as the spill of a stream does).
    pub(super) fn check_limits(&self, limits: &InputLimits) -> Result<()> {
        let limit = spill_limit(limits.max_virtual_size);
        match &self.reading {
            Reading::Spilling(spill) if spill.size() > limit => Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the upload is {} bytes, more than an image within the virtual-size limit of {} can take ({limit} bytes)",
                    spill.size(),
                    format_size(limits.max_virtual_size)
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Something to wait on for the whole upload to have arrived (the streamed spill), kept
    /// after the upload itself is handed to the image reader.
    pub(super) fn completion(&self) -> Completion {
        match &self.reading {
            Reading::Ranged(_) => Completion(None),
            Reading::Spilling(spill) => Completion(Some(Arc::clone(spill))),
        }
    }
}

/// See [`InPlaceUpload::completion`].
pub(super) struct Completion(Option<Arc<GrowingSpill>>);

impl Completion {
    /// Waits until the streamed spill has read the upload to its end (so its length is
    /// checked and its SHA-256 complete); the download's error if it failed.
    pub(super) fn wait(&self) -> Result<()> {
        match &self.0 {
            Some(spill) => spill.wait_complete(),
            None => Ok(()),
        }
    }
}

impl ReadAt for InPlaceUpload {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.reading {
            Reading::Ranged(object) => object.read_exact_at(buf, offset),
            Reading::Spilling(spill) => spill.read_exact_at(buf, offset),
        }
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match &self.reading {
            Reading::Ranged(object) => object.read_at_most(buf, offset),
            Reading::Spilling(spill) => spill.read_at_most(buf, offset),
        }
    }

    fn size(&self) -> u64 {
        match &self.reading {
            Reading::Ranged(object) => object.size(),
            Reading::Spilling(spill) => spill.size(),
        }
    }
}
