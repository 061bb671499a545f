//! Between rows and records: the columns read, their checked conversions (a negative size
//! or an unknown status is a corrupt catalog, not a panic), and the `SET` list of a
//! compare-and-swap.

use std::str::FromStr;

use postgres::types::ToSql;
use postgres::Row;

use super::super::record::{ImageRecord, Status};
use super::super::store::Changes;
use crate::error::{Error, ErrorKind, Result};

pub(super) const COLUMNS: &str = "id, owner, source_type, created_on, status, name, description, arch, \
    mode, public, official, username, source, virtual_size, disk_size, compressed_size, format, \
    chunks, reason, digest, source_sha256";

pub(super) fn to_sql_size(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::invalid_argument(format!("size {value} is too large")))
}

fn size_column(row: &Row, index: usize) -> Result<u64> {
    let value: i64 = row.try_get(index).map_err(column_error)?;
    u64::try_from(value).map_err(|_| catalog_corrupt(format!("column {index} holds {value}")))
}

fn parse_column<T: FromStr<Err = Error>>(row: &Row, index: usize) -> Result<T> {
    let text: String = row.try_get(index).map_err(column_error)?;
    text.parse()
}

pub(super) fn column_error(e: postgres::Error) -> Error {
    catalog_corrupt("a column has an unexpected type").with_source(e)
}

fn catalog_corrupt(message: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("catalog database: {}", message.into()),
    )
}

pub(super) fn record_from_row(row: &Row) -> Result<ImageRecord> {
    let get = |index: usize| row.try_get(index).map_err(column_error);
    Ok(ImageRecord {
        id: get(0)?,
        owner: get(1)?,
        source_type: parse_column(row, 2)?,
        created_on: get(3)?,
        status: parse_column(row, 4)?,
        name: get(5)?,
        description: get(6)?,
        arch: parse_column(row, 7)?,
        mode: parse_column(row, 8)?,
        public: row.try_get(9).map_err(column_error)?,
        official: row.try_get(10).map_err(column_error)?,
        username: row.try_get(11).map_err(column_error)?,
        source: get(12)?,
        virtual_size: size_column(row, 13)?,
        disk_size: size_column(row, 14)?,
        compressed_size: size_column(row, 15)?,
        format: row.try_get(16).map_err(column_error)?,
        chunks: size_column(row, 17)?,
        reason: row.try_get(18).map_err(column_error)?,
        digest: row.try_get(19).map_err(column_error)?,
        source_sha256: row.try_get(20).map_err(column_error)?,
    })
}

/// A statement parameter of any type.
type Value = Box<dyn ToSql + Sync>;

/// The `SET` list and values of a compare-and-swap, numbered from `$1`.
pub(super) fn assignments(to: Option<Status>, changes: &Changes) -> Result<(Vec<String>, Vec<Value>)> {
    let mut sets: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut set = |column: &str, value: Value| {
        values.push(value);
        sets.push(format!("{column} = ${}", values.len()));
    };
    if let Some(status) = to {
        set("status", Box::new(status.as_str()));
        if status != Status::Creating {
            set("lease_pid", Box::new(None::<i64>));
            set("lease_host", Box::new(None::<String>));
            set("lease_boot_id", Box::new(None::<String>));
            set("lease_start_time", Box::new(None::<i64>));
            set("lease_expires", Box::new(None::<i64>));
        }
    }
    if let Some(v) = &changes.name {
        set("name", Box::new(v.clone()));
    }
    if let Some(v) = &changes.description {
        set("description", Box::new(v.clone()));
    }
    if let Some(v) = changes.arch {
        set("arch", Box::new(v.as_str()));
    }
    if let Some(v) = changes.mode {
        set("mode", Box::new(v.as_str()));
    }
    if let Some(v) = changes.public {
        set("public", Box::new(v));
    }
    if let Some(v) = changes.official {
        set("official", Box::new(v));
    }
    if let Some(v) = &changes.username {
        set("username", Box::new(v.clone()));
    }
    for (column, v) in [
        ("virtual_size", changes.virtual_size),
        ("disk_size", changes.disk_size),
        ("compressed_size", changes.compressed_size),
        ("chunks", changes.chunks),
    ] {
        if let Some(v) = v {
            set(column, Box::new(to_sql_size(v)?));
        }
    }
    if let Some(v) = &changes.format {
        set("format", Box::new(v.clone()));
    }
    if let Some(v) = &changes.reason {
        set("reason", Box::new(v.clone()));
    }
    if let Some(v) = &changes.digest {
        set("digest", Box::new(v.clone()));
    }
    if let Some(v) = &changes.source_sha256 {
        set("source_sha256", Box::new(v.clone()));
    }
    Ok((sets, values))
}
