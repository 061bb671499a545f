//! What callers hand the library and get back: options and settings, the metadata of a new
//! image, the register / snapshot / update requests, and the build report.

use std::path::PathBuf;

use serde::Serialize;

use super::{Arch, Mode};
use crate::control::Control;

/// How a library is opened.
#[derive(Debug, Clone, Default)]
pub struct LibraryOptions {
    /// The operator account, overriding the library's setting (the CLI passes
    /// `IMGPACK_OPERATOR`). Default: the setting, else `brightbox`.
    pub operator: Option<String>,
    /// The catalog (`--catalog`, `IMGPACK_CATALOG`). Default: `catalog.db` in the library's
    /// directory.
    pub catalog: Option<super::CatalogLocation>,
    /// Whether new registrations and snapshots are deduplicated (chunk objects and an index
    /// per image; see [`super::chunks`]). Default: not (self-contained archives). Existing
    /// images of either kind are read whatever this says.
    pub dedup: Option<bool>,
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
