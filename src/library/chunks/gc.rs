//! `images gc`: removes the frames no image references, objects left without a catalog row,
//! and the index objects of images that are `deleted` or `failed`.
//!
//! Safe against registrations running meanwhile on any host (docs/STORE.md has the argument):
//! a frame row is deleted only while nothing references it, in a statement the foreign key
//! backs (a registration pins a frame by inserting its reference, so a delete that races with
//! a pin fails and is skipped); the object goes only after its row. An object whose row is
//! missing after the listing was made is garbage, because every object gets its row before it
//! is uploaded and generations are never reused.

use std::collections::HashSet;

use serde::Serialize;

use super::{parse_chunk_key, CHUNKS, INDEX_SUFFIX};
use crate::error::Result;
use crate::library::objects::keys;
use crate::library::{Library, Status};

/// Frame rows examined per catalog round trip.
const BATCH: u32 = 256;

/// What a collection removed and kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Frame objects removed (unreferenced ones, and objects without a row).
    pub removed_chunks: u64,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Frames still in the catalog after the collection.
    pub kept_chunks: u64,
    /// Index objects and archives of `deleted` or `failed` images removed.
    pub removed_images: u64,
}

impl Library {
    /// Collects the garbage of the chunk store (operator only; see the module docs).
    pub fn gc(&self, caller: &str) -> Result<GcReport> {
        self.check_caller(caller)?;
        if caller != self.settings.operator {
            return Err(crate::library::record::catalog_error(
                "only the operator account can collect the library's garbage",
            ));
        }
        let mut report = GcReport::default();
        self.store()?.release_dead_images()?;
        // (1) Rows nobody references, then their objects.
        loop {
            let rows = self.store()?.unreferenced_chunks(BATCH)?;
            let mut progressed = false;
            for row in rows {
                if self.store()?.delete_chunk(&row.sha, row.gen)? {
                    progressed = true;
                    self.objects.delete_object(&super::chunk_key(&row.sha, row.gen))?;
                    report.removed_chunks += 1;
                    report.removed_bytes += u64::from(row.frame_len);
                }
            }
            if !progressed {
                break;
            }
        }
        // (2) Objects without a row: listed first, rows read after.
        let objects = self.objects.list_objects(CHUNKS)?;
        let rows: HashSet<(String, u64)> = self.store()?.chunk_keys()?.into_iter().collect();
        for (key, size) in objects {
            if let Some(name) = parse_chunk_key(&key) {
                if !rows.contains(&name) {
                    self.objects.delete_object(&key)?;
                    report.removed_chunks += 1;
                    report.removed_bytes += size;
                }
            }
        }
        // (3) Indexes and archives of images that are gone.
        for (key, _) in self.objects.list_objects(keys::IMAGES)? {
            let Some(name) = key.strip_prefix(keys::IMAGES).and_then(|k| k.strip_prefix('/')) else {
                continue;
            };
            let id =
                keys::image_of(name, INDEX_SUFFIX).or_else(|| keys::image_of(name, keys::ARCHIVE_SUFFIX));
            if let Some(id) = id {
                if matches!(self.status_of(id)?, Some(Status::Deleted | Status::Failed)) {
                    self.objects.delete_object(&key)?;
                    report.removed_images += 1;
                }
            }
        }
        report.kept_chunks = self.store()?.chunk_keys()?.len() as u64;
        Ok(report)
    }
}
