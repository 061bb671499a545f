//! The image library through its calls: the seeds' walkthrough, the visibility matrix, the
//! transition rules, failures that keep the upload, source-name security and crash recovery.

mod common;

use common::library_fixture::{Backend, TestLibrary};

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imgpack::library::catalog::open_catalog;
use imgpack::library::store::Lease;
use imgpack::library::{
    Arch, CatalogLocation, Changes, HostIdentity, ImageRecord, ImageUpdate, Library, LibraryOptions, Mode,
    NewImage, RegisterRequest, SourceType, Status,
};
use imgpack::{Control, ErrorKind};

const OWNER: &str = "acc-xxxxx";
const OTHER: &str = "acc-yyyyy";
const OPERATOR: &str = "brightbox";

/// A raw disk of `size` bytes with `data` bytes of a non-zero pattern at 1 MiB.
fn write_disk(path: &Path, size: u64, data: usize, seed: u8) {
    let file = fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    // Random data does not compress, so archive sizes are close to data sizes; `| 1` makes
    // every byte non-zero, so `disk_size` is exactly the data's 4 KiB blocks.
    let mut rng = common::Rng::new(u64::from(seed));
    let bytes: Vec<u8> = (0..data).map(|_| rng.byte() | 1).collect();
    std::os::unix::fs::FileExt::write_all_at(&file, &bytes, 1 << 20).unwrap();
}

fn upload(library: &Library, account: &str, name: &str, size: u64) -> PathBuf {
    let path = library.incoming_dir(account).unwrap().join(name);
    write_disk(&path, size, 512 << 10, 7);
    path
}

fn register(library: &Library, account: &str, name: &str, source: &str) -> imgpack::Result<ImageRecord> {
    library.register(
        account,
        &RegisterRequest::new(NewImage::new(name, Arch::X86_64), source),
        &mut |_| {},
    )
}

/// Asserts `result` is an error of `kind` whose message contains `says`; returns the message.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: imgpack::Result<T>, kind: ErrorKind, says: &str) -> String {
    let error = result.expect_err("succeeded where it must be refused");
    let message = error.to_string();
    assert_eq!(error.kind(), kind, "{message}");
    assert!(message.contains(says), "{message:?} does not say {says:?}");
    message
}

fn ids(images: &[ImageRecord]) -> Vec<&str> {
    images.iter().map(|r| r.id.as_str()).collect()
}

fn seeds_walkthrough(dir: &TestLibrary) {
    let library = dir.open();
    let source = upload(&library, OWNER, "slackware.img", 8 << 20);
    let original = fs::read(&source).unwrap();

    let mut image = NewImage::new("Slackware", Arch::I686);
    image.description = "Fresh slackware install".to_string();
    let mut seen_creating = None;
    let registered = library
        .register(
            OWNER,
            &RegisterRequest::new(image, "slackware.img"),
            &mut |record| {
                // While the conversion has not started, the catalog already lists it as creating.
                let listed = library.list(OWNER, false).unwrap();
                seen_creating = Some((record.clone(), listed));
            },
        )
        .unwrap();
    let (created, listed) = seen_creating.expect("on_created was called");
    assert_eq!(created.status, Status::Creating);
    assert_eq!(created.display_status(), "creating");
    assert_eq!(created.size_mb(), 0);
    assert_eq!(listed, vec![created.clone()]);
    assert_eq!(registered.id, created.id);
    assert!(imgpack::library::id::is_image_id(&registered.id));

    assert_eq!(registered.status, Status::Available);
    assert_eq!(registered.display_status(), "private");
    assert_eq!(registered.display_name(), "Slackware (i686)");
    assert_eq!(registered.display_type(), "upload");
    assert_eq!(registered.virtual_size, 8 << 20);
    assert_eq!(registered.size_mb(), 8);
    assert_eq!(registered.disk_size, 512 << 10);
    assert_eq!(registered.format.as_deref(), Some("raw"));
    assert_eq!(registered.source, "slackware.img");
    assert!(registered.compressed_size > 0 && registered.compressed_size < registered.disk_size + 4096);
    assert!(!source.exists(), "the upload leaves incoming/ once registered");
    let stored = dir.stored_image(&registered.id);
    assert!(fs::metadata(&stored).unwrap().permissions().readonly());
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    let id = registered.id.clone();

    // Private: the other account neither lists nor shows it.
    assert!(library.list(OTHER, true).unwrap().is_empty());
    assert_eq!(library.show(OTHER, &id).unwrap_err().kind(), ErrorKind::Catalog);

    let compat = ImageUpdate {
        mode: Some(Mode::Compatibility),
        ..ImageUpdate::default()
    };
    assert_eq!(
        library.update(OWNER, &id, &compat).unwrap().mode,
        Mode::Compatibility
    );
    let public = ImageUpdate {
        public: Some(true),
        ..ImageUpdate::default()
    };
    assert_eq!(
        library.update(OWNER, &id, &public).unwrap().display_status(),
        "public"
    );
    assert_eq!(ids(&library.list(OTHER, false).unwrap()), vec![id.as_str()]);

    let deprecate = ImageUpdate {
        deprecated: Some(true),
        ..ImageUpdate::default()
    };
    let deprecated = library.update(OWNER, &id, &deprecate).unwrap();
    assert_eq!(deprecated.status, Status::Deprecated);
    assert_eq!(
        library.list(OWNER, false).unwrap()[0].display_status(),
        "deprecated"
    );
    assert!(library.list(OTHER, false).unwrap().is_empty());
    assert_eq!(ids(&library.list(OTHER, true).unwrap()), vec![id.as_str()]);

    // Still usable by id: the other account builds a server disk from it.
    let disk = dir.path().join("server.raw");
    let too_small = library
        .build(OTHER, &id, &disk, 4 << 20, &Control::default())
        .unwrap_err();
    assert!(too_small.to_string().contains("will not fit"), "{too_small}");
    assert!(!disk.exists());
    let report = library
        .build(OTHER, &id, &disk, 16 << 20, &Control::default())
        .unwrap();
    assert_eq!(report.mode, Mode::Compatibility);
    assert_eq!(report.arch, Arch::I686);
    let built = fs::read(&disk).unwrap();
    assert_eq!(built.len(), 16 << 20);
    assert_eq!(&built[..original.len()], &original[..]);
    assert!(built[original.len()..].iter().all(|&b| b == 0));
    let again = library
        .build(OTHER, &id, &disk, 16 << 20, &Control::default())
        .unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");

    let destroyed = library.destroy(OWNER, &id).unwrap();
    assert_eq!(destroyed.status, Status::Deleted);
    assert!(!stored.exists());
    assert!(library.list(OWNER, true).unwrap().is_empty());
    let gone = library.build(
        OWNER,
        &id,
        &dir.path().join("s2.raw"),
        16 << 20,
        &Control::default(),
    );
    refused(gone, ErrorKind::Catalog, "can only be built");
}

