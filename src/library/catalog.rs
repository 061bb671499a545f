//! Which catalog a library uses: [`CatalogLocation`], parsed from `--catalog` /
//! `IMGPACK_CATALOG`, and [`open_catalog`], which opens the matching [`CatalogStore`].
//!
//! | location               | store                                                           |
//! |------------------------|-----------------------------------------------------------------|
//! | `sqlite:PATH`          | [`SqliteStore`] in the file `PATH` (default: `catalog.db` in a local library) |
//! | `postgres://...`, `postgresql://...` | `PostgresStore` (feature `postgres`) on that server |
//!
//! A location is shown (in errors, `Debug`, logs) without its password.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::sqlite::SqliteStore;
use super::store::CatalogStore;
use crate::error::{Error, Result};

/// Where a library's catalog lives.
#[derive(Clone, PartialEq, Eq)]
pub enum CatalogLocation {
    /// An SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL server, by connection URL (which may hold a password: never shown).
    Postgres(String),
}

impl CatalogLocation {
    /// The default catalog of a local library: `catalog.db` in its directory.
    pub fn default_for(root: &Path) -> CatalogLocation {
        CatalogLocation::Sqlite(root.join("catalog.db"))
    }
}

impl FromStr for CatalogLocation {
    type Err = Error;

    fn from_str(text: &str) -> Result<CatalogLocation> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(Error::invalid_argument(
                    "catalog \"sqlite:\" names no file; use sqlite:PATH",
                ));
            }
            return Ok(CatalogLocation::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(CatalogLocation::Postgres(text.to_string()));
        }
        Err(Error::invalid_argument(format!(
            "catalog {:?} is neither sqlite:PATH nor postgres://...",
            redact_url(text)
        )))
    }
}

impl fmt::Display for CatalogLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogLocation::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            CatalogLocation::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for CatalogLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CatalogLocation({self})")
    }
}

/// `url` without its password: the `:password` of the user information and the value of
/// any `password=` query parameter are replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (user_info, host) = authority.split_at(at);
            match user_info.find(':') {
                Some(colon) => format!("{}:***{host}", &user_info[..colon]),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

/// Opens the catalog at `location`, creating or migrating its schema as needed.
pub fn open_catalog(location: &CatalogLocation) -> Result<Box<dyn CatalogStore>> {
    match location {
        CatalogLocation::Sqlite(path) => Ok(Box::new(SqliteStore::open(path)?)),
        #[cfg(feature = "postgres")]
        CatalogLocation::Postgres(url) => Ok(Box::new(super::postgres::PostgresStore::open(url)?)),
        #[cfg(not(feature = "postgres"))]
        CatalogLocation::Postgres(_) => Err(Error::unsupported(format!(
            "catalog {location}: this imgpack was built without PostgreSQL support (feature `postgres`)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_show_without_passwords() {
        let sqlite: CatalogLocation = "sqlite:/srv/lib/catalog.db".parse().unwrap();
        assert_eq!(sqlite, CatalogLocation::Sqlite("/srv/lib/catalog.db".into()));
        assert_eq!(sqlite.to_string(), "sqlite:/srv/lib/catalog.db");
        let url = "postgres://reg:s3cr@t@db:5432/lib?sslmode=disable&password=other";
        let postgres: CatalogLocation = url.parse().unwrap();
        assert_eq!(postgres, CatalogLocation::Postgres(url.to_string()));
        let shown = format!("{postgres} {postgres:?}");
        assert!(!shown.contains("s3cr") && !shown.contains("other"), "{shown}");
        assert!(shown.contains("postgres://reg:***@db:5432/lib?sslmode=disable&password=***"));
        assert!("postgresql://db/lib".parse::<CatalogLocation>().is_ok());
        for bad in ["sqlite:", "mysql://root:pw@db/x", "catalog.db", ""] {
            let error = bad.parse::<CatalogLocation>().unwrap_err();
            assert!(!error.to_string().contains(":pw@"), "{error}");
        }
    }

    #[test]
    fn redaction_leaves_urls_without_passwords_alone() {
        for url in [
            "postgres://db/lib",
            "postgres://reg@db/lib",
            "postgres:///lib?host=/run/pg",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
