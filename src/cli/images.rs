//! `imgpack images ...`: the image library's commands, mirroring `brightbox images`, over
//! [`imgpack::library::Library`]. The library directory and the caller's account come from
//! `--library`/`--account` (accepted before or after the subcommand) or `IMGPACK_LIBRARY`/
//! `IMGPACK_ACCOUNT`; `IMGPACK_OPERATOR` overrides the library's operator account;
//! `--catalog`/`IMGPACK_CATALOG` names the catalog (`sqlite:PATH` or `postgres://...`).

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Serialize;

use imgpack::library::chunks::DedupStats;
use imgpack::library::{
    Arch, ImageRecord, ImageUpdate, Library, LibraryOptions, Mode, NewImage, RegisterRequest, SnapshotRequest,
};
use imgpack::units::format_size;
use imgpack::{Control, Error, Result};

use super::{json_error, size_arg, Common, ProgressReport};

/// Testing hook: milliseconds a registration waits after creating its record, so a test can
/// kill it while it is `creating`.
const HOLD_CREATING_ENV: &str = "IMGPACK_TEST_HOLD_CREATING_MS";

/// Arguments of `imgpack images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// The library: a directory or s3://BUCKET/PREFIX (endpoint and credentials from the
    /// AWS_* variables; it then needs --catalog) [default: $IMGPACK_LIBRARY].
    #[arg(long, global = true, value_name = "DIR|s3://BUCKET/PREFIX")]
    library: Option<PathBuf>,
    /// The catalog: sqlite:PATH or postgres://... [default: $IMGPACK_CATALOG, else catalog.db in the library].
    #[arg(long, global = true, value_name = "CATALOG")]
    catalog: Option<String>,
    /// Your account id, acc-xxxxx [default: $IMGPACK_ACCOUNT].
    #[arg(long, global = true, value_name = "ACCOUNT")]
    account: Option<String>,
    /// Print the record(s) as JSON (sizes in bytes) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bar.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: ImagesCommand,
}

#[derive(Debug, Subcommand)]
enum ImagesCommand {
    /// Register an upload from your incoming/ directory as a new image.
    Register(RegisterArgs),
    /// Record a server disk as a snapshot image.
    Snapshot(SnapshotArgs),
    /// List the images you can use.
    List(ListArgs),
    /// Show every field of an image.
    Show(IdArg),
    /// Change one of your images.
    Update(UpdateArgs),
    /// Delete one of your images.
    Destroy(IdArg),
    /// Write an image onto a new server disk, as the server build system does.
    Build(BuildArgs),
    /// Download an image as raw, qcow2, vmdk, vhd or vhdx (-o - streams raw and vmdk).
    Download(DownloadArgs),
    /// Show the library settings, or change them (operator only).
    Settings(SettingsArgs),
    /// Store a file in your incoming/ area (atomically: an interrupted upload leaves nothing).
    Upload(UploadArgs),
    /// Remove deduplicated chunks no image references, and what dead images left (operator only).
    Gc,
}

#[derive(Debug, Args)]
struct UploadArgs {
    /// The file to upload.
    file: PathBuf,
    /// Its name in your incoming/ area [default: the file's name].
    #[arg(long)]
    name: Option<String>,
}

/// What `images upload` stored. Field names are part of the `--json` contract.
#[derive(Debug, Serialize)]
struct UploadReport {
    account: String,
    name: String,
    size: u64,
    seconds: f64,
}

#[derive(Debug, Args)]
struct MetadataArgs {
    /// Image name.
    #[arg(short = 'n', long)]
    name: String,
    /// Description.
    #[arg(short = 'd', long, default_value = "")]
    description: String,
    /// Default user account of the image.
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// virtio or compatibility.
    #[arg(short = 'm', long, default_value_t = Mode::default(), value_parser = mode_arg)]
    mode: Mode,
    /// Whether other accounts can see and use it [default: false; true for official images].
    #[arg(short = 'p', long, value_parser = bool_arg)]
    public: Option<bool>,
    /// Mark as official (operator only) [default: true for the operator].
    #[arg(long, value_parser = bool_arg)]
    official: Option<bool>,
    /// Fail the registration if the archive would exceed this size [default: library setting, 50G].
    #[arg(long, value_parser = size_arg)]
    max_compressed_size: Option<u64>,
}

#[derive(Debug, Args)]
struct RegisterArgs {
    /// i686 or x86_64.
    #[arg(short = 'a', long, value_parser = arch_arg)]
    arch: Arch,
    /// The uploaded file's name in your incoming/ directory.
    #[arg(short = 's', long)]
    source: String,
    #[command(flatten)]
    metadata: MetadataArgs,
}