/// Fills a catalog with one image per status and public flag, owned by OWNER.
fn matrix_library(dir: &TestLibrary) -> (Library, Vec<ImageRecord>) {
    let mut store = dir.open_store();
    let lease = HostIdentity::current().lease_for_self(i64::MAX / 2);
    let mut records = Vec::new();
    for (n, status) in Status::ALL.into_iter().enumerate() {
        for public in [false, true] {
            let record = ImageRecord {
                id: format!("img-{}{}aaa", n, u8::from(public)),
                owner: OWNER.to_string(),
                source_type: SourceType::Upload,
                created_on: "2011-05-19T00:00:00Z".to_string(),
                status: Status::Creating,
                name: format!("{status} {public}"),
                description: String::new(),
                arch: Arch::X86_64,
                mode: Mode::Virtio,
                public,
                official: false,
                username: None,
                // One upload per record: an upload is registered by one request at a time.
                source: format!("{n}{public}.img"),
                virtual_size: 1 << 20,
                disk_size: 0,
                compressed_size: 0,
                format: None,
                chunks: 0,
                reason: None,
                digest: None,
                source_sha256: None,
            };
            assert!(store.insert(&record, &lease).unwrap());
            // Walk the record to its status through allowed steps, as the library would.
            let path: &[Status] = match status {
                Status::Creating => &[],
                Status::Available => &[Status::Available],
                Status::Deprecated => &[Status::Available, Status::Deprecated],
                Status::Failed => &[Status::Failed],
                Status::Deleted => &[Status::Available, Status::Deleted],
            };
            let mut from = Status::Creating;
            for &to in path {
                assert!(store
                    .compare_and_set(&record.id, &[from], Some(to), &Changes::default())
                    .unwrap());
                from = to;
            }
            records.push(ImageRecord { status, ..record });
        }
    }
    let library = Library::with_store(dir.path(), store, &dir.options()).unwrap();
    (library, records)
}

