//! [`S3Objects`]: a library in an S3-compatible bucket under a prefix (`s3://BUCKET/PREFIX`).
//!
//! Uploads are stored and archives written as multipart uploads ([`MultipartSink`]), so an
//! object appears only when complete; a registration records its multipart upload's id in
//! `tmp/<id>.multipart` first, so recovery can abort it when the registrar died. Registrations
//! read uploads with one streaming GET ([`ObjectReader`]) through the layer-peeling pipeline
//! (a bare random-access format is streamed into an unnamed temporary file that the
//! conversion reads as it grows, [`InPlaceUpload`]; one inside a compression layer is spilled
//! within the virtual-size limit, as on standard input; see [`IMAGE_READ_ENV`] for the other
//! ways), and builds read
//! archives by ranged GETs ([`S3ReadAt`]).

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use std::time::Instant;

use super::super::id;
use super::super::lease::{lease_note, parse_lease_note, HostIdentity};
use super::super::record::unix_now;
use super::in_place::InPlaceUpload;
use super::{keys, ArchiveOut, ArchiveSource, Objects, StoredUpload, UploadBody};
use crate::control::Control;
use crate::convert::{encode, ConvertOptions, ConvertReport};
use crate::error::{Error, Result};
use crate::input::detect::Format;
use crate::input::route::{open_image, route, Route};
use crate::input::{detect_file, Body, Input, Opened};
use crate::pipeline::with_pool;
use crate::read_at::ReadAt;
use crate::remote::{
    abort_recorded, abort_upload, read_marker, MarkerNote, MultipartSink, ObjectReader, RangedStream,
    S3Client, S3Location, S3ReadAt,
};
use crate::sink::ArchiveSink;

/// A library in a bucket.
#[derive(Debug)]
pub struct S3Objects {
    client: S3Client,
    location: S3Location,
}

impl S3Objects {
    /// The library at `location` if it is an `s3://` URL (`None` for a local path); the
    /// client is configured from the `AWS_*` environment variables.
    pub fn open(location: &Path) -> Result<Option<S3Objects>> {
        let Some(text) = location.to_str() else {
            return Ok(None);
        };
        let Some(location) = S3Location::parse(text)? else {
            return Ok(None);
        };
        Ok(Some(S3Objects {
            client: S3Client::from_env(&location.bucket)?,
            location,
        }))
    }

    /// The full key of a library-relative key.
    fn key(&self, relative: &str) -> String {
        if self.location.key.is_empty() {
            relative.to_string()
        } else {
            format!("{}/{relative}", self.location.key)
        }
    }

    /// The image ids of the objects directly under `prefix` whose names end in `suffix`.
    fn ids_under(&self, prefix: &str, suffix: &str) -> Result<Vec<String>> {
        let prefix = self.key(prefix);
        Ok(self
            .client
            .list(&prefix)?
            .into_iter()
            .filter_map(|(key, _)| {
                let name = key.strip_prefix(&prefix)?.strip_prefix('/')?;
                keys::image_of(name, suffix).map(str::to_string)
            })
            .collect())
    }
}

impl Objects for S3Objects {
    fn location(&self) -> String {
        self.location.url()
    }

    fn local_root(&self) -> Option<&Path> {
        None
    }

    fn put_upload(
        &self,
        account: &str,
        name: &str,
        body: &mut dyn Read,
        size: Option<u64>,
        control: &Control,
    ) -> Result<u64> {
        let key = self.key(&keys::upload(account, name)?);
        // A marker with this process's lease, renewed as parts go, lets recovery abort the
        // multipart upload if the process is killed (nothing else would: it is invisible).
        let marker = self.key(&keys::upload_marker(&upload_token()?)?);
        let host = HostIdentity::current();
        let note: MarkerNote = Box::new(move || lease_note(&host.lease_for_self(unix_now())));
        let mut sink = MultipartSink::create_noted(&self.client, &key, Some(&marker), Some(note))?;
        let copied = super::copy_with_progress(body, &mut sink, size, control)?;
        control.check()?;
        sink.finish()?;
        Ok(copied)
    }

    fn reap_interrupted_uploads(&self, host: &HostIdentity, now: i64) -> Result<usize> {
        let prefix = self.key(keys::UPLOAD_MARKERS);
        let incoming = format!("{}/", self.key(keys::INCOMING));
        let mut reaped = 0;
        for (marker, _) in self.client.list(&prefix)? {
            let name = marker.strip_prefix(&prefix).and_then(|n| n.strip_prefix('/'));
            if !name.is_some_and(keys::is_upload_marker) {
                continue;
            }
            let recorded = match read_marker(&self.client, &marker)? {
                None => continue,
                Some(Ok(recorded)) => recorded,
                Some(Err(())) => {
                    self.client.delete(&marker)?;
                    continue;
                }
            };
            let Some(lease) = parse_lease_note(&recorded.note) else {
                self.client.delete(&marker)?;
                continue;
            };
            if host.why_stale(&lease, now).is_none() {
                continue;
            }
            // Only ever an upload into this library's incoming area: a marker naming any
            // other key is not acted upon.
            if recorded.key.starts_with(&incoming) {
                abort_upload(&self.client, &marker, &recorded)?;
                reaped += 1;
            } else {
                self.client.delete(&marker)?;
            }
        }
        Ok(reaped)
    }

