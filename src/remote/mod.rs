//! Objects in S3-compatible stores (feature `s3`): where `s3://BUCKET/KEY` names point, and
//! synchronous access to them for the engine below the library.
//!
//! The async `object_store` client lives only here, driven by one small tokio runtime this
//! module owns ([`S3Client::block_on`]); everything above stays synchronous. Endpoint, region
//! and credentials come only from the standard `AWS_*` environment variables, and every error
//! text passes through [`redact`] so a secret never reaches a message, a log or `--json`.
//!
//! | type | what |
//! |------|------|
//! | [`S3Location`] | a parsed and checked `s3://BUCKET/KEY` |
//! | [`S3Client`] | one bucket's client with bounded retries and timeouts |
//! | [`S3ReadAt`] | random access by ranged GETs: block cache, read-ahead, coalescing |
//! | [`ObjectReader`] | a streaming GET as a [`std::io::Read`], length checked |
//! | [`RangedStream`] | an object front to back by parallel ranged GETs, as a [`std::io::Read`] |
//! | [`MultipartSink`] | an [`ArchiveSink`](crate::sink::ArchiveSink) that is a multipart upload |
//! | [`GrowingSpill`] | a streaming GET into a temporary file, readable at random as it grows |

mod download;
mod multipart;
mod range;
mod ranged_stream;
mod spill;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientConfigKey, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use crate::error::{Error, ErrorKind, Result};

pub use download::ObjectReader;
pub use multipart::{
    abort_recorded, abort_upload, read_marker, MarkerNote, MultipartSink, RecordedUpload,
    MARKER_RENEW_INTERVAL, PARTS_IN_FLIGHT, PART_SIZE,
};
pub use range::S3ReadAt;
pub use ranged_stream::{RangedStream, STREAM_BLOCK, STREAM_GETS};
pub use spill::GrowingSpill;

/// The URL scheme of objects and libraries in S3-compatible stores.
pub const SCHEME: &str = "s3://";
/// Longest object key accepted (S3's own limit is 1024 bytes).
pub const MAX_KEY_LEN: usize = 1024;
/// Environment variables whose values must never appear in any output.
const SECRET_VARIABLES: [&str; 2] = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// A checked `s3://BUCKET/KEY`: a valid bucket name and a key of plain segments (no empty,
/// `.` or `..` segment, no control characters, at most [`MAX_KEY_LEN`] bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key inside it (may be empty for a library at the bucket's root).
    pub key: String,
}

impl S3Location {
    /// `Some` if `text` is an `s3://` URL (checked: an error if it is malformed), `None` for
    /// anything else (a local path).
    pub fn parse(text: &str) -> Result<Option<S3Location>> {
        let Some(rest) = text.strip_prefix(SCHEME) else {
            return Ok(None);
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let key = key.trim_end_matches('/');
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(Error::invalid_argument(format!(
                "{bucket:?} is not an S3 bucket name (3-63 lowercase letters, digits, '-', '.')"
            )));
        }
        check_key(key)?;
        Ok(Some(S3Location {
            bucket: bucket.to_string(),
            key: key.to_string(),
        }))
    }

    /// `s3://BUCKET/KEY`.
    pub fn url(&self) -> String {
        format!("{SCHEME}{}/{}", self.bucket, self.key)
    }
}

/// Refuses keys that could escape a prefix or confuse a store: empty, `.` or `..` segments,
/// a leading `/`, control characters, more than [`MAX_KEY_LEN`] bytes.
pub fn check_key(key: &str) -> Result<()> {
    let refuse = |why: &str| Err(Error::invalid_argument(format!("object key {key:?} {why}")));
    if key.len() > MAX_KEY_LEN {
        return refuse("is too long");
    }
    if key.chars().any(char::is_control) {
        return refuse("holds control characters");
    }
    if key.is_empty() {
        return Ok(());
    }
    if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return refuse("has an empty, '.' or '..' segment");
    }
    Ok(())
}

