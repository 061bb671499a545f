//! One library test, every backend: [`Backend`] names a store and a catalog, [`TestLibrary`]
//! is a fresh library on one of them, and [`every_backend!`](crate::every_backend) turns each
//! listed test function `fn NAME(dir: &TestLibrary)` into one `#[test]` per backend
//! (`NAME::sqlite`, `NAME::postgres`, and the same on the deduplicated store:
//! `NAME::sqlite_dedup`, `NAME::postgres_dedup`); [`every_catalog!`](crate::every_catalog) is
//! the same without the deduplicated variants, for tests that choose deduplication themselves.
//!
//! The axes are separate so a store backend (an S3 library) adds a [`Store`] variant and a
//! line per test in the macro, and the catalogs come along unchanged.

use std::path::{Path, PathBuf};

use imgpack::library::catalog::open_catalog;
use imgpack::library::{CatalogLocation, CatalogStore, Library, LibraryOptions};

/// Where a test library keeps uploads and archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// A directory on this host.
    Local,
}

/// Where a test library keeps its catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catalog {
    /// `catalog.db` in the library directory (the default).
    Sqlite,
    /// A database of its own in the test binary's PostgreSQL cluster.
    Postgres,
}

/// One combination a library test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub store: Store,
    pub catalog: Catalog,
    /// Whether the library deduplicates new images (`LibraryOptions::dedup`,
    /// `IMGPACK_DEDUP=on`): the same test body then runs on the chunk store.
    pub dedup: bool,
}

impl Backend {
    pub const LOCAL_SQLITE: Backend = Backend {
        store: Store::Local,
        catalog: Catalog::Sqlite,
        dedup: false,
    };
    pub const LOCAL_POSTGRES: Backend = Backend {
        store: Store::Local,
        catalog: Catalog::Postgres,
        dedup: false,
    };

    /// The same backend with deduplication on.
    pub const fn deduplicated(self) -> Backend {
        Backend { dedup: true, ..self }
    }
}

/// A fresh, empty library on one backend. Named like the temporary directory the tests used
/// before backends existed (`dir.path()`), which it wraps.
pub struct TestLibrary {
    pub backend: Backend,
    dir: tempfile::TempDir,
    catalog: CatalogLocation,
}

impl TestLibrary {
    /// A new library on `backend`, or `None` after a skip (its servers cannot run here).
    pub fn new(backend: Backend) -> Option<TestLibrary> {
        let dir = tempfile::tempdir().unwrap();
        let catalog = match backend.catalog {
            Catalog::Sqlite => CatalogLocation::default_for(dir.path()),
            #[cfg(feature = "postgres")]
            Catalog::Postgres => CatalogLocation::Postgres(super::postgres::database()?),
            #[cfg(not(feature = "postgres"))]
            Catalog::Postgres => {
                super::oracle::skip("built without the postgres feature");
                return None;
            }
        };
        Some(TestLibrary {
            backend,
            dir,
            catalog,
        })
    }

    /// The library's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The catalog, as `--catalog` takes it.
    pub fn catalog(&self) -> &CatalogLocation {
        &self.catalog
    }

    /// What a process of this library gets as `IMGPACK_CATALOG`: nothing for the default
    /// catalog (`catalog.db` in the library), else the catalog's connection string.
    pub fn catalog_env(&self) -> Option<String> {
        match (&self.catalog, self.backend.catalog) {
            (_, Catalog::Sqlite) => None,
            (CatalogLocation::Postgres(url), _) => Some(url.clone()),
            (CatalogLocation::Sqlite(path), _) => Some(format!("sqlite:{}", path.display())),
        }
    }

    /// What a process of this library gets as `IMGPACK_DEDUP`.
    pub fn dedup_env(&self) -> &'static str {
        if self.backend.dedup {
            "on"
        } else {
            "off"
        }
    }

    /// Where image `id`'s content lives, whichever layout it was registered in: its
    /// self-contained archive `images/<id>.imgpack`, or its index `images/<id>.index` on the
    /// deduplicated store (whose chunks are under `chunks/`). Tests that inspect an image's
    /// stored form go through this, so one body runs on both layouts.
    pub fn stored_image(&self, id: &str) -> PathBuf {
        let images = self.path().join("images");
        if self.backend.dedup {
            images.join(format!("{id}.index"))
        } else {
            images.join(format!("{id}.imgpack"))
        }
    }

    /// Options that open this library's catalog.
    pub fn options(&self) -> LibraryOptions {
        LibraryOptions {
            catalog: Some(self.catalog.clone()),
            dedup: Some(self.backend.dedup),
            ..LibraryOptions::default()
        }
    }

    /// Opens the library (a new catalog connection each time, as another process would).
    pub fn open(&self) -> Library {
        Library::open(self.path(), &self.options()).unwrap()
    }

    /// A connection straight to the catalog, beside the library.
    pub fn open_store(&self) -> Box<dyn CatalogStore> {
        open_catalog(&self.catalog).unwrap()
    }

    /// The library directory's path, owned.
    pub fn path_buf(&self) -> PathBuf {
        self.path().to_path_buf()
    }
}

/// Runs `test` on a fresh library on `backend` (nothing, after a skip).
pub fn run_on(backend: Backend, test: fn(&TestLibrary)) {
    if let Some(library) = TestLibrary::new(backend) {
        test(&library);
    }
}

/// `every_backend!(a, b)`: the test functions `a(&TestLibrary)` and `b(&TestLibrary)`, each
/// as `#[test]`s `a::sqlite`, `a::postgres`, ...
#[macro_export]
macro_rules! every_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::common::library_fixture::{run_on, Backend};

                #[test]
                fn sqlite() {
                    run_on(Backend::LOCAL_SQLITE, super::$name);
                }

                #[test]
                fn postgres() {
                    run_on(Backend::LOCAL_POSTGRES, super::$name);
                }

                #[test]
                fn sqlite_dedup() {
                    run_on(Backend::LOCAL_SQLITE.deduplicated(), super::$name);
                }

                #[test]
                fn postgres_dedup() {
                    run_on(Backend::LOCAL_POSTGRES.deduplicated(), super::$name);
                }
            }
        )*
    };
}

/// `every_catalog!(a, b)`: like [`every_backend!`](crate::every_backend) without the
/// deduplicated variants (`a::sqlite`, `a::postgres`), for tests that set deduplication
/// themselves.
#[macro_export]
macro_rules! every_catalog {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::common::library_fixture::{run_on, Backend};

                #[test]
                fn sqlite() {
                    run_on(Backend::LOCAL_SQLITE, super::$name);
                }

                #[test]
                fn postgres() {
                    run_on(Backend::LOCAL_POSTGRES, super::$name);
                }
            }
        )*
    };
}