fn visibility_matrix(dir: &TestLibrary) {
    let (library, records) = matrix_library(dir);
    let unknown_show = library.show(OTHER, "img-zzzzz").unwrap_err().to_string();
    for caller in [OWNER, OTHER, OPERATOR] {
        let listed = library.list(caller, false).unwrap();
        let listed_all = library.list(caller, true).unwrap();
        for record in &records {
            let owner = caller == OWNER;
            let usable = matches!(record.status, Status::Available | Status::Deprecated);
            let (want_list, want_list_all, want_show) = if owner {
                (
                    record.status != Status::Deleted,
                    record.status != Status::Deleted,
                    true,
                )
            } else {
                (
                    record.public && record.status == Status::Available,
                    record.public && usable,
                    record.public && usable,
                )
            };
            let case = format!(
                "{caller} on {} ({}, public {})",
                record.id, record.status, record.public
            );
            assert_eq!(
                listed.iter().any(|r| r.id == record.id),
                want_list,
                "list: {case}"
            );
            assert_eq!(
                listed_all.iter().any(|r| r.id == record.id),
                want_list_all,
                "list --show-all: {case}"
            );
            match library.show(caller, &record.id) {
                Ok(shown) => {
                    assert!(want_show, "show: {case}");
                    assert_eq!(shown.status, record.status);
                }
                Err(e) => {
                    assert!(!want_show, "show: {case}: {e}");
                    // Indistinguishable from an id that does not exist.
                    assert_eq!(
                        e.to_string().replace(&record.id, "img-zzzzz"),
                        unknown_show,
                        "{case}"
                    );
                }
            }

            let disk = dir.path().join(format!("{caller}-{}.raw", record.id));
            let build = library
                .build(caller, &record.id, &disk, 1 << 30, &Control::default())
                .unwrap_err();
            let message = build.to_string();
            if !want_show {
                assert_eq!(
                    message.replace(&record.id, "img-zzzzz"),
                    unknown_show,
                    "build: {case}"
                );
            } else if !usable {
                assert!(message.contains("can only be built"), "build: {case}: {message}");
            } else {
                // Allowed: it gets as far as the (absent, in this catalog-only library) archive.
                assert_eq!(build.kind(), ErrorKind::Io, "build: {case}: {message}");
            }

            let rename = ImageUpdate {
                name: Some("renamed".to_string()),
                ..ImageUpdate::default()
            };
            let update = library.update(caller, &record.id, &rename);
            if owner {
                if record.status == Status::Deleted {
                    refused(update, ErrorKind::Catalog, "is deleted");
                } else {
                    assert_eq!(update.unwrap().name, "renamed", "update: {case}");
                }
            } else {
                let message = update.unwrap_err().to_string();
                if want_show {
                    assert!(message.contains("only its owner"), "update: {case}: {message}");
                } else {
                    assert_eq!(
                        message.replace(&record.id, "img-zzzzz"),
                        unknown_show,
                        "update: {case}"
                    );
                }
                let destroy = library.destroy(caller, &record.id).unwrap_err().to_string();
                if !want_show {
                    assert_eq!(
                        destroy.replace(&record.id, "img-zzzzz"),
                        unknown_show,
                        "destroy: {case}"
                    );
                }
            }
        }
    }
    // The owner destroys what may be destroyed, and only that.
    for record in &records {
        let result = library.destroy(OWNER, &record.id);
        let allowed = matches!(
            record.status,
            Status::Available | Status::Deprecated | Status::Failed
        );
        let case = format!("destroy {} ({})", record.id, record.status);
        match result {
            Ok(destroyed) => {
                assert!(allowed, "{case}");
                assert_eq!(destroyed.status, Status::Deleted, "{case}");
            }
            Err(error) => {
                assert!(!allowed, "{case}: {error}");
                assert_eq!(error.kind(), ErrorKind::Catalog, "{case}: {error}");
            }
        }
    }
    assert!(library
        .list(OWNER, true)
        .unwrap()
        .iter()
        .all(|r| r.status == Status::Creating));
}

fn transitions_outside_the_table_are_refused(dir: &TestLibrary) {
    let (library, records) = matrix_library(dir);
    let find = |status: Status| records.iter().find(|r| r.status == status).unwrap().id.clone();
    let deprecate = |flag| ImageUpdate {
        deprecated: Some(flag),
        ..ImageUpdate::default()
    };
    // creating, failed: neither deprecated nor reinstated; creating not destroyed.
    for status in [Status::Creating, Status::Failed] {
        let id = find(status);
        for flag in [true, false] {
            let message = refused(
                library.update(OWNER, &id, &deprecate(flag)),
                ErrorKind::Catalog,
                "only available images can be deprecated",
            );
            assert!(message.contains(&format!("is {status}")), "{message}");
        }
    }
    refused(
        library.destroy(OWNER, &find(Status::Creating)),
        ErrorKind::Catalog,
        "cannot be destroyed now",
    );
    // deleted: nothing at all.
    let deleted = find(Status::Deleted);
    let is_deleted = format!("{deleted} is deleted");
    refused(
        library.update(OWNER, &deleted, &deprecate(false)),
        ErrorKind::Catalog,
        &is_deleted,
    );
    refused(library.destroy(OWNER, &deleted), ErrorKind::Catalog, &is_deleted);
    // available <-> deprecated, both ways, and asking for the current state changes nothing.
    let id = find(Status::Available);
    assert_eq!(
        library.update(OWNER, &id, &deprecate(false)).unwrap().status,
        Status::Available
    );
    assert_eq!(
        library.update(OWNER, &id, &deprecate(true)).unwrap().status,
        Status::Deprecated
    );
    assert_eq!(
        library.update(OWNER, &id, &deprecate(true)).unwrap().status,
        Status::Deprecated
    );
    assert_eq!(
        library.update(OWNER, &id, &deprecate(false)).unwrap().status,
        Status::Available
    );
    assert_eq!(library.destroy(OWNER, &id).unwrap().status, Status::Deleted);
    let is_deleted = format!("{id} is deleted");
    refused(library.destroy(OWNER, &id), ErrorKind::Catalog, &is_deleted);
}