#[derive(Debug, Args)]
struct SnapshotArgs {
    /// The server's disk.
    #[arg(long)]
    disk: PathBuf,
    /// i686 or x86_64.
    #[arg(short = 'a', long, default_value_t = Arch::X86_64, value_parser = arch_arg)]
    arch: Arch,
    #[command(flatten)]
    metadata: MetadataArgs,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Also show other accounts' deprecated public images.
    #[arg(long)]
    show_all: bool,
}

#[derive(Debug, Args)]
struct IdArg {
    /// The image id (img-xxxxx).
    id: String,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// The image id (img-xxxxx).
    id: String,
    /// virtio or compatibility.
    #[arg(short = 'm', long, value_parser = mode_arg)]
    mode: Option<Mode>,
    /// true or false.
    #[arg(short = 'p', long, value_parser = bool_arg)]
    public: Option<bool>,
    /// true hides it from listings (it stays usable by id); false reinstates it.
    #[arg(long, value_parser = bool_arg)]
    deprecated: Option<bool>,
    /// New name.
    #[arg(short = 'n', long)]
    name: Option<String>,
    /// New description.
    #[arg(short = 'd', long)]
    description: Option<String>,
    /// New username (empty clears it).
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// New architecture.
    #[arg(short = 'a', long, value_parser = arch_arg)]
    arch: Option<Arch>,
    /// Mark official or not (operator only).
    #[arg(long, value_parser = bool_arg)]
    official: Option<bool>,
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// The image id (img-xxxxx).
    id: String,
    /// The new server disk to write (must not exist).
    #[arg(long)]
    disk: PathBuf,
    /// Size of the server disk; at least the image's virtual size.
    #[arg(long, value_parser = size_arg)]
    disk_size: u64,
}

#[derive(Debug, Args)]
struct DownloadArgs {
    /// The image id (img-xxxxx).
    id: String,
    /// The file to write (- writes standard output: raw, vmdk streamOptimized and imgpack only).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    format: super::export::FormatArgs,
}

#[derive(Debug, Args)]
struct SettingsArgs {
    /// Make another account the operator.
    #[arg(long)]
    operator: Option<String>,
    /// The library's compressed-size limit for registrations.
    #[arg(long, value_parser = size_arg)]
    max_compressed_size: Option<u64>,
}

fn arch_arg(text: &str) -> std::result::Result<Arch, String> {
    text.parse().map_err(|e: Error| e.to_string())
}

fn mode_arg(text: &str) -> std::result::Result<Mode, String> {
    text.parse().map_err(|e: Error| e.to_string())
}

fn bool_arg(text: &str) -> std::result::Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{text:?} is not true or false")),
    }
}

impl MetadataArgs {
    fn new_image(&self, arch: Arch) -> NewImage {
        NewImage {
            name: self.name.clone(),
            description: self.description.clone(),
            arch,
            mode: self.mode,
            public: self.public,
            official: self.official,
            username: self.username.clone(),
        }
    }
}

/// Runs `imgpack images ...`; returns the exit code.
/// The library options every command that opens a library uses: `IMGPACK_OPERATOR`, and the
/// catalog from `--catalog` (given here) or `IMGPACK_CATALOG`.
pub fn library_options(catalog: Option<String>) -> Result<LibraryOptions> {
    Ok(LibraryOptions {
        operator: std::env::var("IMGPACK_OPERATOR").ok().filter(|s| !s.is_empty()),
        catalog: catalog
            .or_else(|| std::env::var("IMGPACK_CATALOG").ok().filter(|s| !s.is_empty()))
            .map(|text| text.parse())
            .transpose()?,
        dedup: dedup_from_env()?,
    })
}

/// `IMGPACK_DEDUP`: `on` deduplicates new registrations and snapshots, `off` (the default)
/// stores self-contained archives.
fn dedup_from_env() -> Result<Option<bool>> {
    match std::env::var("IMGPACK_DEDUP").ok().as_deref() {
        None | Some("") => Ok(None),
        Some("on" | "1" | "true") => Ok(Some(true)),
        Some("off" | "0" | "false") => Ok(Some(false)),
        Some(other) => Err(Error::invalid_argument(format!(
            "IMGPACK_DEDUP={other:?}: give on or off"
        ))),
    }
}

