//! What the catalog keeps about chunks (migration 5, the same on SQLite and PostgreSQL):
//!
//! | table          | columns                                                                  |
//! |----------------|--------------------------------------------------------------------------|
//! | `chunks`       | `sha`, `gen`, `owner`, `frame_len`, `crc`, `state` (`pending` or `stored`); key `(sha, gen)` |
//! | `image_chunks` | `image_id`, `sha`, `gen`; key `(image_id, sha, gen)`; `(sha, gen)` references `chunks` |
//!
//! A frame's references are the rows naming it, so there is no count to drift; the foreign key
//! makes the database itself refuse to delete a frame that a registration has just pinned.
//! Frames are reused within the account that uploaded them only (`owner`), so no account can
//! learn from reuse counts or timing what another account's images hold.

use crate::error::Result;

/// One frame object as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRow {
    /// SHA-256 of the chunk's content, 64 lowercase hex digits.
    pub sha: String,
    /// The uploader's random generation.
    pub gen: u64,
    /// Length of the zstd frame.
    pub frame_len: u32,
    /// crc32 of the frame's payload.
    pub crc: u32,
}

/// The chunk tables of a catalog.
pub trait ChunkCatalog {
    /// Pins a `stored` frame of content `sha` for `image` (adds the reference in the same
    /// transaction that finds it), or `None` if there is none: a frame account `owner`
    /// uploaded (preferred), or one an `available` or `deprecated` public image references
    /// (its content is anyone's to read, so reusing it reveals nothing; docs/STORE.md).
    fn reuse_chunk(&mut self, image: &str, owner: &str, sha: &str) -> Result<Option<ChunkRow>>;

    /// Records new frames of account `owner` as `pending`, and `image`'s references to them,
    /// in one transaction, before the frames are uploaded (a registration records its new
    /// frames in batches: one commit per batch, not per frame).
    fn add_pending_chunks(&mut self, image: &str, owner: &str, rows: &[ChunkRow]) -> Result<()>;

    /// Marks the frames `image` references `stored` (its uploads are complete).
    fn mark_chunks_stored(&mut self, image: &str) -> Result<u64>;

    /// Drops every reference of images that are `deleted` or `failed`; returns how many.
    fn release_dead_images(&mut self) -> Result<u64>;

    /// Up to `limit` frames no image references.
    fn unreferenced_chunks(&mut self, limit: u32) -> Result<Vec<ChunkRow>>;

    /// Deletes the row of frame `(sha, gen)` if nothing references it; `false` when a
    /// reference exists (or appeared meanwhile) or the row is gone.
    fn delete_chunk(&mut self, sha: &str, gen: u64) -> Result<bool>;

    /// Every frame row, as `(sha, gen)`.
    fn chunk_keys(&mut self) -> Result<Vec<(String, u64)>>;
}

/// SQL's signed 64-bit integer holding a generation (the same bits).
pub(crate) fn gen_to_sql(gen: u64) -> i64 {
    i64::from_le_bytes(gen.to_le_bytes())
}

/// A generation back from SQL.
pub(crate) fn gen_from_sql(value: i64) -> u64 {
    u64::from_le_bytes(value.to_le_bytes())
}

/// Migration 5 on SQLite.
pub const SQLITE_MIGRATION: &str = "CREATE TABLE chunks (
        sha TEXT NOT NULL,
        gen INTEGER NOT NULL,
        owner TEXT NOT NULL,
        frame_len INTEGER NOT NULL,
        crc INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'stored')),
        PRIMARY KEY (sha, gen)
    );
    CREATE TABLE image_chunks (
        image_id TEXT NOT NULL,
        sha TEXT NOT NULL,
        gen INTEGER NOT NULL,
        PRIMARY KEY (image_id, sha, gen),
        FOREIGN KEY (sha, gen) REFERENCES chunks (sha, gen)
    );
    CREATE INDEX image_chunks_by_chunk ON image_chunks (sha, gen);";

/// Migration 5 on PostgreSQL.
pub const POSTGRES_MIGRATION: &str = "CREATE TABLE chunks (
        sha TEXT NOT NULL,
        gen BIGINT NOT NULL,
        owner TEXT NOT NULL,
        frame_len BIGINT NOT NULL,
        crc BIGINT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'stored')),
        PRIMARY KEY (sha, gen)
    );
    CREATE TABLE image_chunks (
        image_id TEXT NOT NULL,
        sha TEXT NOT NULL,
        gen BIGINT NOT NULL,
        PRIMARY KEY (image_id, sha, gen),
        FOREIGN KEY (sha, gen) REFERENCES chunks (sha, gen)
    );
    CREATE INDEX image_chunks_by_chunk ON image_chunks (sha, gen);";
