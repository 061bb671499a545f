//! The library's layout as object keys, built only from validated parts, so no caller-given
//! text can reach outside its account's area (`..`, a leading `/`, control characters and
//! over-long names are refused before any key exists).
//!
//! | key                               | what                                      |
//! |-----------------------------------|-------------------------------------------|
//! | `incoming/<account>/<name>`       | an upload                                 |
//! | `images/<image-id>.imgpack`       | a registered archive                      |
//! | `tmp/<image-id>.multipart`        | the multipart upload of a registration in progress (S3 only) |
//! | `tmp/uploads/<token>.multipart`   | the multipart upload of an `images upload` in progress, with its lease (S3 only) |

use super::super::id;
use super::super::source::check_source_name;
use crate::error::{Error, Result};

/// The prefix of every upload.
pub const INCOMING: &str = "incoming";
/// The prefix of every archive.
pub const IMAGES: &str = "images";
/// The prefix of scratch state.
pub const SCRATCH: &str = "tmp";
/// The archive's file name suffix.
pub const ARCHIVE_SUFFIX: &str = ".imgpack";
/// The multipart marker's suffix.
pub const MARKER_SUFFIX: &str = ".multipart";

/// The prefix of the markers of `images upload` in progress.
pub const UPLOAD_MARKERS: &str = "tmp/uploads";

/// `tmp/uploads/<token>.multipart`, for a token of 1-64 lowercase letters, digits and `-`.
pub fn upload_marker(token: &str) -> Result<String> {
    if !is_upload_token(token) {
        return Err(Error::invalid_argument(format!(
            "{token:?} is not an upload token"
        )));
    }
    Ok(format!("{UPLOAD_MARKERS}/{token}{MARKER_SUFFIX}"))
}

/// Whether `name` (relative to [`UPLOAD_MARKERS`]) is an upload marker's.
pub fn is_upload_marker(name: &str) -> bool {
    name.strip_suffix(MARKER_SUFFIX).is_some_and(is_upload_token)
}

fn is_upload_token(token: &str) -> bool {
    (1..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `incoming/<account>/<name>`, for a valid account (an account id or an operator name) and
/// a valid upload name.
pub fn upload(account: &str, name: &str) -> Result<String> {
    if !(id::is_account_id(account) || id::is_operator_name(account)) {
        return Err(Error::invalid_argument(format!("{account:?} is not an account")));
    }
    check_source_name(name)?;
    Ok(format!("{INCOMING}/{account}/{name}"))
}

/// `images/<id>.imgpack`, for a valid image id.
pub fn archive(image: &str) -> Result<String> {
    check_image(image)?;
    Ok(format!("{IMAGES}/{image}{ARCHIVE_SUFFIX}"))
}

/// `tmp/<id>.multipart`, for a valid image id.
pub fn marker(image: &str) -> Result<String> {
    check_image(image)?;
    Ok(format!("{SCRATCH}/{image}{MARKER_SUFFIX}"))
}

/// Checks a library-relative object key made by the library itself (chunk and index keys):
/// `/`-separated segments of ASCII letters, digits, `.`, `-` and `_`, none empty or `.`/`..`.
pub fn check_object_key(key: &str) -> Result<()> {
    let fine = !key.is_empty()
        && key.len() <= 1024
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        });
    if fine {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!("{key:?} is not an object key")))
    }
}

/// The image id in a stored name (`img-xxxxx.imgpack` with `suffix`), if it is one.
pub fn image_of<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    name.strip_suffix(suffix).filter(|id| id::is_image_id(id))
}

fn check_image(image: &str) -> Result<()> {
    if id::is_image_id(image) {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!("{image:?} is not an image id")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_only_from_valid_parts() {
        assert_eq!(
            upload("acc-xxxxx", "disk.img").unwrap(),
            "incoming/acc-xxxxx/disk.img"
        );
        assert_eq!(archive("img-abcde").unwrap(), "images/img-abcde.imgpack");
        assert_eq!(marker("img-abcde").unwrap(), "tmp/img-abcde.multipart");
        for (account, name) in [
            ("acc-xxxxx", "../x"),
            ("acc-xxxxx", ".."),
            ("acc-xxxxx", "a/b"),
            ("acc-xxxxx", "a\nb"),
            ("../acc", "x"),
            ("acc-xxxxx/..", "x"),
            ("", "x"),
        ] {
            assert!(upload(account, name).is_err(), "{account:?} {name:?}");
        }
        assert!(upload("acc-xxxxx", &"a".repeat(256)).is_err());
        for bad in ["img-abcde/..", "../img-abcde", "img-ABCDE", ""] {
            assert!(archive(bad).is_err(), "{bad:?}");
            assert!(marker(bad).is_err(), "{bad:?}");
        }
        assert_eq!(image_of("img-abcde.imgpack", ARCHIVE_SUFFIX), Some("img-abcde"));
        assert_eq!(
            upload_marker("up-abc12").unwrap(),
            "tmp/uploads/up-abc12.multipart"
        );
        assert!(is_upload_marker("up-abc12.multipart"));
        for bad in ["", "../x", "a/b", "UP", &"a".repeat(65)] {
            assert!(upload_marker(bad).is_err(), "{bad:?}");
            assert!(!is_upload_marker(&format!("{bad}{MARKER_SUFFIX}")), "{bad:?}");
        }
        assert_eq!(image_of("img-abcde.imgpack.x", ARCHIVE_SUFFIX), None);
    }
}