pub fn run(args: ImagesArgs, cancel: Arc<AtomicBool>) -> Result<u8> {
    let root = args
        .library
        .clone()
        .or_else(|| std::env::var_os("IMGPACK_LIBRARY").map(PathBuf::from))
        .ok_or_else(|| Error::invalid_argument("no library: give --library DIR or set IMGPACK_LIBRARY"))?;
    let account = args
        .account
        .clone()
        .or_else(|| std::env::var("IMGPACK_ACCOUNT").ok())
        .ok_or_else(|| {
            Error::invalid_argument("no account: give --account acc-xxxxx or set IMGPACK_ACCOUNT")
        })?;
    let options = library_options(args.catalog.clone())?;
    let mut library = Library::open(&root, &options)?;
    let json = args.json;
    let common = Common {
        json,
        quiet: args.quiet,
        threads: None,
    };
    match args.command {
        ImagesCommand::Register(a) => {
            let request = RegisterRequest {
                image: a.metadata.new_image(a.arch),
                source: a.source,
                max_compressed_size: a.metadata.max_compressed_size,
                control: Control::default(),
            };
            create(
                json,
                &common,
                cancel,
                |control, on_created| {
                    library.register(
                        &account,
                        &RegisterRequest {
                            control,
                            ..request.clone()
                        },
                        on_created,
                    )
                },
                || library.last_dedup(),
            )
        }
        ImagesCommand::Snapshot(a) => {
            let request = SnapshotRequest {
                image: a.metadata.new_image(a.arch),
                disk: a.disk,
                max_compressed_size: a.metadata.max_compressed_size,
                control: Control::default(),
            };
            create(
                json,
                &common,
                cancel,
                |control, on_created| {
                    library.snapshot(
                        &account,
                        &SnapshotRequest {
                            control,
                            ..request.clone()
                        },
                        on_created,
                    )
                },
                || library.last_dedup(),
            )
        }
        ImagesCommand::List(a) => {
            let images = library.list(&account, a.show_all)?;
            if json {
                print_json(&images)?;
            } else {
                println!("{}", table(&images));
            }
            Ok(0)
        }
        ImagesCommand::Show(a) => {
            let image = library.show(&account, &a.id)?;
            if json {
                print_json(&image)?;
            } else {
                println!("{}", details(&image));
            }
            Ok(0)
        }
        ImagesCommand::Update(a) => {
            let update = ImageUpdate {
                name: a.name,
                description: a.description,
                arch: a.arch,
                mode: a.mode,
                public: a.public,
                deprecated: a.deprecated,
                username: a.username,
                official: a.official,
            };
            let image = library.update(&account, &a.id, &update)?;
            if !json {
                println!("Updating image {}\n", a.id);
            }
            print_records(json, &image)
        }
        ImagesCommand::Destroy(a) => {
            let image = library.destroy(&account, &a.id)?;
            if !json {
                println!("Destroying image {}\n", a.id);
            }
            print_records(json, &image)
        }
        ImagesCommand::Build(a) => {
            let bar = ProgressReport::new(&common);
            let report = library.build(&account, &a.id, &a.disk, a.disk_size, &bar.control(cancel));
            bar.finish();
            let report = report?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "Built {} ({}) from {}: {} of data, {:.2} s; the server must run as {} in {} mode",
                    report.disk,
                    format_size(report.disk_size),
                    report.image,
                    format_size(report.data_size),
                    report.seconds,
                    report.arch,
                    report.mode
                );
            }
            Ok(0)
        }
        ImagesCommand::Upload(a) => upload(&library, &account, a, &common, cancel),
        ImagesCommand::Gc => {
            let report = library.gc(&account)?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "removed {} chunks ({}), kept {}; removed {} index objects or archives of deleted images",
                    report.removed_chunks,
                    format_size(report.removed_bytes),
                    report.kept_chunks,
                    report.removed_images
                );
            }
            Ok(0)
        }
        ImagesCommand::Download(a) => {
            let bar = ProgressReport::new(&common);
            let options = a.format.options(None, bar.control(cancel));
            let report = library.download(&account, &a.id, &a.output, &options);
            bar.finish();
            super::export::report_export(&report?, json)?;
            Ok(0)
        }
        ImagesCommand::Settings(a) => {
            let settings = if a.operator.is_some() || a.max_compressed_size.is_some() {
                library.set_settings(&account, a.operator.as_deref(), a.max_compressed_size)?
            } else {
                library.settings().clone()
            };
            if json {
                print_json(&settings)?;
            } else {
                println!(
                    "operator: {}\nmax_compressed_size: {} ({} bytes)",
                    settings.operator,
                    format_size(settings.max_compressed_size),
                    settings.max_compressed_size
                );
            }
            Ok(0)
        }
    }
}

/// Stores a file in the caller's incoming area, with a progress bar.
fn upload(
    library: &Library,
    account: &str,
    args: UploadArgs,
    common: &Common,
    cancel: Arc<AtomicBool>,
) -> Result<u8> {
    let start = Instant::now();
    let name = match args.name {
        Some(name) => name,
        None => args
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| Error::invalid_argument("give the upload a --name"))?,
    };
    let mut file =
        File::open(&args.file).map_err(|e| Error::io("opening the file to upload", e).in_file(&args.file))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("reading the file to upload", e).in_file(&args.file))?;
    if !meta.is_file() {
        return Err(Error::invalid_argument("not a regular file").in_file(&args.file));
    }
    let bar = ProgressReport::new(common);
    let stored = library.upload(account, &name, &mut file, Some(meta.len()), &bar.control(cancel));
    bar.finish();
    let report = UploadReport {
        account: account.to_string(),
        name,
        size: stored?,
        seconds: start.elapsed().as_secs_f64(),
    };
    if common.json {
        print_json(&report)?;
    } else {
        println!(
            "Uploaded {} to your incoming area as {:?} ({})",
            args.file.display(),
            report.name,
            format_size(report.size)
        );
    }
    Ok(0)
}

