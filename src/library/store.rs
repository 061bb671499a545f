//! The catalog's storage, behind [`CatalogStore`] so that a server database can replace the
//! embedded SQLite one ([`SqliteStore`](super::sqlite::SqliteStore)) without touching the rest.
//!
//! Every change is conditional: [`CatalogStore::compare_and_set`] applies its changes only if
//! the image's status is still one of those the caller read, in one atomic step, so concurrent
//! processes never lose each other's updates and never make a transition the policy forbids.

use super::record::{catalog_error, Arch, ImageRecord, Mode, Status};
use crate::error::{Error, Result};

/// The migration, the same in every backend, that lets one upload be registered by one
/// process at a time: a second registration of the same upload while the first is
/// `creating` is refused by the database itself ([`upload_busy`]), whichever host it runs on.
pub const ONE_REGISTRATION_PER_UPLOAD: &str =
    "CREATE UNIQUE INDEX images_one_registration_per_upload ON images (owner, source) \
     WHERE status = 'creating' AND source_type = 'upload'";

/// The migration, the same in every backend, that lets one upload become one image: each
/// registration records its upload's identity ([`CatalogStore::claim_upload`]: a local
/// file's device, inode, size and times; an object's ETag, size and last-modified time), and
/// no two images of one owner that are not `failed` may hold the same one. The index above
/// only covers `creating`, so without this a registrar that opened an upload just before
/// another registered it (and removed it) could store it again once the first was
/// `available`.
pub const ONE_IMAGE_PER_UPLOAD: &str = "ALTER TABLE images ADD COLUMN upload_identity TEXT; \
     CREATE UNIQUE INDEX images_one_image_per_upload ON images (owner, upload_identity) \
     WHERE upload_identity IS NOT NULL AND status <> 'failed';";

/// The refusal of a registration of an upload that is already image `image`.
pub fn upload_registered(source: &str, image: &str) -> Error {
    catalog_error(format!(
        "{source:?} was already registered as {image} (another request registered this very \
         upload first)"
    ))
}

/// The refusal of a second registration of an upload that is being registered.
pub fn upload_busy(source: &str) -> Error {
    catalog_error(format!(
        "{source:?} is already being registered by another request; wait for it to finish \
         (images list shows it as creating)"
    ))
}

/// Who is creating an image, so a later process can tell whether the work is still alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Process id of the registering process.
    pub pid: u32,
    /// Host name of its machine.
    pub host: String,
    /// Its process table: the machine's boot id (`/proc/sys/kernel/random/boot_id`, new on
    /// every boot) and its pid namespace, as [`HostIdentity`](super::HostIdentity) writes them.
    pub boot_id: String,
    /// The process's start time in clock ticks since boot, so a reused pid is not mistaken
    /// for the registering process.
    pub start_time: u64,
    /// Unix seconds after which the work counts as abandoned unless renewed; the only test
    /// available for a process on another host.
    pub expires_at: i64,
}

/// Field changes applied together with (or without) a status change. `None` leaves a field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New architecture.
    pub arch: Option<Arch>,
    /// New mode.
    pub mode: Option<Mode>,
    /// New public flag.
    pub public: Option<bool>,
    /// New official flag.
    pub official: Option<bool>,
    /// New username (`Some(None)` clears it).
    pub username: Option<Option<String>>,
    /// New virtual size.
    pub virtual_size: Option<u64>,
    /// New data size.
    pub disk_size: Option<u64>,
    /// New archive size.
    pub compressed_size: Option<u64>,
    /// New input format.
    pub format: Option<String>,
    /// New chunk count.
    pub chunks: Option<u64>,
    /// New failure reason.
    pub reason: Option<String>,
    /// The image digest.
    pub digest: Option<String>,
    /// The SHA-256 of the upload as received.
    pub source_sha256: Option<String>,
}

impl Changes {
    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// Storage of image records and library settings.
pub trait CatalogStore: super::chunks::ChunkCatalog + Send {
    /// Adds a new record (its status is `creating`) with its lease. `Ok(false)` if the id is
    /// taken: the caller draws another. An error ([`upload_busy`]) if the same upload of the
    /// same account is already `creating`.
    fn insert(&mut self, record: &ImageRecord, lease: &Lease) -> Result<bool>;

    /// The record with this id, if any.
    fn get(&mut self, id: &str) -> Result<Option<ImageRecord>>;

    /// Every record that is not `deleted`, in no particular order.
    fn list(&mut self) -> Result<Vec<ImageRecord>>;

    /// If the record's status is one of `expected`, applies `changes` and, if `to` is given,
    /// sets the status to `to` (clearing the lease when it leaves `creating`), atomically.
    /// `Ok(false)` if the record is missing or its status was not one of `expected`.
    fn compare_and_set(
        &mut self,
        id: &str,
        expected: &[Status],
        to: Option<Status>,
        changes: &Changes,
    ) -> Result<bool>;

    /// While the record `id` is `creating`: records that it is made from the upload whose
    /// identity is `identity`. `Ok(None)` once recorded; `Ok(Some(other))`, changing nothing,
    /// if image `other` of the same owner, not `failed`, already holds that identity (see
    /// [`ONE_IMAGE_PER_UPLOAD`]). An error if `id` is no longer `creating`.
    fn claim_upload(&mut self, id: &str, identity: &str) -> Result<Option<String>>;

    /// While the record is `creating`: sets its `disk_size` and extends its lease.
    fn renew(&mut self, id: &str, disk_size: Option<u64>, expires_at: i64) -> Result<bool>;

    /// The `creating` records with their leases.
    fn creating(&mut self) -> Result<Vec<(String, Lease)>>;

    /// A library setting.
    fn setting(&mut self, key: &str) -> Result<Option<String>>;

    /// Sets a library setting.
    fn set_setting(&mut self, key: &str, value: &str) -> Result<()>;
}
