//! The chunk tables on SQLite ([`ChunkCatalog`]). Pinning and recording frames are many small
//! transactions during a registration, so they commit with `synchronous = NORMAL` (in WAL mode:
//! no fsync, still safe against a killed process): the image's final status change commits
//! with `FULL`, and its fsync of the write-ahead log makes every earlier commit durable too.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{db_error, SqliteStore};
use crate::error::Result;
use crate::library::chunks::catalog::{gen_from_sql, gen_to_sql, ChunkCatalog, ChunkRow};

impl SqliteStore {
    /// Runs `work` with commits that do not fsync (see the module docs; a registration's
    /// progress and lease renewals commit this way too).
    pub(super) fn unsynced<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.set_synchronous("PRAGMA synchronous = NORMAL")?;
        let result = work(self);
        let restored = self.set_synchronous("PRAGMA synchronous = FULL");
        let value = result?;
        restored?;
        Ok(value)
    }

    /// Runs one of the two `synchronous` pragmas (prepared once per connection: a
    /// registration switches for every chunk it looks up).
    fn set_synchronous(&self, pragma: &str) -> Result<()> {
        self.conn
            .prepare_cached(pragma)
            .and_then(|mut statement| statement.execute([]))
            .map(drop)
            .map_err(|e| db_error("cannot set synchronous mode", e))
    }
}

fn row_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<ChunkRow> {
    Ok(ChunkRow {
        sha: row.get(0)?,
        gen: gen_from_sql(row.get(1)?),
        frame_len: row.get(2)?,
        crc: row.get(3)?,
    })
}

impl ChunkCatalog for SqliteStore {
    fn reuse_chunk(&mut self, image: &str, owner: &str, sha: &str) -> Result<Option<ChunkRow>> {
        self.unsynced(|store| {
            let tx = store
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| db_error("cannot start a transaction", e))?;
            let found = tx
                .prepare_cached(
                    "SELECT c.sha, c.gen, c.frame_len, c.crc FROM chunks c \
                     WHERE c.sha = ?1 AND c.state = 'stored' AND (c.owner = ?2 OR EXISTS ( \
                         SELECT 1 FROM image_chunks r JOIN images i ON i.id = r.image_id \
                         WHERE r.sha = c.sha AND r.gen = c.gen AND i.public = 1 \
                         AND i.status IN ('available', 'deprecated'))) \
                     ORDER BY c.owner = ?2 DESC LIMIT 1",
                )
                .and_then(|mut select| select.query_row([sha, owner], row_of))
                .optional()
                .map_err(|e| db_error("cannot look a chunk up", e))?;
            if let Some(row) = &found {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO image_chunks (image_id, sha, gen) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut insert| insert.execute(params![image, row.sha, gen_to_sql(row.gen)]))
                .map_err(|e| db_error("cannot reference a chunk", e))?;
            }
            tx.commit().map_err(|e| db_error("cannot commit", e))?;
            Ok(found)
        })
    }

    fn add_pending_chunks(&mut self, image: &str, owner: &str, rows: &[ChunkRow]) -> Result<()> {
        self.unsynced(|store| {
            let tx = store
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| db_error("cannot start a transaction", e))?;
            let mut chunk = tx
                .prepare_cached(
                    "INSERT INTO chunks (sha, gen, owner, frame_len, crc, state) \
                     VALUES (?1, ?2, ?3, ?4, ?5, 'pending')",
                )
                .map_err(|e| db_error("cannot record a new chunk", e))?;
            let mut reference = tx
                .prepare_cached("INSERT INTO image_chunks (image_id, sha, gen) VALUES (?1, ?2, ?3)")
                .map_err(|e| db_error("cannot reference a chunk", e))?;
            for row in rows {
                chunk
                    .execute(params![
                        row.sha,
                        gen_to_sql(row.gen),
                        owner,
                        row.frame_len,
                        row.crc
                    ])
                    .map_err(|e| db_error("cannot record a new chunk", e))?;
                reference
                    .execute(params![image, row.sha, gen_to_sql(row.gen)])
                    .map_err(|e| db_error("cannot reference a chunk", e))?;
            }
            drop((chunk, reference));
            tx.commit().map_err(|e| db_error("cannot commit", e))
        })
    }

    fn mark_chunks_stored(&mut self, image: &str) -> Result<u64> {
        let changed = self
            .conn
            .execute(
                "UPDATE chunks SET state = 'stored' WHERE state = 'pending' AND (sha, gen) IN \
                 (SELECT sha, gen FROM image_chunks WHERE image_id = ?1)",
                [image],
            )
            .map_err(|e| db_error("cannot mark chunks stored", e))?;
        Ok(changed as u64)
    }

    fn release_dead_images(&mut self) -> Result<u64> {
        let changed = self
            .conn
            .execute(
                "DELETE FROM image_chunks WHERE image_id IN \
                 (SELECT id FROM images WHERE status IN ('deleted', 'failed'))",
                [],
            )
            .map_err(|e| db_error("cannot release references", e))?;
        Ok(changed as u64)
    }

    fn unreferenced_chunks(&mut self, limit: u32) -> Result<Vec<ChunkRow>> {
        let mut statement = self
            .conn
            .prepare(
                "SELECT sha, gen, frame_len, crc FROM chunks c WHERE NOT EXISTS \
                 (SELECT 1 FROM image_chunks r WHERE r.sha = c.sha AND r.gen = c.gen) LIMIT ?1",
            )
            .map_err(|e| db_error("cannot list unreferenced chunks", e))?;
        let rows = statement
            .query_map([limit], row_of)
            .map_err(|e| db_error("cannot list unreferenced chunks", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| db_error("cannot list unreferenced chunks", e))
    }

    fn delete_chunk(&mut self, sha: &str, gen: u64) -> Result<bool> {
        // The NOT EXISTS is the rule; the foreign key backs it up.
        match self.conn.execute(
            "DELETE FROM chunks WHERE sha = ?1 AND gen = ?2 AND NOT EXISTS \
             (SELECT 1 FROM image_chunks r WHERE r.sha = ?1 AND r.gen = ?2)",
            params![sha, gen_to_sql(gen)],
        ) {
            Ok(changed) => Ok(changed == 1),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Ok(false)
            }
            Err(e) => Err(db_error("cannot delete a chunk", e)),
        }
    }

    fn chunk_keys(&mut self) -> Result<Vec<(String, u64)>> {
        let mut statement = self
            .conn
            .prepare("SELECT sha, gen FROM chunks")
            .map_err(|e| db_error("cannot list chunks", e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, gen_from_sql(row.get(1)?)))
            })
            .map_err(|e| db_error("cannot list chunks", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| db_error("cannot list chunks", e))
    }
}
