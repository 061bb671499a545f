//! The image library: a catalog of registered images around the conversion engine.
//!
//! A library is a directory:
//!
//! | path                          | what                                                         |
//! |-------------------------------|--------------------------------------------------------------|
//! | `incoming/<account>/`         | uploads waiting to be registered, one directory per account  |
//! | `images/<image-id>.imgpack`   | registered archives, read-only                               |
//! | `tmp/<image-id>/`             | scratch space of a registration in progress                  |
//! | `catalog.db`                  | the catalog ([`SqliteStore`]), behind [`CatalogStore`]       |
//!
//! [`Library`] offers the `brightbox images` operations as calls: [`Library::register`],
//! [`Library::snapshot`], [`Library::list`], [`Library::show`], [`Library::update`],
//! [`Library::destroy`] and [`Library::build`]. Who sees what and which status changes are
//! allowed is decided in [`policy`]; every status change is a compare-and-swap in the store.
//!
//! A registration stores a [`Lease`](store::Lease) naming its process; every [`Library::open`]
//! marks `creating` images whose process is gone as `failed` ([`Library::recover`]) and removes
//! their scratch files, keeping the upload in `incoming/`.
//!
//! ```no_run
//! use imgpack::library::{Library, LibraryOptions, NewImage, RegisterRequest, Arch};
//! let library = Library::open("/srv/library".as_ref(), &LibraryOptions::default())?;
//! let request = RegisterRequest::new(NewImage::new("Slackware", Arch::I686), "slackware.img");
//! let image = library.register("acc-xxxxx", &request, &mut |created| println!("{}", created.id))?;
//! assert_eq!(image.status, imgpack::library::Status::Available);
//! # Ok::<(), imgpack::Error>(())
//! ```

pub mod id;
pub mod lease;
pub mod policy;
pub mod record;
mod register;
mod source;
pub mod sqlite;
pub mod store;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;

use crate::control::Control;
use crate::convert::DEFAULT_MAX_COMPRESSED_SIZE;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::archive::reader::ArchiveReader;
use crate::extract::write_disk;
use crate::output::AtomicFile;
use crate::sys::sync_dir;

pub use lease::HostIdentity;
pub use record::{Arch, ImageRecord, Mode, SourceType, Status};
pub use source::check_source_name;
pub use sqlite::SqliteStore;
pub use store::{CatalogStore, Changes};

use record::{catalog_error, unix_now};
use source::{check_text, check_username, SourceInput};

/// The operator account when none is configured.
pub const DEFAULT_OPERATOR: &str = "brightbox";
/// Setting key: the operator account.
pub const SETTING_OPERATOR: &str = "operator";
/// Setting key: the compressed-size limit in bytes.
pub const SETTING_MAX_COMPRESSED_SIZE: &str = "max_compressed_size";

/// How a library is opened.
#[derive(Debug, Clone, Default)]
pub struct LibraryOptions {
    /// The operator account, overriding the library's setting (the CLI passes
    /// `IMGPACK_OPERATOR`). Default: the setting, else `brightbox`.
    pub operator: Option<String>,
}

/// The library settings in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibrarySettings {
    /// The account that registers official images.
    pub operator: String,
    /// Registrations whose archive would be larger fail. Default 50 GiB.
    pub max_compressed_size: u64,
}

/// The metadata of a new image.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// Name (required).
    pub name: String,
    /// Description. Default empty.
    pub description: String,
    /// Architecture.
    pub arch: Arch,
    /// Mode. Default `virtio`.
    pub mode: Mode,
    /// Public flag. Default: `false`, or `true` for the operator's official images.
    pub public: Option<bool>,
    /// Official flag (operator only). Default: `true` for the operator, else `false`.
    pub official: Option<bool>,
    /// Default user account of the image. Default none.
    pub username: Option<String>,
}

impl NewImage {
    /// An image named `name` for `arch`, with every other field at its default.
    pub fn new(name: &str, arch: Arch) -> NewImage {
        NewImage {
            name: name.to_string(),
            description: String::new(),
            arch,
            mode: Mode::Virtio,
            public: None,
            official: None,
            username: None,
        }
    }
}

/// `images register`: an upload in the caller's `incoming/` directory to register.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    /// The new image's metadata.
    pub image: NewImage,
    /// A file name in the caller's `incoming/` directory (no path).
    pub source: String,
    /// Compressed-size limit for this call. Default: the library setting.
    pub max_compressed_size: Option<u64>,
    /// Cancellation and progress of the conversion.
    pub control: Control,
}

