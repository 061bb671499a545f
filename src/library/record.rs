//! The image record and its enumerations: [`ImageRecord`], [`Status`], [`Mode`], [`Arch`] and
//! [`SourceType`], with the names used in the catalog, on the command line and in `--json`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Where an image is in its life. See [`policy`](super::policy) for the allowed transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

    /// The catalog's name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Available => "available",
            Status::Deprecated => "deprecated",
            Status::Failed => "failed",
            Status::Deleted => "deleted",
        }
    }
}

/// The architecture of the servers an image builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// 32-bit x86.
    #[serde(rename = "i686")]
    I686,
    /// 64-bit x86.
    #[serde(rename = "x86_64")]
    X86_64,
}

impl Arch {
    /// The catalog's name for the architecture.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::I686 => "i686",
            Arch::X86_64 => "x86_64",
        }
    }
}

/// The devices servers built from an image get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Paravirtual virtio devices (the default): fast, needs guest support.
    #[default]
    Virtio,
    /// Emulated devices, for operating systems without virtio drivers.
    Compatibility,
}

impl Mode {
    /// The catalog's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Virtio => "virtio",
            Mode::Compatibility => "compatibility",
        }
    }
}

/// How an image came into the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    /// Uploaded into `incoming/` and registered.
    Upload,
    /// Recorded from a server's disk.
    Snapshot,
}

impl SourceType {
    /// The catalog's name for the source type.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceType::Upload => "upload",
            SourceType::Snapshot => "snapshot",
        }
    }
}

macro_rules! text_enum {
    ($ty:ty, $what:literal, [$($variant:expr),+]) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = Error;

            fn from_str(text: &str) -> Result<Self> {
                const ALL: &[$ty] = &[$($variant),+];
                ALL.iter().copied().find(|v| v.as_str() == text).ok_or_else(|| {
                    let names: Vec<&str> = ALL.iter().map(|v| v.as_str()).collect();
                    Error::invalid_argument(format!(
                        "{text:?} is not a valid {} (use {})",
                        $what,
                        names.join(" or ")
                    ))
                })
            }
        }
    };
}

text_enum!(
    Status,
    "status",
    [
        Status::Creating,
        Status::Available,
        Status::Deprecated,
        Status::Failed,
        Status::Deleted
    ]
);
text_enum!(Arch, "architecture", [Arch::I686, Arch::X86_64]);
text_enum!(Mode, "mode", [Mode::Virtio, Mode::Compatibility]);
text_enum!(
    SourceType,
    "source type",
    [SourceType::Upload, SourceType::Snapshot]
);

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

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn format_timestamp(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
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
    }

    #[test]
    fn names_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
        }
        assert_eq!("x86_64".parse::<Arch>().unwrap(), Arch::X86_64);
        assert_eq!(serde_json::to_string(&Arch::I686).unwrap(), "\"i686\"");
        assert!("amd64".parse::<Arch>().is_err());
        assert_eq!("compatibility".parse::<Mode>().unwrap(), Mode::Compatibility);
        assert!("Virtio".parse::<Mode>().is_err());
    }
}
