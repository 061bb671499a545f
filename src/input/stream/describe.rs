//! What `info` learns of a compressed file without decoding it: the layers (from the first
//! decoded bytes only) and the uncompressed size where the format records it (the xz index,
//! zstd frame headers), so it answers at once even on a decompression bomb.

use std::fs::File;
use std::path::Path;

use super::{declared_virtual_size, xz, zstd, MAX_ZSTD_BLOCKS_WALKED};
use super::{decoder, peek_head, refuse_payload, too_deep, MAX_LAYERS};
use crate::error::{Error, IoContext, Result};
use crate::input::detect::{detect, Format};
use crate::input::facts::Facts;
use crate::input::limits::check_virtual_size;
use crate::input::raw::disk_size_of;
use crate::input::route::{route, Route};
use crate::input::OpenOptions;
use crate::read_at::{FileAt, ReadAt};

/// The facts about a compressed file, found without decoding more than its first bytes.
pub fn facts(path: &Path, format: Format, options: &OpenOptions) -> Result<Facts> {
    let file = File::open(path).context("opening the input", path)?;
    let at = FileAt::new(file.try_clone().context("opening the input", path)?)
        .context("reading the input", path)?;
    let mut info = Facts::of(format.name());
    info.compressed_size = Some(at.size());
    let mut refusal: Option<Error> = None;
    let mut exact_size = None;
    let mut details = serde_json::Map::new();
    match format {
        Format::Xz => match xz::read_index(&at) {
            Ok(index) => {
                details.insert("uncompressed_size".into(), index.uncompressed_size.into());
                details.insert("uncompressed_size_source".into(), "xz index".into());
                details.insert("xz_streams".into(), index.streams.into());
                details.insert("xz_blocks".into(), index.blocks.into());
                details.insert("xz_checks".into(), index.checks.join(",").into());
                exact_size = Some(index.uncompressed_size);
            }
            Err(e) => refusal = Some(e),
        },
        Format::Zstd => match zstd::content_size(&at, MAX_ZSTD_BLOCKS_WALKED) {
            Ok(Some(size)) => {
                details.insert("uncompressed_size".into(), size.into());
                details.insert("uncompressed_size_source".into(), "zstd frame headers".into());
                exact_size = Some(size);
            }
            Ok(None) => {
                details.insert(
                    "uncompressed_size_source".into(),
                    "unknown (a zstd frame does not declare its content size)".into(),
                );
            }
            Err(e) => refusal = Some(e),
        },
        Format::Gzip => {
            let mut isize = [0u8; 4];
            if at.size() >= 18 && at.read_exact_at(&mut isize, at.size() - 4).is_ok() {
                details.insert("gzip_isize_hint".into(), u32::from_le_bytes(isize).into());
                details.insert(
                    "uncompressed_size_source".into(),
                    "unknown without decoding: gzip_isize_hint is the last member's size modulo 2^32 (the total only for a single-member file under 4 GiB)".into(),
                );
            }
        }
        _ => {}
    }
    let threads = 1; // a few decoded bytes are all that is needed
    let mut layers = vec![format.name()];
    let mut inner_name = "unknown";
    let mut stream = decoder(format, Box::new(file), None, threads)?;
    loop {
        let (head, rest) = match peek_head(stream) {
            Ok(found) => found,
            Err(e) => {
                refusal.get_or_insert(e);
                break;
            }
        };
        let inner = match detect(&head, None) {
            Ok(inner) => inner,
            Err(e) => {
                refusal.get_or_insert(e);
                break;
            }
        };
        match route(inner) {
            Route::Raw => {
                inner_name = "raw";
                if layers.len() == 1 {
                    info.virtual_size = exact_size.map(disk_size_of);
                }
                break;
            }
            Route::Layer => {
                if layers.len() >= MAX_LAYERS {
                    refusal.get_or_insert(too_deep(&layers, inner.name()));
                    inner_name = inner.name();
                    break;
                }
                layers.push(inner.name());
                stream = decoder(inner, rest, None, threads)?;
            }
            Route::Image => {
                inner_name = inner.name();
                if layers.len() >= MAX_LAYERS {
                    refusal.get_or_insert(too_deep(&layers, inner.name()));
                }
                info.virtual_size = declared_virtual_size(inner, &head);
                break;
            }
            Route::Archive | Route::Refused => {
                inner_name = inner.name();
                refusal.get_or_insert(refuse_payload(inner, &layers));
                break;
            }
        }
    }
    if let Some(size) = info.virtual_size {
        if let Err(e) = check_virtual_size(size, options.limits.max_virtual_size) {
            refusal.get_or_insert(e);
        }
    }
    details.insert(
        "layers".into(),
        serde_json::Value::from(layers.iter().map(|l| l.to_string()).collect::<Vec<_>>()),
    );
    layers.push(inner_name);
    info.format = layers.join(">");
    info.details.extend(details);
    info.refusal = refusal.map(|e| e.to_string());
    Ok(info)
}