    fn open_upload(&self, account: &str, name: &str) -> Result<Box<dyn StoredUpload>> {
        let key = self.key(&keys::upload(account, name)?);
        match S3ReadAt::open(&self.client, &key)? {
            Some(object) => Ok(Box::new(S3Upload {
                client: self.client.clone(),
                key,
                name: name.to_string(),
                identity: object.identity(),
                etag: object.etag().map(str::to_string),
                object: Some(object),
            })),
            None => Err(Error::invalid_argument(format!(
                "there is no file {name:?} in your incoming directory"
            ))),
        }
    }

    fn prepare(&self, _id: &str) -> Result<Option<PathBuf>> {
        Ok(None)
    }

    fn create_archive(&self, id: &str) -> Result<ArchiveOut> {
        let key = self.key(&keys::archive(id)?);
        let marker = self.key(&keys::marker(id)?);
        Ok(ArchiveOut::S3(MultipartSink::create(
            &self.client,
            &key,
            Some(&marker),
        )?))
    }

    fn open_archive(&self, id: &str) -> Result<Option<ArchiveSource>> {
        let key = self.key(&keys::archive(id)?);
        Ok(S3ReadAt::open(&self.client, &key)?.map(ArchiveSource::S3))
    }

    fn delete_archive(&self, id: &str) -> Result<()> {
        self.client.delete(&self.key(&keys::archive(id)?))
    }

    fn archive_ids(&self) -> Result<Vec<String>> {
        self.ids_under(keys::IMAGES, keys::ARCHIVE_SUFFIX)
    }

    fn scratch_ids(&self) -> Result<Vec<String>> {
        self.ids_under(keys::SCRATCH, keys::MARKER_SUFFIX)
    }

    fn discard_scratch(&self, id: &str) -> Result<()> {
        let archive = self.key(&keys::archive(id)?);
        abort_recorded(&self.client, &self.key(&keys::marker(id)?), &archive).map(|_| ())
    }

    fn put_object(&self, key: &str, bytes: &[u8]) -> Result<()> {
        keys::check_object_key(key)?;
        self.client.put_small(&self.key(key), bytes.to_vec())
    }

    fn get_object(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        keys::check_object_key(key)?;
        self.client.get_small(&self.key(key), limit)
    }

    fn delete_object(&self, key: &str) -> Result<()> {
        keys::check_object_key(key)?;
        self.client.delete(&self.key(key))
    }

    fn list_objects(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        keys::check_object_key(prefix)?;
        let base = self.key("");
        Ok(self
            .client
            .list(&self.key(prefix))?
            .into_iter()
            .filter_map(|(key, size)| Some((key.strip_prefix(&base)?.to_string(), size)))
            .collect())
    }
}

/// A fresh name for an upload's marker: `up-` and ten random letters and digits.
fn upload_token() -> Result<String> {
    let random = || id::new_image_id().map(|id| id.trim_start_matches("img-").to_string());
    Ok(format!("up-{}{}", random()?, random()?))
}

/// An upload object, as the HEAD that opened it found it.
struct S3Upload {
    client: S3Client,
    key: String,
    name: String,
    identity: String,
    etag: Option<String>,
    object: Option<S3ReadAt>,
}

impl S3Upload {
    fn removed(&self) -> Error {
        Error::invalid_argument(format!(
            "{:?} was removed from your incoming directory",
            self.name
        ))
    }
}