impl RegisterRequest {
    /// A registration of `source` with default limits.
    pub fn new(image: NewImage, source: &str) -> RegisterRequest {
        RegisterRequest {
            image,
            source: source.to_string(),
            max_compressed_size: None,
            control: Control::default(),
        }
    }
}

/// `images snapshot`: a server disk to record as an image.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    /// The new image's metadata.
    pub image: NewImage,
    /// The server's disk (a raw image file or any format imgpack reads).
    pub disk: PathBuf,
    /// Compressed-size limit for this call. Default: the library setting.
    pub max_compressed_size: Option<u64>,
    /// Cancellation and progress of the conversion.
    pub control: Control,
}

/// `images update`: the fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ImageUpdate {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New architecture.
    pub arch: Option<Arch>,
    /// New mode.
    pub mode: Option<Mode>,
    /// Make the image public or private.
    pub public: Option<bool>,
    /// Deprecate (`available` to `deprecated`) or reinstate it.
    pub deprecated: Option<bool>,
    /// New username; an empty string clears it.
    pub username: Option<String>,
    /// Mark official or not (operator only).
    pub official: Option<bool>,
}

/// What `images build` did. Field names are part of the CLI's `--json` contract.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BuildReport {
    /// The image built from.
    pub image: String,
    /// The server disk written.
    pub disk: String,
    /// Size of the server disk.
    pub disk_size: u64,
    /// Virtual size of the image.
    pub virtual_size: u64,
    /// Bytes of data written.
    pub data_size: u64,
    /// Architecture the server must have.
    pub arch: Arch,
    /// Mode the server must run in.
    pub mode: Mode,
    /// Wall time.
    pub seconds: f64,
}

type SharedStore = Arc<Mutex<Box<dyn CatalogStore>>>;

/// An open image library.
pub struct Library {
    root: PathBuf,
    store: SharedStore,
    host: HostIdentity,
    settings: LibrarySettings,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("root", &self.root)
            .field("settings", &self.settings)
            .finish()
    }
}

/// The refusal given for an unknown id and for an image the caller may not know about alike.
fn not_found(id: &str) -> Error {
    catalog_error(format!("no image {id} found"))
}

impl Library {
    /// Opens the library at `root` (creating its directories and catalog if needed) and
    /// recovers registrations whose process is gone.
    pub fn open(root: &Path, options: &LibraryOptions) -> Result<Library> {
        create_layout(root)?;
        let store = SqliteStore::open(&root.join("catalog.db"))?;
        Library::with_store(root, Box::new(store), options)
    }

    /// Opens the library at `root` over an already open catalog.
    pub fn with_store(
        root: &Path,
        store: Box<dyn CatalogStore>,
        options: &LibraryOptions,
    ) -> Result<Library> {
        create_layout(root)?;
        let mut library = Library {
            root: root.to_path_buf(),
            store: Arc::new(Mutex::new(store)),
            host: HostIdentity::current(),
            settings: LibrarySettings {
                operator: DEFAULT_OPERATOR.to_string(),
                max_compressed_size: DEFAULT_MAX_COMPRESSED_SIZE,
            },
        };
        library.settings = library.read_settings(options)?;
        library.recover()?;
        Ok(library)
    }

    fn read_settings(&self, options: &LibraryOptions) -> Result<LibrarySettings> {
        let mut store = self.store()?;
        let operator = match &options.operator {
            Some(name) => name.clone(),
            None => store
                .setting(SETTING_OPERATOR)?
                .unwrap_or_else(|| DEFAULT_OPERATOR.to_string()),
        };
        if !id::is_operator_name(&operator) {
            return Err(Error::invalid_argument(format!(
                "operator account {operator:?} is not a valid name (2-32 lowercase letters, digits, -)"
            )));
        }
        let max_compressed_size = match store.setting(SETTING_MAX_COMPRESSED_SIZE)? {
            Some(text) => text.parse().map_err(|_| {
                catalog_error(format!(
                    "library setting {SETTING_MAX_COMPRESSED_SIZE} is not a number: {text:?}"
                ))
            })?,
            None => DEFAULT_MAX_COMPRESSED_SIZE,
        };
        Ok(LibrarySettings {
            operator,
            max_compressed_size,
        })
    }

    /// The library's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The settings in force.
    pub fn settings(&self) -> &LibrarySettings {
        &self.settings
    }