/// Runs a registration or snapshot: prints the `creating` record at once, then the result.
fn create(
    json: bool,
    common: &Common,
    cancel: Arc<AtomicBool>,
    call: impl FnOnce(Control, &mut dyn FnMut(&ImageRecord)) -> Result<ImageRecord>,
    dedup: impl FnOnce() -> Option<DedupStats>,
) -> Result<u8> {
    let hold = std::env::var(HOLD_CREATING_ENV)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis);
    let bar = ProgressReport::new(common);
    let mut on_created = |record: &ImageRecord| {
        let _ = print_records(json, record);
        if let Some(hold) = hold {
            std::thread::sleep(hold);
        }
    };
    let result = call(bar.control(cancel), &mut on_created);
    bar.finish();
    let image = result?;
    if !json {
        println!();
    }
    match dedup() {
        // A deduplicated registration also says what it stored and what it reused.
        Some(stats) if json => {
            let mut value = serde_json::to_value(&image).map_err(json_error)?;
            let counts = serde_json::to_value(stats).map_err(json_error)?;
            if let (Some(fields), Some(counts)) = (value.as_object_mut(), counts.as_object()) {
                fields.extend(counts.clone());
            }
            print_json(&value)?;
            Ok(0)
        }
        Some(stats) => {
            print_records(json, &image)?;
            println!(
                "deduplicated: {} new chunks ({}, {} stored), {} reused ({})",
                stats.new_chunks,
                format_size(stats.new_bytes),
                format_size(stats.new_stored_bytes),
                stats.reused_chunks,
                format_size(stats.reused_bytes)
            );
            Ok(0)
        }
        None => print_records(json, &image),
    }
}

fn print_records(json: bool, record: &ImageRecord) -> Result<u8> {
    if json {
        print_json(record)?;
    } else {
        println!("{}", table(std::slice::from_ref(record)));
    }
    Ok(0)
}

fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string(value).map_err(json_error)?);
    Ok(())
}

/// The listing table of the seeds: id, owner, type, created_on, status, size (MB), name.
pub fn table(images: &[ImageRecord]) -> String {
    let header = ["id", "owner", "type", "created_on", "status", "size", "name"];
    let rows: Vec<[String; 7]> = images
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.owner.clone(),
                r.display_type().to_string(),
                r.created_on.get(..10).unwrap_or(&r.created_on).to_string(),
                r.display_status().to_string(),
                r.size_mb().to_string(),
                r.display_name(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(widths) {
            text.push(' ');
            text.push_str(cell);
            text.push_str(&" ".repeat(width - cell.chars().count() + 1));
        }
        text.trim_end().to_string()
    };
    let mut lines = vec![line(header.to_vec())];
    lines.extend(
        rows.iter()
            .map(|row| line(row.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}

fn details(r: &ImageRecord) -> String {
    let size = |bytes: u64| format!("{bytes} ({})", format_size(bytes));
    let fields: Vec<(&str, String)> = vec![
        ("id", r.id.clone()),
        ("owner", r.owner.clone()),
        ("type", r.display_type().to_string()),
        ("source_type", r.source_type.to_string()),
        ("created_on", r.created_on.clone()),
        ("status", r.status.to_string()),
        ("name", r.name.clone()),
        ("description", r.description.clone()),
        ("arch", r.arch.to_string()),
        ("mode", r.mode.to_string()),
        ("public", r.public.to_string()),
        ("official", r.official.to_string()),
        ("username", r.username.clone().unwrap_or_default()),
        ("source", r.source.clone()),
        ("virtual_size", size(r.virtual_size)),
        ("disk_size", size(r.disk_size)),
        ("compressed_size", size(r.compressed_size)),
        ("format", r.format.clone().unwrap_or_default()),
        ("chunks", r.chunks.to_string()),
        ("reason", r.reason.clone().unwrap_or_default()),
        ("digest", r.digest.clone().unwrap_or_default()),
        ("source_sha256", r.source_sha256.clone().unwrap_or_default()),
    ];
    fields
        .iter()
        .map(|(key, value)| format!("{key:>15}: {value}"))
        .collect::<Vec<_>>()
        .join("\n")
}