impl StoredUpload for S3Upload {
    /// A random-access format (qcow2, VMDK, ...) is read in place ([`InPlaceUpload`]: by
    /// default one streaming GET into a temporary file that the conversion reads as it grows,
    /// or by ranged GETs); anything else (raw, gzip, xz, zstd) by one streaming GET through
    /// the layer-peeling pipeline. `IMGPACK_S3_IMAGE_READ=spill` spills random-access formats
    /// whole before converting them, as earlier versions did (kept for comparison).
    fn body(&mut self) -> Result<UploadBody> {
        let object = self
            .object
            .take()
            .ok_or_else(|| Error::invalid_argument("the upload was already read"))?;
        // A detection failure is left to the pipeline, which reports it as for any input.
        let format = detect_file(&object).ok();
        // An imgpack archive is registered by random access (`library/import.rs`), by ranged
        // GETs of the version opened.
        if format == Some(Format::Imgpack) {
            return Ok(UploadBody::Archive(object, self.name.clone()));
        }
        let mode = image_read_mode();
        if mode != ImageRead::Spill {
            if let Some(format) = format {
                if route(format) == Route::Image {
                    let upload = match mode {
                        ImageRead::Ranged => Some(InPlaceUpload::ranged(object)),
                        _ => open_stream(&self.client, &self.key, self.etag.as_deref(), object.size())?
                            .map(|reader| InPlaceUpload::spilling(reader, object.size(), &self.name))
                            .transpose()?,
                    };
                    return match upload {
                        Some(upload) => Ok(UploadBody::Ranged(upload, format, self.name.clone())),
                        None => Err(self.removed()),
                    };
                }
            }
        }
        let reader = open_stream(&self.client, &self.key, self.etag.as_deref(), object.size())?
            .ok_or_else(|| self.removed())?;
        Ok(UploadBody::Input(Input::reader(reader, self.name.clone())))
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn remove(&self) -> io::Result<()> {
        super::local::hold_before_removing_upload();
        // S3 has no conditional delete: an upload stored again under the same name is left
        // alone when the HEAD already sees it, but one stored between the HEAD and the
        // DELETE goes too (the local backend can tell them apart exactly).
        let current = self.client.head_meta(&self.key).map_err(io::Error::from)?;
        match current {
            Some(meta) if meta.e_tag.is_some() && meta.e_tag != self.etag => Ok(()),
            Some(_) => self.client.delete(&self.key).map_err(io::Error::from),
            None => Ok(()),
        }
    }
}

/// Environment variable choosing how an upload is read front to back (a stream through the
/// pipeline, or into the streamed spill): unset or `ranged` (the default: [`RangedStream`],
/// parallel ranged GETs) or `single` (one streaming GET, [`ObjectReader`], as before). On
/// s3s-fs four ranged GETs in parallel served 1 GiB in 4.8 s against 11-14 s for one GET,
/// with half the server's CPU (docs/SCALE.md).
pub const STREAM_READ_ENV: &str = "IMGPACK_S3_STREAM_READ";

/// The upload `key` (`size` bytes, only the version `etag`) read front to back, the way
/// [`STREAM_READ_ENV`] says; `None` if it is gone.
fn open_stream(
    client: &S3Client,
    key: &str,
    etag: Option<&str>,
    size: u64,
) -> Result<Option<Box<dyn Read + Send>>> {
    if std::env::var(STREAM_READ_ENV).is_ok_and(|mode| mode == "single") {
        return Ok(ObjectReader::open_version(client, key, etag)?
            .map(|reader| Box::new(reader) as Box<dyn Read + Send>));
    }
    Ok(Some(Box::new(RangedStream::open(client, key, etag, size)?)))
}

/// Environment variable choosing how random-access uploads (qcow2, VMDK, ...) are read:
/// unset or `streamed` (the default: one streaming GET into an unnamed temporary file, which
/// the conversion reads as it grows, see [`InPlaceUpload`]), `spill` (the whole upload copied
/// to the temporary file first, then converted: what earlier versions did) or `ranged` (in
/// place, by ranged GETs). On s3s-fs the streamed spill measured fastest (docs/SCALE.md):
/// it is one sequential transfer like the spill, but overlapped with the conversion.
pub const IMAGE_READ_ENV: &str = "IMGPACK_S3_IMAGE_READ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageRead {
    Streamed,
    Spill,
    Ranged,
}

fn image_read_mode() -> ImageRead {
    match std::env::var(IMAGE_READ_ENV).as_deref() {
        Ok("ranged") => ImageRead::Ranged,
        Ok("spill") => ImageRead::Spill,
        _ => ImageRead::Streamed,
    }
}

/// Converts an image read in place from the store (`object`, of `format`) into `sink`, as
/// `convert_to` does for a file: the sink is finished only when the archive is complete and
/// (streamed spill) the whole upload has arrived, length checked.
pub(in crate::library) fn convert_in_place(
    object: InPlaceUpload,
    format: Format,
    name: &str,
    sink: ArchiveOut,
    options: &ConvertOptions,
) -> Result<ConvertReport> {
    with_pool(options.threads, || {
        let start = Instant::now();
        let output = sink.name();
        object
            .check_limits(&options.limits)
            .map_err(|e| e.in_file(Path::new(name)))?;
        let completion = object.completion();
        let source = open_image(format, object, Path::new(name), &options.limits)?;
        let opened = Opened {
            layers: Vec::new(),
            inner: format.name(),
            body: Body::Source(source),
        };
        let format_name = opened.format_name();
        let (sink, summary) = encode(opened, sink, options).map_err(|e| e.in_file(Path::new(name)))?;
        options.control.check()?;
        completion.wait().map_err(|e| e.in_file(Path::new(name)))?;
        sink.finish()?;
        Ok(ConvertReport {
            input: name.to_string(),
            output,
            format: format_name,
            virtual_size: summary.virtual_size,
            disk_size: summary.disk_size,
            compressed_size: summary.compressed_size,
            chunk_size: options.chunk_size,
            chunks: summary.chunks,
            digest: summary.digest.to_string(),
            seconds: start.elapsed().as_secs_f64(),
        })
    })
}
