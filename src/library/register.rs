//! A registration's steps: a `creating` record with a lease, the conversion into an archive
//! that appears only when complete (a file, or a multipart upload) with progress written to
//! the catalog, then `available` (or `failed` with a
//! reason) by compare-and-swap, so a registration another process judged dead stays failed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::chunks::{self, DedupSession, IndexSink};
use super::import::{import_archive, ImportTarget};
use super::objects::{ArchiveOut, UploadBody};
use super::record::{catalog_error, timestamp_now, unix_now};
use super::source::{check_text, check_username, SourceInput};
use super::upload_sha256::UploadSha256;
use super::{id, lease, lock, not_found, Changes, ImageRecord, Library, NewImage, Status};
use crate::archive::reader::ArchiveReader;
use crate::control::{Control, Progress};
use crate::convert::{convert_to, ConvertOptions, ConvertReport};
use crate::error::{Error, Result};
use crate::input::detect::Format;
use crate::input::{detect_file, Input};
use crate::pipeline::hook::{ChunkLookup, DedupHooks, FrameStore};
use crate::read_at::FileAt;

/// How often a registration writes its progress (`disk_size`) to the catalog.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// How often a registration renews its lease.
const RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// Attempts at drawing an unused image id.
const ID_ATTEMPTS: usize = 32;

impl Library {
    pub(super) fn create(
        &self,
        caller: &str,
        image: &NewImage,
        source: SourceInput,
        max_compressed_size: Option<u64>,
        control: &Control,
        on_created: &mut dyn FnMut(&ImageRecord),
    ) -> Result<ImageRecord> {
        let is_operator = caller == self.settings.operator;
        let official = image.official.unwrap_or(is_operator);
        if official && !is_operator {
            return Err(catalog_error(format!(
                "only the operator account ({}) can register official images",
                self.settings.operator
            )));
        }
        check_text("name", &image.name, 1, 255)?;
        check_text("description", &image.description, 0, 1024)?;
        if let Some(username) = &image.username {
            check_username(username)?;
        }
        let mut record = ImageRecord {
            id: String::new(),
            owner: caller.to_string(),
            source_type: source.source_type,
            created_on: timestamp_now(),
            status: Status::Creating,
            name: image.name.clone(),
            description: image.description.clone(),
            arch: image.arch,
            mode: image.mode,
            public: image.public.unwrap_or(official),
            official,
            username: image.username.clone().filter(|u| !u.is_empty()),
            source: source.name.clone(),
            virtual_size: 0,
            disk_size: 0,
            compressed_size: 0,
            format: None,
            chunks: 0,
            reason: None,
            digest: None,
            source_sha256: None,
        };
        let lease = self.host.lease_for_self(unix_now());
        let mut inserted = false;
        for _ in 0..ID_ATTEMPTS {
            record.id = id::new_image_id()?;
            if self.store()?.insert(&record, &lease)? {
                inserted = true;
                break;
            }
        }
        if !inserted {
            return Err(catalog_error("could not find an unused image id"));
        }
        let id = record.id.clone();
        self.claim_upload(&record, source.identity.as_deref())?;
        if let Ok(mut last) = self.last_dedup.lock() {
            *last = None;
        }
        let prepared = self.objects.prepare(&id);
        on_created(&record);

        let limit = max_compressed_size.unwrap_or(self.settings.max_compressed_size);
        let (body, upload_sha256) = UploadSha256::start(source.body, source.source_type);
        let outcome =
            prepared.and_then(|spill_dir| self.produce(&id, caller, body, spill_dir, limit, control));
        let failure = match outcome {
            Ok(report) => {
                let changes = Changes {
                    virtual_size: Some(report.virtual_size),
                    disk_size: Some(report.disk_size),
                    compressed_size: Some(report.compressed_size),
                    format: Some(report.format.clone()),
                    chunks: Some(report.chunks),
                    digest: Some(report.digest.clone()),
                    source_sha256: upload_sha256.finish(),
                    ..Changes::default()
                };
                if self.store()?.compare_and_set(
                    &id,
                    &[Status::Creating],
                    Some(Status::Available),
                    &changes,
                )? {
                    let _ = self.objects.discard_scratch(&id);
                    return self.store()?.get(&id)?.ok_or_else(|| not_found(&id));
                }
                // Another process judged this registration dead and failed it: its verdict
                // stands, so the archive goes.
                self.remove_outputs(&id);
                let now = self.store()?.get(&id)?;
                return Err(catalog_error(format!(
                    "{id}: the catalog no longer expects this registration ({})",
                    now.and_then(|r| r.reason)
                        .unwrap_or_else(|| "no reason recorded".to_string())
                )));
            }
            Err(e) => e,
        };
        self.remove_outputs(&id);
        let reason = describe(&failure, &source.name);
        let changes = Changes {
            reason: Some(reason.clone()),
            ..Changes::default()
        };
        self.store()?
            .compare_and_set(&id, &[Status::Creating], Some(Status::Failed), &changes)?;
        // Its pinned frames go back to the collector (`images gc` would also do it).
        let _ = self.store()?.release_dead_images();
        Err(Error::new(failure.kind(), format!("{id} failed: {reason}")))
    }