fn a_deleted_image_refuses_updates_that_would_otherwise_succeed(dir: &TestLibrary) {
    let (library, records) = matrix_library(dir);
    // Each of these succeeds on the available image, so only the deleted-image guard can
    // refuse them (an empty update would be refused as "nothing to update" anyway).
    let updates = [
        ImageUpdate {
            name: Some("renamed".into()),
            ..ImageUpdate::default()
        },
        ImageUpdate {
            public: Some(true),
            username: Some("ubuntu".into()),
            ..ImageUpdate::default()
        },
        ImageUpdate {
            mode: Some(Mode::Compatibility),
            ..ImageUpdate::default()
        },
    ];
    let available = records.iter().find(|r| r.status == Status::Available).unwrap();
    let deleted = records.iter().find(|r| r.status == Status::Deleted).unwrap();
    for update in &updates {
        library.update(OWNER, &available.id, update).unwrap();
        let message = refused(
            library.update(OWNER, &deleted.id, update),
            ErrorKind::Catalog,
            "is deleted",
        );
        assert_eq!(message, format!("{} is deleted", deleted.id), "{update:?}");
    }
    assert_eq!(library.show(OWNER, &deleted.id).unwrap(), *deleted, "unchanged");
}

fn compressed_size_limit_fails_the_registration_and_keeps_the_upload(dir: &TestLibrary) {
    let library = dir.open();
    let source = upload(&library, OWNER, "big.img", 4 << 20);
    let before = fs::read(&source).unwrap();
    let mut request = RegisterRequest::new(NewImage::new("Big", Arch::X86_64), "big.img");
    request.max_compressed_size = Some(1024);
    let mut created = None;
    let error = library
        .register(OWNER, &request, &mut |r| created = Some(r.id.clone()))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::LimitExceeded, "{error}");
    let id = created.unwrap();
    let record = library.show(OWNER, &id).unwrap();
    assert_eq!(record.status, Status::Failed);
    let reason = record.reason.unwrap();
    assert!(
        reason.starts_with("big.img: ") && reason.contains("limit"),
        "{reason}"
    );
    assert!(!reason.contains("/proc/self/fd"), "{reason}");
    assert_eq!(fs::read(&source).unwrap(), before, "the upload is kept");
    assert!(!dir.stored_image(&id).exists());
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(library.list(OWNER, false).unwrap()[0].display_status(), "failed");
    // The library-wide setting applies too (operator only), and the same upload then registers.
    let mut operator_view = dir.open();
    refused(
        operator_view.set_settings(OWNER, None, Some(1024)),
        ErrorKind::Catalog,
        "operator",
    );
    operator_view.set_settings(OPERATOR, None, Some(1024)).unwrap();
    let limited = dir.open();
    assert_eq!(limited.settings().max_compressed_size, 1024);
    assert_eq!(
        register(&limited, OWNER, "Big", "big.img").unwrap_err().kind(),
        ErrorKind::LimitExceeded
    );
    operator_view
        .set_settings(OPERATOR, None, Some(50 << 30))
        .unwrap();
    assert_eq!(
        register(&dir.open(), OWNER, "Big", "big.img").unwrap().status,
        Status::Available
    );
    assert!(!source.exists());
}

fn refused_input_fails_the_registration(dir: &TestLibrary) {
    let library = dir.open();
    // An imgpack archive registers (tests/dedup.rs), but not a version 1 one: it has no
    // SHA-256 per chunk to register by.
    let archive = library.incoming_dir(OWNER).unwrap().join("packed.img");
    fs::copy("tests/fixtures/v1-64k.imgpack", &archive).unwrap();
    let error = register(&library, OWNER, "Packed", "packed.img").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{error}");
    let failed = library.list(OWNER, false).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].status, Status::Failed);
    assert!(failed[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("version 1 imgpack archive"));
    assert!(archive.exists());
}