/// Removes the values of secret `AWS_*` variables from `text`.
pub fn redact(text: &str) -> String {
    let secrets: Vec<String> = SECRET_VARIABLES
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .collect();
    redact_values(text, &secrets)
}

/// `text` with every occurrence of each secret (of 4 bytes or more) replaced.
fn redact_values(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret.as_str(), "[redacted]");
    }
    text
}

/// An `object_store` failure as an imgpack error: what was being done, to which object, why
/// (redacted). Missing objects are `InvalidArgument`, everything else `Io`.
pub fn store_error(what: &str, url: &str, e: object_store::Error) -> Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => ErrorKind::InvalidArgument,
        _ => ErrorKind::Io,
    };
    Error::new(kind, redact(&format!("{what} {url}: {e}")))
}

/// The runtime every S3 call runs on: two worker threads are plenty for I/O-bound requests.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("imgpack-s3")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::new(ErrorKind::Io, format!("starting the S3 client runtime: {e}")))
}

/// One bucket's client. Cheap to clone.
#[derive(Clone)]
pub struct S3Client {
    store: Arc<AmazonS3>,
    /// The same store with [`COMPLETE_TIMEOUT`]: for CompleteMultipartUpload only.
    completing: Arc<AmazonS3>,
    bucket: String,
    runtime: &'static tokio::runtime::Runtime,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Client").field("bucket", &self.bucket).finish()
    }
}

/// Retries: a bounded number within a bounded time, so an outage ends in an error, not a hang.
const MAX_RETRIES: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// CompleteMultipartUpload of a large object may take minutes (AWS says so; moto needs more
/// than 2 minutes for 4 GiB in 512 parts), so it alone gets this much longer.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(900);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl S3Client {
    /// A client for `bucket`, configured from the `AWS_*` environment variables only.
    pub fn from_env(bucket: &str) -> Result<S3Client> {
        // reqwest is built without a default crypto provider: use ring (no C build). A
        // provider installed earlier (by us or the embedding program) is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
        };
        let options = ClientOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        // Our timeouts first, then every AWS_* variable (as `AmazonS3Builder::from_env` reads
        // them), so AWS_ALLOW_HTTP and the like still apply.
        let mut builder = AmazonS3Builder::new().with_client_options(options);
        for (name, value) in std::env::vars_os() {
            if let (Some(name), Some(value)) = (name.to_str(), value.to_str()) {
                if name.starts_with("AWS_") {
                    if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                        builder = builder.with_config(key, value);
                    }
                }
            }
        }
        let builder = builder.with_bucket_name(bucket).with_retry(retry);
        let build = |builder: AmazonS3Builder| {
            builder.build().map_err(|e| {
                Error::invalid_argument(redact(&format!(
                    "configuring the S3 client from the AWS_* variables: {e}"
                )))
            })
        };
        // Only the timeout differs: every other option (AWS_ALLOW_HTTP, ...) stays as set.
        let completing = build(builder.clone().with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            format!("{}s", COMPLETE_TIMEOUT.as_secs()),
        ))?;
        let store = build(builder)?;
        Ok(S3Client {
            store: Arc::new(store),
            completing: Arc::new(completing),
            bucket: bucket.to_string(),
            runtime: runtime()?,
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The `object_store` client.
    pub fn store(&self) -> &Arc<AmazonS3> {
        &self.store
    }

    /// The `object_store` client with the long timeout for completing multipart uploads.
    pub fn completing_store(&self) -> &Arc<AmazonS3> {
        &self.completing
    }

    /// `s3://BUCKET/KEY` of a key.
    pub fn url(&self, key: &str) -> String {
        format!("{SCHEME}{}/{key}", self.bucket)
    }

    /// Runs `future` on the client's runtime and waits for it. Never call it from inside
    /// the runtime (an async context).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Spawns `future` on the client's runtime.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(future)
    }

    /// The object's length, or `None` if there is no such object.
    pub fn head(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.head_meta(key)?.map(|meta| meta.size))
    }

    /// The object's metadata (length, ETag, last-modified time), or `None` if there is no
    /// such object.
    pub fn head_meta(&self, key: &str) -> Result<Option<object_store::ObjectMeta>> {
        match self.block_on(self.store.head(&object_path(key)?)) {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error("reading the metadata of", &self.url(key), e)),
        }
    }

    /// Deletes an object; a missing one is not an error.
    pub fn delete(&self, key: &str) -> Result<()> {
        match self.block_on(self.store.delete(&object_path(key)?)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("deleting", &self.url(key), e)),
        }
    }

    /// A small object's bytes (at most `limit`), or `None` if there is no such object.
    pub fn get_small(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let path = object_path(key)?;
        let url = self.url(key);
        let result = self.block_on(async {
            let got = self.store.get(&path).await?;
            if got.meta.size > limit {
                return Ok(Err(got.meta.size));
            }
            Ok(Ok(got.bytes().await?))
        });
        match result {
            Ok(Ok(bytes)) => Ok(Some(bytes.to_vec())),
            Ok(Err(size)) => Err(Error::new(
                ErrorKind::Corrupt,
                format!("{url} is {size} bytes, more than the {limit} expected"),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error("reading", &url, e)),
        }
    }

    /// Stores a small object in one PUT.
    pub fn put_small(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let path = object_path(key)?;
        self.block_on(self.store.put(&path, bytes.into()))
            .map(|_| ())
            .map_err(|e| store_error("writing", &self.url(key), e))
    }

    /// The keys under `prefix` (a directory-like prefix ending in `/`), with their lengths.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        use futures::TryStreamExt;
        let path = object_path(prefix.trim_end_matches('/'))?;
        let listed: std::result::Result<Vec<_>, _> =
            self.block_on(self.store.list(Some(&path)).try_collect::<Vec<_>>());
        let listed = listed.map_err(|e| store_error("listing", &self.url(prefix), e))?;
        Ok(listed
            .into_iter()
            .map(|meta| (meta.location.to_string(), meta.size))
            .collect())
    }
}

