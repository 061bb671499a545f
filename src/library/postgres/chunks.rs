//! The chunk tables on PostgreSQL ([`ChunkCatalog`]), with the SQLite store's semantics.
//! Pinning takes `FOR KEY SHARE` on the frame's row, so a concurrent garbage collector's delete
//! waits for the pin and then fails on the foreign key (and is skipped) instead of removing a
//! frame an image has just chosen; a delete that wins first leaves the pin nothing to find.

use postgres::error::SqlState;

use super::rows::column_error;
use super::PostgresStore;
use crate::error::Result;
use crate::library::chunks::catalog::{gen_from_sql, gen_to_sql, ChunkCatalog, ChunkRow};

/// Finds a `stored` frame of content `$1` that account `$2` may reuse (its own first, or one
/// a public usable image references: docs/STORE.md), locks its row and references it from
/// image `$3`; returns the frame.
const REUSE_CHUNK: &str = "WITH found AS ( \
         SELECT c.sha, c.gen, c.frame_len, c.crc FROM chunks c \
         WHERE c.sha = $1 AND c.state = 'stored' AND (c.owner = $2 OR EXISTS ( \
             SELECT 1 FROM image_chunks r JOIN images i ON i.id = r.image_id \
             WHERE r.sha = c.sha AND r.gen = c.gen AND i.public \
             AND i.status IN ('available', 'deprecated'))) \
         ORDER BY c.owner = $2 DESC LIMIT 1 FOR KEY SHARE OF c), \
     pinned AS ( \
         INSERT INTO image_chunks (image_id, sha, gen) SELECT $3, sha, gen FROM found \
         ON CONFLICT DO NOTHING) \
     SELECT sha, gen, frame_len, crc FROM found";
const INSERT_CHUNK: &str = "INSERT INTO chunks (sha, gen, owner, frame_len, crc, state) \
     VALUES ($1, $2, $3, $4, $5, 'pending')";
const INSERT_REFERENCE: &str = "INSERT INTO image_chunks (image_id, sha, gen) VALUES ($1, $2, $3)";

fn row_of(row: &postgres::Row) -> Result<ChunkRow> {
    let number = |index: usize| -> Result<i64> { row.try_get(index).map_err(column_error) };
    Ok(ChunkRow {
        sha: row.try_get(0).map_err(column_error)?,
        gen: gen_from_sql(number(1)?),
        frame_len: u32::try_from(number(2)?).unwrap_or(u32::MAX),
        crc: u32::try_from(number(3)?).unwrap_or(0),
    })
}

impl ChunkCatalog for PostgresStore {
    fn reuse_chunk(&mut self, image: &str, owner: &str, sha: &str) -> Result<Option<ChunkRow>> {
        // One statement (one round trip, atomic on its own): find the frame, lock its row
        // against a collector's delete, and pin it for `image`. Run again after a lost
        // connection, it pins at most one more frame of the same content, which the image's
        // destruction releases like any other.
        let found = self.run_repeatable("cannot look a chunk up", REUSE_CHUNK, |client, statement| {
            client.query_opt(statement, &[&sha, &owner, &image])
        });
        match found {
            Ok(row) => row.as_ref().map(row_of).transpose(),
            // The frame was deleted between the look-up and the pin: as if never found.
            Err(e) if is_foreign_key_violation(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn add_pending_chunks(&mut self, image: &str, owner: &str, rows: &[ChunkRow]) -> Result<()> {
        self.write_prepared(
            "cannot record new chunks",
            [INSERT_CHUNK, INSERT_REFERENCE],
            |client, [chunk, reference]| {
                let mut tx = client.transaction()?;
                for row in rows {
                    let gen = gen_to_sql(row.gen);
                    let (frame_len, crc) = (i64::from(row.frame_len), i64::from(row.crc));
                    tx.execute(&chunk, &[&row.sha, &gen, &owner, &frame_len, &crc])?;
                    tx.execute(&reference, &[&image, &row.sha, &gen])?;
                }
                tx.commit()
            },
        )
    }

    fn mark_chunks_stored(&mut self, image: &str) -> Result<u64> {
        self.write("cannot mark chunks stored", |client| {
            client.execute(
                "UPDATE chunks SET state = 'stored' WHERE state = 'pending' AND (sha, gen) IN \
                 (SELECT sha, gen FROM image_chunks WHERE image_id = $1)",
                &[&image],
            )
        })
    }

    fn release_dead_images(&mut self) -> Result<u64> {
        self.write("cannot release references", |client| {
            client.execute(
                "DELETE FROM image_chunks WHERE image_id IN \
                 (SELECT id FROM images WHERE status IN ('deleted', 'failed'))",
                &[],
            )
        })
    }

    fn unreferenced_chunks(&mut self, limit: u32) -> Result<Vec<ChunkRow>> {
        let limit = i64::from(limit);
        let rows = self.read("cannot list unreferenced chunks", |client| {
            client.query(
                "SELECT sha, gen, frame_len, crc FROM chunks c WHERE NOT EXISTS \
                 (SELECT 1 FROM image_chunks r WHERE r.sha = c.sha AND r.gen = c.gen) LIMIT $1",
                &[&limit],
            )
        })?;
        rows.iter().map(row_of).collect()
    }

    fn delete_chunk(&mut self, sha: &str, gen: u64) -> Result<bool> {
        let gen = gen_to_sql(gen);
        let deleted = self.write("cannot delete a chunk", |client| {
            client.execute(
                "DELETE FROM chunks c WHERE sha = $1 AND gen = $2 AND NOT EXISTS \
                 (SELECT 1 FROM image_chunks r WHERE r.sha = c.sha AND r.gen = c.gen)",
                &[&sha, &gen],
            )
        });
        match deleted {
            Ok(changed) => Ok(changed == 1),
            // A registration pinned it meanwhile: the foreign key refused the delete.
            Err(e) if is_foreign_key_violation(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn chunk_keys(&mut self) -> Result<Vec<(String, u64)>> {
        let rows = self.read("cannot list chunks", |client| {
            client.query("SELECT sha, gen FROM chunks", &[])
        })?;
        rows.iter()
            .map(|row| {
                let sha: String = row.try_get(0).map_err(column_error)?;
                let gen: i64 = row.try_get(1).map_err(column_error)?;
                Ok((sha, gen_from_sql(gen)))
            })
            .collect()
    }
}

/// Whether an error from a statement is PostgreSQL's foreign-key violation.
fn is_foreign_key_violation(e: &crate::error::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(pg) = c.downcast_ref::<postgres::Error>() {
            return pg.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION);
        }
        cause = c.source();
    }
    false
}