fn sources_must_be_plain_files_in_the_callers_incoming_directory(dir: &TestLibrary) {
    let library = dir.open();
    let outside = dir.path().join("secret.raw");
    write_disk(&outside, 1 << 20, 4096, 3);
    let incoming = library.incoming_dir(OWNER).unwrap();
    std::os::unix::fs::symlink(&outside, incoming.join("link.img")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", incoming.join("passwd.img")).unwrap();
    fs::hard_link(&outside, incoming.join("hard.img")).unwrap();
    fs::create_dir(incoming.join("folder.img")).unwrap();
    upload(&library, OTHER, "theirs.img", 1 << 20);
    let theirs = format!("../{OTHER}/theirs.img");
    let absolute = outside.display().to_string();
    for source in [
        "..",
        ".",
        "",
        "../../secret.raw",
        &theirs,
        &absolute,
        "link.img",
        "passwd.img",
        "hard.img",
        "folder.img",
        "theirs.img",
        "missing.img",
    ] {
        let error = register(&library, OWNER, "Sneaky", source).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{source:?}: {error}");
    }
    assert!(
        library.list(OWNER, false).unwrap().is_empty(),
        "refused before any record"
    );
    assert!(fs::metadata(&outside).is_ok());
    assert!(dir
        .path()
        .join("incoming")
        .join(OTHER)
        .join("theirs.img")
        .exists());
    // Accounts that could name a path are refused too.
    refused(
        library.list("../acc-x", false),
        ErrorKind::InvalidArgument,
        "account",
    );
    refused(
        library.incoming_dir("acc-../x"),
        ErrorKind::InvalidArgument,
        "account",
    );
}

fn only_the_operator_makes_official_images(dir: &TestLibrary) {
    let library = dir.open();
    upload(&library, OWNER, "a.img", 1 << 20);
    let mut image = NewImage::new("Mine", Arch::X86_64);
    image.official = Some(true);
    refused(
        library.register(OWNER, &RegisterRequest::new(image, "a.img"), &mut |_| {}),
        ErrorKind::Catalog,
        "only the operator",
    );
    let mine = register(&library, OWNER, "Mine", "a.img").unwrap();
    assert!(!mine.official && !mine.public);
    let official = ImageUpdate {
        official: Some(true),
        ..ImageUpdate::default()
    };
    refused(
        library.update(OWNER, &mine.id, &official),
        ErrorKind::Catalog,
        "only the operator account can mark images official",
    );

    upload(&library, OPERATOR, "ubuntu.img", 1 << 20);
    let ubuntu = register(&library, OPERATOR, "Ubuntu Lucid 10.04 server", "ubuntu.img").unwrap();
    assert!(ubuntu.official && ubuntu.public);
    assert_eq!(ubuntu.display_type(), "official");
    // Official first, then by name.
    let listed = library.list(OWNER, false).unwrap();
    assert_eq!(ids(&listed), vec![ubuntu.id.as_str(), mine.id.as_str()]);
    // A configured operator replaces the default one.
    let custom = Library::open(
        dir.path(),
        &LibraryOptions {
            operator: Some("ops".to_string()),
            ..dir.options()
        },
    )
    .unwrap();
    refused(
        custom.list(OPERATOR, false),
        ErrorKind::InvalidArgument,
        "account",
    );
    assert!(custom.list("ops", false).is_ok());
}

fn updates_of_different_fields_do_not_overwrite_each_other(dir: &TestLibrary) {
    let library = dir.open();
    upload(&library, OWNER, "a.img", 1 << 20);
    let id = register(&library, OWNER, "Before", "a.img").unwrap().id;
    let updates = vec![
        ImageUpdate {
            name: Some("After".into()),
            ..ImageUpdate::default()
        },
        ImageUpdate {
            description: Some("described".into()),
            ..ImageUpdate::default()
        },
        ImageUpdate {
            mode: Some(Mode::Compatibility),
            ..ImageUpdate::default()
        },
        ImageUpdate {
            public: Some(true),
            ..ImageUpdate::default()
        },
        ImageUpdate {
            deprecated: Some(true),
            ..ImageUpdate::default()
        },
        ImageUpdate {
            username: Some("ubuntu".into()),
            ..ImageUpdate::default()
        },
        ImageUpdate {
            arch: Some(Arch::I686),
            ..ImageUpdate::default()
        },
    ];
    std::thread::scope(|scope| {
        for update in &updates {
            let id = &id;
            scope.spawn(move || {
                // Each thread its own connection, as separate processes would have.
                let library = dir.open();
                library.update(OWNER, id, update).unwrap();
            });
        }
    });
    let record = library.show(OWNER, &id).unwrap();
    assert_eq!(record.name, "After");
    assert_eq!(record.description, "described");
    assert_eq!(record.mode, Mode::Compatibility);
    assert!(record.public);
    assert_eq!(record.status, Status::Deprecated);
    assert_eq!(record.username.as_deref(), Some("ubuntu"));
    assert_eq!(record.arch, Arch::I686);
}

fn stale_registrations_are_failed_on_open(dir: &TestLibrary) {
    let here = HostIdentity::current();
    if here.boot_id.is_empty() {
        common::skip("/proc/sys/kernel/random/boot_id not readable");
        return;
    }
    drop(dir.open());
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let now = imgpack::library::record::unix_now();
    let live = here.lease_for_self(now);
    let leases = [
        (
            "img-dead0",
            Lease {
                pid: dead_pid,
                ..live.clone()
            },
        ),
        // Another process table under our host name (a reboot, or another machine or
        // container of that name): judged by its expiry alone.
        (
            "img-boot0",
            Lease {
                boot_id: "old-boot".into(),
                expires_at: now - 1,
                ..live.clone()
            },
        ),
        (
            "img-boot1",
            Lease {
                boot_id: "old-boot".into(),
                expires_at: now + 600,
                ..live.clone()
            },
        ),
        (
            "img-far00",
            Lease {
                host: "elsewhere".into(),
                expires_at: now - 1,
                ..live.clone()
            },
        ),
        (
            "img-far01",
            Lease {
                host: "elsewhere".into(),
                expires_at: now + 600,
                ..live.clone()
            },
        ),
        ("img-live0", live.clone()),
    ];
    {
        let mut store = dir.open_store();
        for (id, lease) in &leases {
            let record = ImageRecord {
                id: id.to_string(),
                owner: OWNER.to_string(),
                source_type: SourceType::Upload,
                created_on: "2011-05-19T00:00:00Z".to_string(),
                status: Status::Creating,
                name: id.to_string(),
                description: String::new(),
                arch: Arch::X86_64,
                mode: Mode::Virtio,
                public: false,
                official: false,
                username: None,
                source: format!("{id}.img"),
                virtual_size: 0,
                disk_size: 0,
                compressed_size: 0,
                format: None,
                chunks: 0,
                reason: None,
                digest: None,
                source_sha256: None,
            };
            assert!(store.insert(&record, lease).unwrap());
            fs::create_dir_all(dir.path().join("tmp").join(id)).unwrap();
            fs::write(dir.path().join("tmp").join(id).join("spill"), b"x").unwrap();
        }
    }
    let library = dir.open();
    let status = |id: &str| library.show(OWNER, id).unwrap();
    for id in ["img-dead0", "img-boot0", "img-far00"] {
        let record = status(id);
        assert_eq!(record.status, Status::Failed, "{id}");
        assert!(record.reason.unwrap().contains("interrupted"), "{id}");
        assert!(!dir.path().join("tmp").join(id).exists(), "{id}");
    }
    for id in ["img-boot1", "img-far01", "img-live0"] {
        assert_eq!(status(id).status, Status::Creating, "{id}");
        assert!(dir.path().join("tmp").join(id).exists(), "{id}");
    }
    assert!(library.recover().unwrap().is_empty(), "recovery happens once");
}

/// Two requests for one upload: while the first is `creating`, the catalog refuses the second
/// (whichever process or host it comes from), and the upload is kept for the first.
fn one_upload_is_registered_by_one_request_at_a_time(dir: &TestLibrary) {
    let library = dir.open();
    let source = upload(&library, OWNER, "twice.img", 4 << 20);
    let other_process = dir.open();
    let mut second = None;
    let first = library
        .register(
            OWNER,
            &RegisterRequest::new(NewImage::new("First", Arch::X86_64), "twice.img"),
            &mut |_created| {
                second = Some(register(&other_process, OWNER, "Second", "twice.img"));
            },
        )
        .unwrap();
    assert_eq!(first.status, Status::Available);
    refused(
        second.expect("on_created was called"),
        ErrorKind::Catalog,
        "already being registered",
    );
    assert!(!source.exists());
    let images = library.list(OWNER, true).unwrap();
    assert_eq!(
        ids(&images),
        vec![first.id.as_str()],
        "the refused request left no record"
    );
    // Once the first is done, the name is free for a new upload.
    upload(&library, OWNER, "twice.img", 4 << 20);
    assert_eq!(
        register(&library, OWNER, "Again", "twice.img").unwrap().status,
        Status::Available
    );
}

/// Holds the conversion in its first progress report with data until the catalog shows a
/// non-zero `disk_size` (the registration's writer thread publishes it every 250 ms), and keeps
/// the record it saw. Gives up after a deadline, leaving `seen` empty, so the test fails
/// instead of hanging.
struct WatchCatalog {
    catalog: CatalogLocation,
    seen: std::sync::Mutex<Option<ImageRecord>>,
}

impl imgpack::Progress for WatchCatalog {
    fn update(&self, _done: u64, _total: Option<u64>, disk_size: u64) {
        let mut seen = self.seen.lock().unwrap();
        if seen.is_some() || disk_size == 0 {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut store = open_catalog(&self.catalog).unwrap();
        while Instant::now() < deadline {
            let record = store.list().unwrap().into_iter().next();
            if record.as_ref().is_some_and(|r| r.disk_size > 0) {
                *seen = record;
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn disk_size_grows_in_the_catalog_while_creating(dir: &TestLibrary) {
    let library = dir.open();
    upload(&library, OWNER, "watched.img", 4 << 20);
    let watch = std::sync::Arc::new(WatchCatalog {
        catalog: dir.catalog().clone(),
        seen: std::sync::Mutex::new(None),
    });
    let mut request = RegisterRequest::new(NewImage::new("Watched", Arch::X86_64), "watched.img");
    request.control.progress = Some(watch.clone());
    let done = library.register(OWNER, &request, &mut |_| {}).unwrap();
    let seen = watch
        .seen
        .lock()
        .unwrap()
        .clone()
        .expect("disk_size reached the catalog while the image was creating");
    assert_eq!(seen.id, done.id);
    assert_eq!(seen.status, Status::Creating);
    assert_eq!(seen.disk_size, 512 << 10);
    assert_eq!(done.disk_size, 512 << 10);
}

fn snapshots_record_a_server_disk_and_leave_it_alone(dir: &TestLibrary) {
    let library = dir.open();
    let disk = dir.path().join("srv-abcde.raw");
    write_disk(&disk, 3 << 20, 64 << 10, 9);
    let before = fs::read(&disk).unwrap();
    let request = imgpack::library::SnapshotRequest {
        image: NewImage::new("Before upgrade", Arch::X86_64),
        disk: disk.clone(),
        max_compressed_size: None,
        control: Control::default(),
    };
    let image = library.snapshot(OWNER, &request, &mut |_| {}).unwrap();
    assert_eq!(image.source_type, SourceType::Snapshot);
    assert_eq!(image.display_type(), "snapshot");
    assert_eq!(image.source, "srv-abcde.raw");
    assert_eq!(image.status, Status::Available);
    assert!(!image.public);
    assert_eq!(fs::read(&disk).unwrap(), before);
    let server = dir.path().join("restored.raw");
    library
        .build(OWNER, &image.id, &server, 3 << 20, &Control::default())
        .unwrap();
    assert_eq!(fs::read(&server).unwrap(), before);
    let missing = imgpack::library::SnapshotRequest {
        disk: dir.path().join("nope.raw"),
        ..request
    };
    refused(
        library.snapshot(OWNER, &missing, &mut |_| {}),
        ErrorKind::Io,
        "nope.raw",
    );
}

/// Registration records the image digest (the same `imgpack digest` gives the upload); a
/// download checks the archive against it and refuses, leaving nothing, when they differ.
fn digests_are_recorded_and_checked_on_download(dir: &TestLibrary) {
    let library = dir.open();
    let upload_path = upload(&library, OWNER, "disk.img", 3 << 20);
    let expected = imgpack::digest::digest(&upload_path, &imgpack::DigestOptions::default())
        .unwrap()
        .digest;
    let image = register(&library, OWNER, "Disk", "disk.img").unwrap();
    assert_eq!(image.digest.as_deref(), Some(expected.as_str()));
    assert_eq!(library.show(OWNER, &image.id).unwrap().digest, image.digest);

    let out = dir.path().join("download.raw");
    library
        .download(OWNER, &image.id, &out, &imgpack::export::ExportOptions::default())
        .unwrap();
    let got = imgpack::digest::digest(&out, &imgpack::DigestOptions::default())
        .unwrap()
        .digest;
    assert_eq!(got, expected);
    fs::remove_file(&out).unwrap();

    // A catalog whose digest is not the archive's: every use of the image is refused.
    let wrong = format!("sha256-tree:{}", "0".repeat(64));
    let changes = Changes {
        digest: Some(wrong),
        ..Changes::default()
    };
    assert!(dir
        .open_store()
        .compare_and_set(&image.id, &[Status::Available], None, &changes)
        .unwrap());
    let library = dir.open();
    refused(
        library.download(OWNER, &image.id, &out, &imgpack::export::ExportOptions::default()),
        ErrorKind::Checksum,
        "not the one the catalog recorded",
    );
    assert!(!out.exists(), "a refused download left {}", out.display());
    refused(
        library.build(
            OWNER,
            &image.id,
            &dir.path().join("disk"),
            8 << 20,
            &Control::default(),
        ),
        ErrorKind::Checksum,
        "digest",
    );
}

/// `sha256sum` of `path`, the oracle for `source_sha256`.
fn sha256sum(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Registration records `source_sha256`, what `sha256sum` prints of the upload as received:
/// for a sparse raw upload (its holes hashed as zeros), an odd-sized one and a gzip one; and
/// keeps it in the catalog, where `show` finds it. A failed registration and a snapshot of a
/// server disk (not an upload) record none.
fn source_sha256_is_the_uploads_sha256sum(dir: &TestLibrary) {
    if !common::oracle::have("sha256sum") {
        return;
    }
    let library = dir.open();
    let incoming = library.incoming_dir(OWNER).unwrap();
    let sparse = upload(&library, OWNER, "sparse.img", 9 << 20);
    let odd = incoming.join("odd.img");
    write_disk(&odd, (3 << 20) + 777, 100_000, 3);
    let gzipped = incoming.join("disk.img.gz");
    {
        let mut encoder =
            flate2::write::GzEncoder::new(fs::File::create(&gzipped).unwrap(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &fs::read(&odd).unwrap()).unwrap();
        encoder.finish().unwrap();
    }
    for (path, name) in [
        (&sparse, "sparse.img"),
        (&odd, "odd.img"),
        (&gzipped, "disk.img.gz"),
    ] {
        let expected = sha256sum(path);
        let image = register(&library, OWNER, name, name).unwrap();
        assert_eq!(image.source_sha256.as_deref(), Some(expected.as_str()), "{name}");
        let shown = dir.open().show(OWNER, &image.id).unwrap();
        assert_eq!(shown.source_sha256.as_deref(), Some(expected.as_str()), "{name}");
    }

    fs::write(incoming.join("junk.img"), b"QFI\xfbnot really a qcow2").unwrap();
    assert!(register(&library, OWNER, "Junk", "junk.img").is_err());
    let failed = library
        .list(OWNER, true)
        .unwrap()
        .into_iter()
        .find(|r| r.source == "junk.img")
        .unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.source_sha256, None);

    let disk = dir.path().join("server.raw");
    write_disk(&disk, 4 << 20, 4096, 5);
    let request = imgpack::library::SnapshotRequest {
        image: NewImage::new("Snap", Arch::X86_64),
        disk,
        max_compressed_size: None,
        control: Control::default(),
    };
    let snapshot = library.snapshot(OWNER, &request, &mut |_| {}).unwrap();
    assert_eq!(snapshot.source_sha256, None);
}

/// `images download -O imgpack`: the image's single-file archive, byte for byte the archive
/// the same upload gives a library without deduplication (registration is deterministic, so
/// that is also the same upload registered twice), which `verify` passes and which builds the
/// upload; a damaged frame is refused and leaves nothing.
fn download_as_imgpack_is_the_self_contained_archive(dir: &TestLibrary) {
    let library = dir.open();
    upload(&library, OWNER, "disk.img", 6 << 20);
    let image = register(&library, OWNER, "Disk", "disk.img").unwrap();
    let options = imgpack::export::ExportOptions {
        format: imgpack::export::ExportFormat::Imgpack,
        ..imgpack::export::ExportOptions::default()
    };
    let out = dir.path().join("download.imgpack");
    let report = library.download(OWNER, &image.id, &out, &options).unwrap();
    assert_eq!(report.format, "imgpack");
    let downloaded = fs::read(&out).unwrap();
    assert_eq!(report.bytes_written, downloaded.len() as u64);
    assert_eq!(downloaded.len() as u64, image.compressed_size);

    // The same upload, registered by a library that stores archives as they are.
    let plain = TestLibrary::new(Backend {
        dedup: false,
        ..dir.backend
    })
    .unwrap();
    let plain_library = plain.open();
    upload(&plain_library, OWNER, "disk.img", 6 << 20);
    let plain_image = register(&plain_library, OWNER, "Disk", "disk.img").unwrap();
    let stored = fs::read(plain.stored_image(&plain_image.id)).unwrap();
    assert!(
        downloaded == stored,
        "the downloaded archive is not the self-contained one"
    );

    let verified = imgpack::verify(&out, &imgpack::VerifyOptions::default()).unwrap();
    assert!(verified.ok);
    assert_eq!(verified.digest.as_deref(), image.digest.as_deref());
    let extracted = dir.path().join("extracted.raw");
    imgpack::extract(&out, &extracted, &imgpack::ExtractOptions::default()).unwrap();
    let disk = dir.path().join("disk.raw");
    write_disk(&disk, 6 << 20, 512 << 10, 7);
    assert!(fs::read(&extracted).unwrap() == fs::read(&disk).unwrap());

    // A frame damaged in the store: the copy is refused before anything is written.
    let victim = if dir.backend.dedup {
        chunk_objects(dir.path())[0].clone()
    } else {
        dir.stored_image(&image.id)
    };
    damage_middle(&victim);
    fs::remove_file(&out).unwrap();
    let error = library.download(OWNER, &image.id, &out, &options).unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::Checksum | ErrorKind::Corrupt),
        "{error}"
    );
    assert!(!out.exists());
}

/// Every chunk object of a deduplicated library, sorted.
fn chunk_objects(root: &Path) -> Vec<PathBuf> {
    let mut objects = Vec::new();
    for shard in fs::read_dir(root.join("chunks")).unwrap() {
        for object in fs::read_dir(shard.unwrap().path()).unwrap() {
            objects.push(object.unwrap().path());
        }
    }
    objects.sort();
    objects
}

/// Flips a byte in the middle of `path` (a read-only object).
fn damage_middle(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(path, bytes).unwrap();
}

crate::every_backend!(
    download_as_imgpack_is_the_self_contained_archive,
    seeds_walkthrough,
    visibility_matrix,
    transitions_outside_the_table_are_refused,
    a_deleted_image_refuses_updates_that_would_otherwise_succeed,
    compressed_size_limit_fails_the_registration_and_keeps_the_upload,
    refused_input_fails_the_registration,
    sources_must_be_plain_files_in_the_callers_incoming_directory,
    only_the_operator_makes_official_images,
    updates_of_different_fields_do_not_overwrite_each_other,
    stale_registrations_are_failed_on_open,
    disk_size_grows_in_the_catalog_while_creating,
    snapshots_record_a_server_disk_and_leave_it_alone,
    one_upload_is_registered_by_one_request_at_a_time,
    digests_are_recorded_and_checked_on_download,
    source_sha256_is_the_uploads_sha256sum,
);