    /// Converts `input` into the archive `images/<id>.imgpack` (which appears only when
    /// complete), writing progress into the catalog.
    fn produce(
        &self,
        id: &str,
        owner: &str,
        body: UploadBody,
        spill_dir: Option<PathBuf>,
        limit: u64,
        control: &Control,
    ) -> Result<ConvertReport> {
        let progress = Arc::new(CatalogProgress {
            disk_size: AtomicU64::new(0),
            forward: control.progress.clone(),
        });
        let options = ConvertOptions {
            max_compressed_size: limit,
            temp_dir: spill_dir,
            control: Control {
                cancel: control.cancel.clone(),
                progress: Some(Arc::clone(&progress) as Arc<dyn Progress>),
            },
            ..ConvertOptions::default()
        };
        let (stop, stopped) = channel::<()>();
        let report = std::thread::scope(|scope| {
            let store = Arc::clone(&self.store);
            let progress = Arc::clone(&progress);
            scope.spawn(move || {
                let mut written = 0;
                let mut renewed = Instant::now();
                loop {
                    match stopped.recv_timeout(PROGRESS_INTERVAL) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let disk_size = progress.disk_size.load(Ordering::Relaxed);
                    if disk_size != written || renewed.elapsed() >= RENEW_INTERVAL {
                        let expires = unix_now().saturating_add(lease::LEASE_SECONDS);
                        if let Ok(mut store) = lock(&store) {
                            if store.renew(id, Some(disk_size), expires).is_ok() {
                                written = disk_size;
                                renewed = Instant::now();
                            }
                        }
                    }
                }
            });
            let mut options = options;
            let session = self.dedup.then(|| {
                Arc::new(DedupSession::new(
                    id,
                    owner,
                    Arc::clone(&self.store),
                    Arc::clone(&self.objects),
                ))
            });
            let without_frames = Arc::new(Mutex::new(Vec::new()));
            let sink = match &session {
                Some(session) => {
                    options.dedup = Some(DedupHooks {
                        lookup: Arc::clone(session) as Arc<dyn ChunkLookup>,
                        frames: Arc::clone(session) as Arc<dyn FrameStore>,
                    });
                    let name = format!("{}/{}", self.objects.location(), chunks::index_key(id)?);
                    Ok(ArchiveOut::Index(IndexSink::new(
                        name,
                        None,
                        Arc::clone(&without_frames),
                    )))
                }
                None => self.objects.create_archive(id),
            };
            let report = sink.and_then(|sink| match body {
                UploadBody::Input(input) => match archive_upload(&input)? {
                    Some(archive) => {
                        let name = input.name().display().to_string();
                        import_archive(
                            &archive,
                            &name,
                            import_target(&session, sink),
                            limit,
                            &options.control,
                        )
                    }
                    None => convert_to(input, sink, &options),
                },
                #[cfg(feature = "s3")]
                UploadBody::Archive(object, name) => {
                    let archive =
                        ArchiveReader::open(object).map_err(|e| e.in_file(std::path::Path::new(&name)))?;
                    import_archive(
                        &archive,
                        &name,
                        import_target(&session, sink),
                        limit,
                        &options.control,
                    )
                }
                #[cfg(feature = "s3")]
                UploadBody::Ranged(object, format, name) => {
                    super::objects::s3::convert_in_place(object, format, &name, sink, &options)
                }
            });
            // The index is stored (and the new frames marked stored) while the lease is
            // still being renewed.
            let report = match (report, &session) {
                (Ok(report), Some(session)) => {
                    let archive = without_frames
                        .lock()
                        .map_err(|_| catalog_error("the index buffer was poisoned"))?;
                    let stats = session.finish(&archive)?;
                    if let Ok(mut last) = self.last_dedup.lock() {
                        *last = Some(stats);
                    }
                    Ok(report)
                }
                (report, _) => report,
            };
            drop(stop);
            report
        })?;
        Ok(report)
    }
}

/// Where an uploaded archive goes: the chunk store through `session`, or as it is.
fn import_target<S: crate::sink::ArchiveSink>(
    session: &Option<Arc<DedupSession>>,
    sink: S,
) -> ImportTarget<'_, S> {
    match session {
        Some(session) => ImportTarget::Chunks {
            lookup: session.as_ref(),
            frames: session.as_ref(),
            sink,
        },
        None => ImportTarget::Whole(sink),
    }
}

/// The upload opened as an imgpack archive, if it is a local file holding one (detected by
/// content, like every input); `None` for any other upload, which is converted.
fn archive_upload(input: &Input) -> Result<Option<ArchiveReader<FileAt>>> {
    let Some(file) = input.opened_file() else {
        return Ok(None);
    };
    let name = input.name();
    let file = file
        .try_clone()
        .and_then(FileAt::new)
        .map_err(|e| Error::io("opening the upload", e).in_file(name))?;
    if !matches!(detect_file(&file), Ok(Format::Imgpack)) {
        return Ok(None);
    }
    ArchiveReader::open(file).map(Some).map_err(|e| e.in_file(name))
}

/// Keeps the latest `disk_size` for the catalog writer thread; passes progress on.
struct CatalogProgress {
    disk_size: AtomicU64,
    forward: Option<Arc<dyn Progress>>,
}

impl Progress for CatalogProgress {
    fn update(&self, done: u64, total: Option<u64>, disk_size: u64) {
        self.disk_size.store(disk_size, Ordering::Relaxed);
        if let Some(forward) = &self.forward {
            forward.update(done, total, disk_size);
        }
    }
}

/// A failure as one line for the record's `reason`: what, where and why.
fn describe(e: &Error, source: &str) -> String {
    let mut text = if e.path().is_none() {
        format!("{source}: {e}")
    } else {
        e.to_string()
    };
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}
