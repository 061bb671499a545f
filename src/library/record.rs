//! The image record and its enumerations: [`ImageRecord`], [`Status`], [`Mode`], [`Arch`] and
//! [`SourceType`].
//!
//! Each enumeration's names (`creating`, `x86_64`, ...) are written once, as its variants'
//! lowercased identifiers: `strum` derives `as_str`/`Display` from them, and `FromStr` (the
//! catalog's stored strings, the command line) and serde (`--json`) both go through those.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use strum::{IntoStaticStr, VariantArray};
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, ErrorKind, Result};

/// Where an image is in its life. See [`policy`](super::policy) for the allowed transitions.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    IntoStaticStr,
    VariantArray,
    Serialize,
    Deserialize,
)]
#[strum(serialize_all = "lowercase")]
#[serde(into = "&'static str", try_from = "String")]
pub enum Status {
    /// Being converted; cannot be built from yet. `disk_size` grows as data is found.
    Creating,
    /// Ready to build servers from.
    Available,
    /// Still usable by id, but hidden from listings (except its owner's).
    Deprecated,
    /// The registration or snapshot did not succeed; `reason` says why.
    Failed,
    /// Removed from the library; its archive is gone.
    Deleted,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Creating,
        Status::Available,
        Status::Deprecated,
        Status::Failed,
        Status::Deleted,
    ];
}

/// The architecture of the servers an image builds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    IntoStaticStr,
    VariantArray,
    Serialize,
    Deserialize,
)]
#[strum(serialize_all = "lowercase")]
#[serde(into = "&'static str", try_from = "String")]
pub enum Arch {
    /// 32-bit x86.
    I686,
    /// 64-bit x86.
    X86_64,
}

/// The devices servers built from an image get.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    strum::Display,
    IntoStaticStr,
    VariantArray,
    Serialize,
    Deserialize,
)]
#[strum(serialize_all = "lowercase")]
#[serde(into = "&'static str", try_from = "String")]
pub enum Mode {
    /// Paravirtual virtio devices (the default): fast, needs guest support.
    #[default]
    Virtio,
    /// Emulated devices, for operating systems without virtio drivers.
    Compatibility,
}

/// How an image came into the library.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    IntoStaticStr,
    VariantArray,
    Serialize,
    Deserialize,
)]
#[strum(serialize_all = "lowercase")]
#[serde(into = "&'static str", try_from = "String")]
pub enum SourceType {
    /// Uploaded into `incoming/` and registered.
    Upload,
    /// Recorded from a server's disk.
    Snapshot,
}

/// The enumeration `T` whose name is `text`; the error lists the names (`what` says what
/// kind of value was expected).
fn parse_name<T>(text: &str, what: &str) -> Result<T>
where
    T: VariantArray + Copy + Into<&'static str>,
{
    let name = |value: &T| -> &'static str { (*value).into() };
    T::VARIANTS
        .iter()
        .find(|value| name(value) == text)
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = T::VARIANTS.iter().map(name).collect();
            Error::invalid_argument(format!(
                "{text:?} is not a valid {what} (use {})",
                names.join(" or ")
            ))
        })
}

/// `as_str`, `FromStr` and `TryFrom<String>` (serde's way in) for an enumeration of names.
macro_rules! named {
    ($ty:ty, $what:literal) => {
        impl $ty {
            #[doc = concat!("The catalog's name for the ", $what, ".")]
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }

        impl FromStr for $ty {
            type Err = Error;

            fn from_str(text: &str) -> Result<Self> {
                parse_name(text, $what)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = Error;

            fn try_from(text: String) -> Result<Self> {
                text.parse()
            }
        }
    };
}

named!(Status, "status");
named!(Arch, "architecture");
named!(Mode, "mode");
named!(SourceType, "source type");

/// One image in the library. Field names are the `--json` contract; sizes are in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `img-` and 5 lowercase base-36 characters, unique in the library.
    pub id: String,
    /// The owning account (`acc-xxxxx`, or the operator account).
    pub owner: String,
    /// `upload` or `snapshot`.
    pub source_type: SourceType,
    /// When the record was created, UTC, RFC 3339 (`2011-05-19T10:20:30Z`).
    pub created_on: String,
    /// Where the image is in its life.
    pub status: Status,
    /// The image's name.
    pub name: String,
    /// Free text (empty if none was given).
    pub description: String,
    /// The architecture of servers built from it.
    pub arch: Arch,
    /// The devices servers built from it get.
    pub mode: Mode,
    /// Whether other accounts may see and build from it.
    pub public: bool,
    /// Provided by the operator.
    pub official: bool,
    /// The default user account of the image (gets the ssh key on first boot).
    pub username: Option<String>,
    /// The uploaded file name (or the snapshotted disk's file name).
    pub source: String,
    /// Size of the disk once written to a server, zeros included.
    pub virtual_size: u64,
    /// Bytes of non-zero data; grows while the image is `creating`.
    pub disk_size: u64,
    /// Size of the stored archive.
    pub compressed_size: u64,
    /// The input's format (`raw`, `qcow2`, ...), once known.
    pub format: Option<String>,
    /// Stored chunks in the archive.
    pub chunks: u64,
    /// Why the image `failed`.
    pub reason: Option<String>,
    /// The image digest (`sha256-tree:<hex>`, docs/FORMAT.md) of the disk, once registered:
    /// the same for the same disk whatever its format, chunk size or compression level.
    #[serde(default)]
    pub digest: Option<String>,
    /// The SHA-256 of the uploaded file's bytes as received (`sha256sum` of the upload), hex.
    #[serde(default)]
    pub source_sha256: Option<String>,
}

