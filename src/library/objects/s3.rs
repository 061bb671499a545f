//! [`S3Objects`]: a library in an S3-compatible bucket under a prefix (`s3://BUCKET/PREFIX`).
//!
//! Uploads are stored and archives written as multipart uploads ([`MultipartSink`]), so an
//! object appears only when complete; a registration records its multipart upload's id in
//! `tmp/<id>.multipart` first, so recovery can abort it when the registrar died. Registrations
//! read uploads with one streaming GET ([`ObjectReader`]) through the layer-peeling pipeline
//! (a random-access format, bare or compressed, is spilled to an unnamed temporary file
//! within the virtual-size limit, as on standard input; `IMGPACK_S3_IMAGE_READ=ranged` reads
//! bare ones in place by ranged GETs instead, see [`IMAGE_READ_ENV`]), and builds read
//! archives by ranged GETs ([`S3ReadAt`]).

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use std::time::Instant;

use super::super::id;
use super::super::lease::{lease_note, parse_lease_note, HostIdentity};
use super::super::record::unix_now;
use super::{keys, ArchiveOut, ArchiveSource, Objects, StoredUpload, UploadBody};
use crate::control::Control;
use crate::convert::{encode, ConvertOptions, ConvertReport};
use crate::error::{Error, Result};
use crate::input::detect::Format;
use crate::input::route::{open_image, route, Route};
use crate::input::{detect_file, Body, Input, Opened};
use crate::pipeline::with_pool;
use crate::remote::{
    abort_recorded, abort_upload, read_marker, MarkerNote, MultipartSink, ObjectReader, S3Client, S3Location,
    S3ReadAt,
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

impl StoredUpload for S3Upload {
    /// One streaming GET through the layer-peeling pipeline (random-access formats spilled),
    /// or with `IMGPACK_S3_IMAGE_READ=ranged` random-access formats in place by ranged GETs.
    fn body(&mut self) -> Result<UploadBody> {
        let object = self
            .object
            .take()
            .ok_or_else(|| Error::invalid_argument("the upload was already read"))?;
        if ranged_images() {
            // A detection failure is left to the pipeline, which reports it as for any input.
            if let Ok(format) = detect_file(&object) {
                if route(format) == Route::Image {
                    return Ok(UploadBody::Ranged(object, format, self.name.clone()));
                }
            }
        }
        // Only the version opened: its identity is what the catalog records.
        let reader =
            ObjectReader::open_version(&self.client, &self.key, self.etag.as_deref())?.ok_or_else(|| {
                Error::invalid_argument(format!(
                    "{:?} was removed from your incoming directory",
                    self.name
                ))
            })?;
        // An imgpack archive (its magic, as detection finds it) is registered by random
        // access (`library/import.rs`), by ranged GETs of the version opened; the first bytes
        // are peeked off the stream, which costs no request.
        let mut reader = reader;
        let mut magic = [0u8; crate::archive::format::MAGIC.len()];
        let peeked = crate::input::read_full(&mut reader, &mut magic)
            .map_err(|e| Error::io("reading the upload", e).in_file(Path::new(&self.name)))?;
        if magic[..peeked] == crate::archive::format::MAGIC {
            return Ok(UploadBody::Archive(object, self.name.clone()));
        }
        let reader = io::Cursor::new(magic[..peeked].to_vec()).chain(reader);
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

/// Environment variable choosing how random-access uploads are read: `spill` (the default:
/// one streaming GET into an unnamed temporary file within the virtual-size limit, then read
/// locally) or `ranged` (in place, by ranged GETs). Spilling measured faster: a 128 MiB zstd
/// qcow2 on a loopback moto server registered in 4.65 s spilled against 17.65 s ranged
/// (`benches/s3_compare.sh`, medians of 3), as the reader's scattered small reads cost a
/// request each while the spill is one sequential transfer.
pub const IMAGE_READ_ENV: &str = "IMGPACK_S3_IMAGE_READ";

fn ranged_images() -> bool {
    std::env::var(IMAGE_READ_ENV).is_ok_and(|mode| mode == "ranged")
}

/// Converts an image read in place from the store (`object`, of `format`) into `sink`, as
/// `convert_to` does for a file: the sink is finished only when the archive is complete.
pub(in crate::library) fn convert_in_place(
    object: S3ReadAt,
    format: Format,
    name: &str,
    sink: ArchiveOut,
    options: &ConvertOptions,
) -> Result<ConvertReport> {
    with_pool(options.threads, || {
        let start = Instant::now();
        let output = sink.name();
        let source = open_image(format, object, Path::new(name), &options.limits)?;
        let opened = Opened {
            layers: Vec::new(),
            inner: format.name(),
            body: Body::Source(source),
        };
        let format_name = opened.format_name();
        let (sink, summary) = encode(opened, sink, options).map_err(|e| e.in_file(Path::new(name)))?;
        options.control.check()?;
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
