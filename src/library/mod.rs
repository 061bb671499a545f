//! The image library: a catalog of registered images around the conversion engine.
//!
//! A library is a directory, or a prefix in an S3-compatible bucket (`s3://BUCKET/PREFIX`,
//! feature `s3`; its catalog is then named separately), with the same layout ([`objects`]):
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

mod build;
pub mod catalog;
pub mod chunks;
mod download;
pub mod id;
mod import;
pub mod lease;
mod lifecycle;
pub mod objects;
pub mod policy;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod record;
mod recovery;
mod register;
mod requests;
mod serve_source;
mod source;
pub mod sqlite;
pub mod store;
mod upload_sha256;
mod usable;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chunks::DedupStats;

use crate::convert::DEFAULT_MAX_COMPRESSED_SIZE;
use crate::error::{Error, ErrorKind, IoContext, Result};

pub use catalog::CatalogLocation;
pub use lease::HostIdentity;
pub use record::{Arch, ImageRecord, Mode, SourceType, Status};
pub use requests::{
    BuildReport, ImageUpdate, LibraryOptions, LibrarySettings, NewImage, RegisterRequest, SnapshotRequest,
};
pub use source::check_source_name;
pub use sqlite::SqliteStore;
pub use store::{CatalogStore, Changes};

use objects::Objects;
use record::catalog_error;
use source::SourceInput;

/// The operator account when none is configured.
pub const DEFAULT_OPERATOR: &str = "brightbox";
/// Setting key: the operator account.
pub const SETTING_OPERATOR: &str = "operator";
/// Setting key: the compressed-size limit in bytes.
pub const SETTING_MAX_COMPRESSED_SIZE: &str = "max_compressed_size";

type SharedStore = Arc<Mutex<Box<dyn CatalogStore>>>;

/// An open image library.
pub struct Library {
    root: PathBuf,
    objects: Arc<dyn Objects>,
    store: SharedStore,
    host: HostIdentity,
    settings: LibrarySettings,
    /// Whether new registrations and snapshots are deduplicated ([`chunks`]).
    dedup: bool,
    /// What the last deduplicated registration through this handle stored and reused.
    last_dedup: Mutex<Option<DedupStats>>,
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
    /// recovers registrations whose process is gone. `root` may be `s3://BUCKET/PREFIX`
    /// (feature `s3`), which needs its catalog named in `options.catalog`; a directory's
    /// default catalog is `catalog.db` inside it.
    pub fn open(root: &Path, options: &LibraryOptions) -> Result<Library> {
        let catalog = match &options.catalog {
            Some(location) => location.clone(),
            None if objects::is_remote(root) => {
                return Err(Error::invalid_argument(
                    "a library in an object store needs a catalog: give --catalog sqlite:PATH or \
                     postgres://... (or set IMGPACK_CATALOG)",
                ))
            }
            None => {
                create_layout(root)?;
                CatalogLocation::default_for(root)
            }
        };
        let store = catalog::open_catalog(&catalog)?;
        Library::with_store(root, store, options)
    }

    /// Opens the library at `root` (a directory, or `s3://BUCKET/PREFIX` with feature `s3`)
    /// over an already open catalog.
    pub fn with_store(
        root: &Path,
        store: Box<dyn CatalogStore>,
        options: &LibraryOptions,
    ) -> Result<Library> {
        let objects = objects::open(root)?;
        let mut library = Library {
            root: root.to_path_buf(),
            objects: Arc::from(objects),
            store: Arc::new(Mutex::new(store)),
            host: HostIdentity::current(),
            settings: LibrarySettings {
                operator: DEFAULT_OPERATOR.to_string(),
                max_compressed_size: DEFAULT_MAX_COMPRESSED_SIZE,
            },
            dedup: options.dedup.unwrap_or(false),
            last_dedup: Mutex::new(None),
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

    /// The library's location: its directory, or its `s3://` URL.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the library keeps uploads and archives.
    pub fn objects(&self) -> &dyn Objects {
        self.objects.as_ref()
    }

    /// The settings in force.
    pub fn settings(&self) -> &LibrarySettings {
        &self.settings
    }

    /// What the last deduplicated registration or snapshot made through this handle stored
    /// and reused (`None` if there was none, or it was not deduplicated).
    pub fn last_dedup(&self) -> Option<DedupStats> {
        self.last_dedup.lock().ok().and_then(|stats| *stats)
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

    /// Where a registered image's archive lives (in a local library).
    pub fn archive_path(&self, id: &str) -> PathBuf {
        self.root.join("images").join(format!("{id}.imgpack"))
    }

    /// The account's upload directory (created if missing), in a local library; a library in
    /// an object store has none (use [`Library::upload`]).
    pub fn incoming_dir(&self, account: &str) -> Result<PathBuf> {
        self.check_caller(account)?;
        let Some(root) = self.objects.local_root() else {
            return Err(Error::invalid_argument(format!(
                "the library {} is in an object store; store uploads with `images upload`",
                self.objects.location()
            )));
        };
        let dir = root.join("incoming").join(account);
        std::fs::create_dir_all(&dir).context("creating the incoming directory", &dir)?;
        Ok(dir)
    }

    /// Stores `body` (`size` bytes if known, for progress) as the upload `name` in `caller`'s
    /// incoming area, atomically (a failure or cancellation leaves no upload; one already
    /// there is replaced only on success). Returns the bytes stored.
    pub fn upload(
        &self,
        caller: &str,
        name: &str,
        body: &mut dyn Read,
        size: Option<u64>,
        control: &crate::Control,
    ) -> Result<u64> {
        self.check_caller(caller)?;
        source::check_source_name(name)?;
        self.objects.put_upload(caller, name, body, size, control)
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
        source::check_source_name(&request.source)?;
        let mut upload = self.objects.open_upload(caller, &request.source)?;
        let source = SourceInput {
            body: upload.body()?,
            name: request.source.clone(),
            source_type: SourceType::Upload,
            identity: Some(upload.identity()),
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
            body: objects::UploadBody::Input(crate::input::Input::file(file, name.clone())),
            name,
            source_type: SourceType::Snapshot,
            identity: None,
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