    /// Changes library settings (operator only); `None` leaves one as it is.
    pub fn set_settings(
        &mut self,
        caller: &str,
        operator: Option<&str>,
        max_compressed_size: Option<u64>,
    ) -> Result<LibrarySettings> {
        self.check_caller(caller)?;
        if caller != self.settings.operator {
            return Err(catalog_error(
                "only the operator account can change library settings",
            ));
        }
        if let Some(name) = operator {
            if !id::is_operator_name(name) {
                return Err(Error::invalid_argument(format!(
                    "{name:?} is not a valid operator name"
                )));
            }
        }
        let shared = Arc::clone(&self.store);
        let mut store = lock(&shared)?;
        if let Some(name) = operator {
            store.set_setting(SETTING_OPERATOR, name)?;
            self.settings.operator = name.to_string();
        }
        if let Some(limit) = max_compressed_size {
            store.set_setting(SETTING_MAX_COMPRESSED_SIZE, &limit.to_string())?;
            self.settings.max_compressed_size = limit;
        }
        Ok(self.settings.clone())
    }

    /// Where a registered image's archive lives.
    pub fn archive_path(&self, id: &str) -> PathBuf {
        self.root.join("images").join(format!("{id}.imgpack"))
    }

    /// The account's upload directory (created if missing).
    pub fn incoming_dir(&self, account: &str) -> Result<PathBuf> {
        self.check_caller(account)?;
        let dir = self.root.join("incoming").join(account);
        std::fs::create_dir_all(&dir).context("creating the incoming directory", &dir)?;
        Ok(dir)
    }

    fn scratch_dir(&self, id: &str) -> PathBuf {
        self.root.join("tmp").join(id)
    }