/// Opens `path` for ranged reads if it is an `s3://BUCKET/KEY` URL (`None` for a local
/// path): how `extract`, `info` and `verify` read objects. A missing object is an error.
pub fn open_url(path: &std::path::Path) -> Result<Option<S3ReadAt>> {
    let Some(location) = path.to_str().map(S3Location::parse).transpose()?.flatten() else {
        return Ok(None);
    };
    if location.key.is_empty() {
        return Err(Error::invalid_argument(format!(
            "{} names a bucket, not an object",
            location.url()
        )));
    }
    let client = S3Client::from_env(&location.bucket)?;
    match S3ReadAt::open(&client, &location.key)? {
        Some(object) => Ok(Some(object)),
        None => Err(Error::invalid_argument(format!(
            "there is no object {}",
            location.url()
        ))),
    }
}

/// A checked key as an `object_store` path.
pub fn object_path(key: &str) -> Result<ObjectPath> {
    check_key(key)?;
    ObjectPath::parse(key).map_err(|e| Error::invalid_argument(format!("object key {key:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_bucket_and_checked_key() {
        let at = S3Location::parse("s3://my-bucket/lib/a").unwrap().unwrap();
        assert_eq!((at.bucket.as_str(), at.key.as_str()), ("my-bucket", "lib/a"));
        assert_eq!(S3Location::parse("s3://bkt").unwrap().unwrap().key, "");
        assert_eq!(S3Location::parse("s3://bkt/p/").unwrap().unwrap().key, "p");
        assert!(S3Location::parse("/srv/library").unwrap().is_none());
        for bad in [
            "s3://",
            "s3://B",
            "s3://bkt/../x",
            "s3://bkt/a//b",
            "s3://bkt/a/./b",
            "s3://bkt/a\nb",
            "s3://bkt//a",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad:?}");
        }
        assert!(check_key(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn redaction_removes_the_secret_wherever_it_appears() {
        let secret = "unit-test-secret-value".to_string();
        let text = redact_values(
            &format!("signature for {secret} failed; {secret}!"),
            &[secret, "x".into()],
        );
        assert_eq!(text, "signature for [redacted] failed; [redacted]!");
    }
}
