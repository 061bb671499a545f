//! What the input layer finds out about an input without converting it: [`Facts`], which the
//! `info` operation turns into its report (the input layer never fills a report itself), and
//! [`inspect`], which gathers them for any detected format.

use std::path::Path;

use serde_json::{Map, Value};

use super::detect::Format;
use super::limits::check_virtual_size;
use super::route::{route, Route};
use super::{qcow2, stream, Body, DiskSource, OpenOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::read_at::FileAt;

/// The facts about one input.
pub struct Facts {
    /// The format with its layers, outermost first (`"raw"`, `"xz>qcow2"`).
    pub format: String,
    /// The virtual disk's size, where known.
    pub virtual_size: Option<u64>,
    /// For compressed inputs: the file's size.
    pub compressed_size: Option<u64>,
    /// Why `convert` would refuse the input, or `None`.
    pub refusal: Option<String>,
    /// Format-specific facts (qcow2 version, VHD creator, xz blocks, ...).
    pub details: Map<String, Value>,
    /// The opened disk, when the input opened and is within the limits: the caller may read it
    /// (to measure its data, say) and treat damage found there as a refusal too.
    pub source: Option<Box<dyn DiskSource>>,
}

impl Facts {
    /// Facts with only the format known.
    pub fn of(format: impl Into<String>) -> Facts {
        Facts {
            format: format.into(),
            virtual_size: None,
            compressed_size: None,
            refusal: None,
            details: Map::new(),
            source: None,
        }
    }
}

/// Whether `e` says why an input is refused, rather than that it could not be read at all (an
/// I/O failure or an interruption, which are errors of the caller's operation).
pub fn is_refusal(e: &Error) -> bool {
    !matches!(e.kind(), ErrorKind::Io | ErrorKind::Interrupted)
}

/// The reason `e` gives, with its offset but without the file name (the report names the file).
pub fn refusal_text(e: &Error) -> String {
    match e.offset() {
        Some(offset) => format!("at offset {offset} (0x{offset:x}): {}", e.message()),
        None => e.message().to_string(),
    }
}

/// Gathers the facts about the file at `path`, already opened as `file` and detected as
/// `format` (anything but an imgpack archive, which is not an input).
pub fn inspect(path: &Path, format: Format, file: FileAt, options: &OpenOptions) -> Result<Facts> {
    match (format, route(format)) {
        (_, Route::Layer) => stream::facts(path, format, options),
        (Format::Qcow2, _) => Ok(qcow2::facts(file, path, options)),
        _ => {
            let mut facts = Facts::of(format.name());
            match super::open(path, options) {
                Ok(opened) => {
                    facts.format = opened.format_name();
                    if let Body::Source(source) = opened.body {
                        facts.virtual_size = Some(source.virtual_size());
                        facts.details.extend(source.details());
                        match check_virtual_size(source.virtual_size(), options.limits.max_virtual_size) {
                            Ok(()) => facts.source = Some(source),
                            Err(e) => facts.refusal = Some(e.to_string()),
                        }
                    }
                }
                // A damaged or truncated image is what a refusal is for.
                Err(e) if is_refusal(&e) => facts.refusal = Some(refusal_text(&e)),
                Err(e) => return Err(e),
            }
            Ok(facts)
        }
    }
}