    fn store(&self) -> Result<MutexGuard<'_, Box<dyn CatalogStore>>> {
        lock(&self.store)
    }

    fn check_caller(&self, caller: &str) -> Result<()> {
        if id::is_account_id(caller) || caller == self.settings.operator {
            Ok(())
        } else {
            Err(Error::invalid_argument(format!(
                "{caller:?} is not an account id (acc- and 5 lowercase letters or digits)"
            )))
        }
    }

    /// Marks `creating` images whose registering process is gone (or whose lease expired) as
    /// `failed`, and removes scratch files and archives that no live image needs. Returns the
    /// ids marked failed. [`Library::open`] calls it.
    pub fn recover(&self) -> Result<Vec<String>> {
        let now = unix_now();
        let creating = self.store()?.creating()?;
        let mut recovered = Vec::new();
        for (id, lease) in creating {
            let Some(why) = self.host.why_stale(&lease, now) else {
                continue;
            };
            let changes = Changes {
                reason: Some(format!("registration interrupted: {why}; the source was kept")),
                ..Changes::default()
            };
            if self
                .store()?
                .compare_and_set(&id, &[Status::Creating], Some(Status::Failed), &changes)?
            {
                self.remove_outputs(&id);
                recovered.push(id);
            }
        }
        self.sweep()?;
        Ok(recovered)
    }

    /// Removes scratch directories of images no longer `creating`, and archives of images that
    /// are `failed` or `deleted` (left by a process that died between two steps).
    fn sweep(&self) -> Result<()> {
        let tmp = self.root.join("tmp");
        for entry in read_dir_names(&tmp)? {
            if id::is_image_id(&entry) && self.status_of(&entry)? != Some(Status::Creating) {
                let _ = std::fs::remove_dir_all(tmp.join(&entry));
            }
        }
        let images = self.root.join("images");
        for entry in read_dir_names(&images)? {
            let Some(id) = entry.strip_suffix(".imgpack").filter(|id| id::is_image_id(id)) else {
                continue;
            };
            if matches!(self.status_of(id)?, Some(Status::Failed | Status::Deleted)) {
                let _ = std::fs::remove_file(images.join(&entry));
            }
        }
        Ok(())
    }

    fn status_of(&self, id: &str) -> Result<Option<Status>> {
        Ok(self.store()?.get(id)?.map(|r| r.status))
    }

    fn remove_outputs(&self, id: &str) {
        let _ = std::fs::remove_dir_all(self.scratch_dir(id));
        let _ = std::fs::remove_file(self.archive_path(id));
    }

    /// Registers the upload `request.source` from the caller's `incoming/` directory. The
    /// record is created in `creating` and handed to `on_created` before the conversion
    /// starts; on success it is `available` and the upload is gone from `incoming/`; on
    /// failure it is `failed` with the reason, no archive is left and the upload is kept.
    pub fn register(
        &self,
        caller: &str,
        request: &RegisterRequest,
        on_created: &mut dyn FnMut(&ImageRecord),
    ) -> Result<ImageRecord> {
        self.check_caller(caller)?;
        let upload = self.open_upload(caller, &request.source)?;
        let source = SourceInput {
            file: &upload.file,
            name: request.source.clone(),
            source_type: SourceType::Upload,
        };
        let record = self.create(
            caller,
            &request.image,
            source,
            request.max_compressed_size,
            &request.control,
            on_created,
        )?;
        upload.remove().map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!(
                    "{} is registered, but its upload could not be removed from incoming/",
                    record.id
                ),
            )
            .with_source(e)
        })?;
        Ok(record)
    }

    /// Records the server disk `request.disk` as a `snapshot` image, through the same
    /// pipeline as [`Library::register`]. The disk is left as it is.
    pub fn snapshot(
        &self,
        caller: &str,
        request: &SnapshotRequest,
        on_created: &mut dyn FnMut(&ImageRecord),
    ) -> Result<ImageRecord> {
        self.check_caller(caller)?;
        let file = File::open(&request.disk).context("opening the server disk", &request.disk)?;
        let kind = file
            .metadata()
            .context("reading the server disk", &request.disk)?;
        if kind.is_dir() {
            return Err(Error::invalid_argument("the server disk is a directory").in_file(&request.disk));
        }
        let name = request.disk.file_name().map_or_else(
            || request.disk.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let source = SourceInput {
            file: &file,
            name,
            source_type: SourceType::Snapshot,
        };
        self.create(
            caller,
            &request.image,
            source,
            request.max_compressed_size,
            &request.control,
            on_created,
        )
    }

    /// The images `caller` sees in `images list`: its own (but deleted ones) and others'
    /// public available ones (`show_all`: and their deprecated ones), official images first,
    /// then by name.
    pub fn list(&self, caller: &str, show_all: bool) -> Result<Vec<ImageRecord>> {
        self.check_caller(caller)?;
        let mut images: Vec<ImageRecord> = self
            .store()?
            .list()?
            .into_iter()
            .filter(|r| policy::listed(r, caller, show_all))
            .collect();
        images.sort_by(|a, b| {
            b.official
                .cmp(&a.official)
                .then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase()))
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.created_on.cmp(&b.created_on))
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(images)
    }

    /// One image, if `caller` may know of it (its own, or another's public usable one).
    pub fn show(&self, caller: &str, id: &str) -> Result<ImageRecord> {
        self.check_caller(caller)?;
        if !id::is_image_id(id) {
            return Err(not_found(id));
        }
        match self.store()?.get(id)? {
            Some(record) if policy::visible(&record, caller) => Ok(record),
            _ => Err(not_found(id)),
        }
    }

    /// The caller's own image, refusing others' without revealing private ones.
    fn owned(&self, caller: &str, id: &str) -> Result<ImageRecord> {
        let record = self.show(caller, id)?;
        if !policy::owns(&record, caller) {
            return Err(catalog_error(format!(
                "{id} belongs to another account; only its owner can change it"
            )));
        }
        if record.status == Status::Deleted {
            return Err(catalog_error(format!("{id} is deleted")));
        }
        Ok(record)
    }

    /// Changes an image's metadata, visibility or deprecation (owner only; `official` is
    /// the operator's alone). Each change is applied only if the status is still what was read.
    pub fn update(&self, caller: &str, id: &str, update: &ImageUpdate) -> Result<ImageRecord> {
        self.owned(caller, id)?;
        if update.official.is_some() && caller != self.settings.operator {
            return Err(catalog_error(
                "only the operator account can mark images official",
            ));
        }
        if let Some(name) = &update.name {
            check_text("name", name, 1, 255)?;
        }
        if let Some(description) = &update.description {
            check_text("description", description, 0, 1024)?;
        }
        if let Some(username) = update.username.as_deref().filter(|u| !u.is_empty()) {
            check_username(username)?;
        }
        let changes = Changes {
            name: update.name.clone(),
            description: update.description.clone(),
            arch: update.arch,
            mode: update.mode,
            public: update.public,
            official: update.official,
            username: update.username.clone().map(|u| Some(u).filter(|u| !u.is_empty())),
            ..Changes::default()
        };
        if changes.is_empty() && update.deprecated.is_none() {
            return Err(Error::invalid_argument("nothing to update"));
        }
        // The status is compared and swapped in the store; when another process changed it
        // between our read and our write, read again and re-decide (deprecating an image that
        // just became deprecated is then a no-op, not an error).
        for _ in 0..8 {
            let record = self.owned(caller, id)?;
            let (expected, to) = match update.deprecated {
                None => (
                    vec![
                        Status::Creating,
                        Status::Available,
                        Status::Deprecated,
                        Status::Failed,
                    ],
                    None,
                ),
                Some(deprecate) => {
                    let target = if deprecate {
                        Status::Deprecated
                    } else {
                        Status::Available
                    };
                    let from = if deprecate {
                        Status::Available
                    } else {
                        Status::Deprecated
                    };
                    if record.status == target {
                        (vec![target], None)
                    } else if record.status == from {
                        (vec![from], Some(target))
                    } else {
                        return Err(catalog_error(format!(
                        "{id} is {}; only available images can be deprecated and only deprecated ones reinstated",
                        record.status
                    )));
                    }
                }
            };
            if self.store()?.compare_and_set(id, &expected, to, &changes)? {
                return self.store()?.get(id)?.ok_or_else(|| not_found(id));
            }
        }
        let now = self.store()?.get(id)?.map_or(Status::Deleted, |r| r.status);
        Err(catalog_error(format!(
            "{id} kept changing (now {now}); the update was not applied"
        )))
    }

    /// Deletes an image (owner only): status `deleted`, archive removed.
    pub fn destroy(&self, caller: &str, id: &str) -> Result<ImageRecord> {
        let record = self.owned(caller, id)?;
        if !policy::transition_allowed(record.status, Status::Deleted) {
            return Err(catalog_error(format!(
                "{id} is {}; it cannot be destroyed now",
                record.status
            )));
        }
        let expected = policy::sources_of(Status::Deleted);
        if !self
            .store()?
            .compare_and_set(id, &expected, Some(Status::Deleted), &Changes::default())?
        {
            return Err(catalog_error(format!("{id} was changed or destroyed meanwhile")));
        }
        let archive = self.archive_path(id);
        match std::fs::remove_file(&archive) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing the archive", e).in_file(&archive)),
        }
        let images = self.root.join("images");
        sync_dir(&images).context("flushing the images directory", &images)?;
        self.store()?.get(id)?.ok_or_else(|| not_found(id))
    }

    /// Writes image `id` onto a new server disk at `disk` (a sparse raw file of `disk_size`
    /// bytes, appearing only when complete), as the server build system does. Allowed for
    /// images the caller may use, in `available` or `deprecated` status.
    pub fn build(
        &self,
        caller: &str,
        id: &str,
        disk: &Path,
        disk_size: u64,
        control: &Control,
    ) -> Result<BuildReport> {
        let start = Instant::now();
        let record = self.show(caller, id)?;
        if !policy::usable_status(record.status) {
            return Err(catalog_error(format!(
                "{id} is {}; servers can only be built from available or deprecated images",
                record.status
            )));
        }
        let check_fits = |virtual_size: u64| {
            if disk_size < virtual_size {
                return Err(Error::invalid_argument(format!(
                    "{id} needs a disk of at least {virtual_size} bytes ({} MB); it will not fit on a disk of {disk_size} bytes",
                    virtual_size.div_ceil(1 << 20)
                )));
            }
            Ok(())
        };
        check_fits(record.virtual_size)?;
        if std::fs::symlink_metadata(disk).is_ok() {
            return Err(
                Error::invalid_argument("the server disk already exists; builds write new disks")
                    .in_file(disk),
            );
        }
        let archive_path = self.archive_path(id);
        let reader = match ArchiveReader::open_path(&archive_path) {
            Ok(reader) => reader,
            // Destroyed since it was read: say so rather than name a missing file.
            Err(_) if !self.status_of(id)?.is_some_and(policy::usable_status) => {
                return Err(catalog_error(format!("{id} was destroyed meanwhile")));
            }
            Err(e) => return Err(e),
        };
        check_fits(reader.virtual_size())?;
        let out = AtomicFile::create(disk)?;
        out.file()
            .set_len(disk_size)
            .context("sizing the server disk", disk)?;
        write_disk(&reader, out.file(), control).map_err(|e| e.in_file(&archive_path))?;
        control.check()?;
        out.commit()?;
        Ok(BuildReport {
            image: id.to_string(),
            disk: disk.display().to_string(),
            disk_size,
            virtual_size: reader.virtual_size(),
            data_size: reader.disk_size(),
            arch: record.arch,
            mode: record.mode,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// Creates the library's directories where missing.
fn create_layout(root: &Path) -> Result<()> {
    for dir in [
        root.to_path_buf(),
        root.join("incoming"),
        root.join("images"),
        root.join("tmp"),
    ] {
        std::fs::create_dir_all(&dir).context("creating the library directory", &dir)?;
    }
    Ok(())
}

fn lock(store: &SharedStore) -> Result<MutexGuard<'_, Box<dyn CatalogStore>>> {
    store
        .lock()
        .map_err(|_| catalog_error("the catalog connection was poisoned by a panic"))
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("reading the library directory", e).in_file(dir)),
    };
    Ok(entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect())
}