impl ImageRecord {
    /// `official` for official images, otherwise the source type: the listings' `type` column.
    pub fn display_type(&self) -> &'static str {
        if self.official {
            "official"
        } else {
            self.source_type.as_str()
        }
    }

    /// The listings' status column: `public` or `private` for available images, else the status.
    pub fn display_status(&self) -> &'static str {
        match (self.status, self.public) {
            (Status::Available, true) => "public",
            (Status::Available, false) => "private",
            (status, _) => status.as_str(),
        }
    }

    /// The name with the architecture, as listings show it: `Slackware (i686)`.
    pub fn display_name(&self) -> String {
        format!("{} ({})", self.name, self.arch)
    }

    /// The virtual size in MiB, rounded up, as listings show it.
    pub fn size_mb(&self) -> u64 {
        self.virtual_size.div_ceil(1 << 20)
    }
}

/// The current time as an RFC 3339 UTC timestamp with second precision.
pub fn timestamp_now() -> String {
    format_timestamp(unix_now())
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC), clamped to the years
/// 1970-9999 that format can write with four digits.
pub fn format_timestamp(seconds: i64) -> String {
    const LAST_SECOND_OF_9999: i64 = 253_402_300_799;
    let seconds = seconds.clamp(0, LAST_SECOND_OF_9999);
    // In range after the clamp, so `time` does not refuse it; the default only spares a panic.
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|moment| moment.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A catalog-level refusal (unknown id, not permitted, bad transition).
pub fn catalog_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Catalog, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_known_dates() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_timestamp(1_305_800_000), "2011-05-19T10:13:20Z");
        assert_eq!(format_timestamp(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(format_timestamp(-1), "1970-01-01T00:00:00Z");
        assert_eq!(format_timestamp(i64::MAX), "9999-12-31T23:59:59Z");
    }

    /// Every name as the catalog stores it and `--json` prints it: these strings are a contract
    /// (existing catalogs hold them), so they are spelled out here, not derived.
    fn check_names<T>(expected: &[(T, &str)])
    where
        T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + FromStr<Err = Error>,
        T: Serialize + serde::de::DeserializeOwned + VariantArray + Into<&'static str>,
    {
        assert_eq!(expected.len(), T::VARIANTS.len(), "every variant is listed");
        for &(value, name) in expected {
            assert_eq!(Into::<&'static str>::into(value), name);
            assert_eq!(value.to_string(), name);
            assert_eq!(name.parse::<T>().unwrap(), value);
            assert_eq!(serde_json::to_string(&value).unwrap(), format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<T>(&format!("\"{name}\"")).unwrap(), value);
        }
    }

    #[test]
    fn names_are_the_catalogs() {
        check_names(&[
            (Status::Creating, "creating"),
            (Status::Available, "available"),
            (Status::Deprecated, "deprecated"),
            (Status::Failed, "failed"),
            (Status::Deleted, "deleted"),
        ]);
        check_names(&[(Arch::I686, "i686"), (Arch::X86_64, "x86_64")]);
        check_names(&[(Mode::Virtio, "virtio"), (Mode::Compatibility, "compatibility")]);
        check_names(&[(SourceType::Upload, "upload"), (SourceType::Snapshot, "snapshot")]);
        assert_eq!(Status::ALL.as_slice(), Status::VARIANTS);
        assert_eq!(Status::Failed.as_str(), "failed");
        assert_eq!(Mode::default(), Mode::Virtio);
    }

    #[test]
    fn other_names_are_refused_with_the_valid_ones() {
        let error = "amd64".parse::<Arch>().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            error.to_string(),
            "\"amd64\" is not a valid architecture (use i686 or x86_64)"
        );
        assert!("Virtio".parse::<Mode>().is_err(), "names are case-sensitive");
        let error = "gone".parse::<Status>().unwrap_err().to_string();
        assert!(
            error.contains("status (use creating or available or deprecated or failed or deleted)"),
            "{error}"
        );
        assert!(serde_json::from_str::<SourceType>("\"Upload\"").is_err());
    }
}
