//! `imgpack serve` (an archive or a library image over NBD) and `imgpack overlay commit`.
//!
//! `serve --json` prints one JSON object per line: `{"event":"listening",...}` once clients can
//! connect, and `{"event":"stopped",...}` with the totals when it stops (SIGINT or SIGTERM).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use imgpack::archive::reader::{ArchiveReader, ChunkCheck};
use imgpack::convert::{DEFAULT_LEVEL, DEFAULT_MAX_COMPRESSED_SIZE};
use imgpack::library::objects::ArchiveSource;
use imgpack::library::{id::is_image_id, Library};
use imgpack::overlay::{commit, CommitOptions};
use imgpack::serve::{
    serve, Listen, ServeOptions, StatsSnapshot, DEFAULT_CACHE_SIZE, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_TCP,
};
use imgpack::units::format_size;
use imgpack::{Control, Error, Result};

use super::{print, SizeArg};

/// Arguments of `imgpack serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The archive to serve, or an image id (img-xxxxx) in the library given by --library.
    source: PathBuf,
    /// Listen on this Unix socket.
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    socket: Option<PathBuf>,
    /// Listen on this TCP address [default: 127.0.0.1:10809, loopback only].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// The export's name (clients ask for it; "" by default).
    #[arg(long, default_value = "", value_name = "NAME")]
    export_name: String,
    /// Make the export writable: writes go to this copy-on-write overlay file (created if
    /// missing, reused if it belongs to the same archive).
    #[arg(long, value_name = "FILE")]
    overlay: Option<PathBuf>,
    /// Bytes of decoded chunks to keep in memory.
    #[arg(long, default_value_t = SizeArg(DEFAULT_CACHE_SIZE))]
    cache_size: SizeArg,
    /// Simultaneous connections accepted.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Close a connection that sends no request for this many seconds (0: never, e.g. for a
    /// VM's disk whose client does not reconnect).
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs(), value_name = "SECONDS")]
    idle_timeout: u64,
    /// Seconds a client has for its whole handshake, from connecting to choosing the export.
    #[arg(long, default_value_t = DEFAULT_HANDSHAKE_TIMEOUT.as_secs(), value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    handshake_timeout: u64,
    /// Decoder threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Check each chunk's SHA-256 (version 2 archives) as well as its crc before serving it:
    /// about as much CPU again as decompressing it (`imgpack verify` checks them all).
    #[arg(long)]
    check_sha256: bool,
    /// SOURCE is an image id in this library [default: $IMGPACK_LIBRARY when SOURCE looks
    /// like an image id and is not a file].
    #[arg(long, value_name = "DIR")]
    library: Option<PathBuf>,
    /// Your account id, for a library image [default: $IMGPACK_ACCOUNT].
    #[arg(long, value_name = "ACCOUNT")]
    account: Option<String>,
    /// Print JSON events (listening, stopped) instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `imgpack overlay`.
#[derive(Debug, Args)]
pub struct OverlayArgs {
    #[command(subcommand)]
    command: OverlayCommand,
}

#[derive(Debug, Subcommand)]
enum OverlayCommand {
    /// Write a base archive plus an overlay's changes into a new archive.
    Commit(CommitArgs),
}

#[derive(Debug, Args)]
struct CommitArgs {
    /// The overlay file (`serve --overlay`).
    overlay: PathBuf,
    /// The archive the overlay was served over.
    #[arg(long, value_name = "ARCHIVE")]
    base: PathBuf,
    /// The new archive.
    #[arg(short, long)]
    output: PathBuf,
    /// zstd compression level (1-19).
    #[arg(long, default_value_t = DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Listening<'a> {
    event: &'static str,
    uri: &'a str,
    source: String,
    export_name: &'a str,
    virtual_size: u64,
    disk_size: u64,
    writable: bool,
    overlay: Option<String>,
}

#[derive(Serialize)]
struct Stopped {
    event: &'static str,
    virtual_size: u64,
    #[serde(flatten)]
    stats: StatsSnapshot,
}

/// Runs `imgpack serve`.
pub fn run_serve(args: ServeArgs, cancel: Arc<AtomicBool>) -> Result<u8> {
    let (archive, source) = open_source(&args)?;
    let listen = match (&args.socket, args.listen) {
        (Some(path), _) => Listen::Unix(path.clone()),
        (None, Some(addr)) => Listen::Tcp(addr),
        (None, None) => Listen::Tcp(DEFAULT_TCP.parse().expect("a valid address")),
    };
    let (virtual_size, disk_size) = (archive.virtual_size(), archive.disk_size());
    let options = ServeOptions {
        listen,
        export_name: args.export_name.clone(),
        cache_size: args.cache_size.0,
        threads: args.threads,
        chunk_check: if args.check_sha256 {
            ChunkCheck::Full
        } else {
            ChunkCheck::CrcOnly
        },
        max_connections: args.max_connections,
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        control: Control {
            cancel: Some(cancel),
            progress: None,
        },
        ..ServeOptions::default()
    };
    let server = serve(archive, args.overlay.as_deref(), options)?;
    if server.cache_size() > args.cache_size.0 {
        eprintln!(
            "imgpack: warning: --cache-size {} cannot hold {} of this archive's chunks; using {}",
            format_size(args.cache_size.0),
            imgpack::serve::cache::MIN_CACHED_CHUNKS,
            format_size(server.cache_size()),
        );
    }
    let listening = Listening {
        event: "listening",
        uri: server.uri(),
        source,
        export_name: &args.export_name,
        virtual_size,
        disk_size,
        writable: args.overlay.is_some(),
        overlay: args.overlay.as_ref().map(|p| p.display().to_string()),
    };
    print(args.json, &listening, || {
        format!(
            "serving {} (virtual {}, data {}){} at {}",
            listening.source,
            format_size(virtual_size),
            format_size(disk_size),
            if listening.writable {
                ", writable through the overlay"
            } else {
                ", read-only"
            },
            listening.uri
        )
    })?;
    // Whoever waits for the URI (a script, a test) must see it now, not at exit.
    std::io::stdout()
        .flush()
        .map_err(|e| Error::io("writing standard output", e))?;
    let stats = server.run()?;
    let stopped = Stopped {
        event: "stopped",
        virtual_size,
        stats,
    };
    print(args.json, &stopped, || {
        format!(
            "stopped: {} connections, {} requests, {} served ({:.1}% of the disk), {} chunks decoded ({} read ahead, {} fetched), {} cache hits, {} misses, {} written",
            stats.connections,
            stats.requests,
            format_size(stats.bytes_served),
            if virtual_size == 0 { 0.0 } else { stats.bytes_served as f64 * 100.0 / virtual_size as f64 },
            stats.chunks_decoded,
            stats.chunks_read_ahead,
            format_size(stats.bytes_fetched),
            stats.cache_hits,
            stats.cache_misses,
            format_size(stats.bytes_written),
        )
    })?;
    Ok(0)
}

/// The archive to serve and how to name it: a file, or a library image the account may use.
fn open_source(args: &ServeArgs) -> Result<(ArchiveReader<ArchiveSource>, String)> {
    let text = args.source.to_string_lossy();
    let library = args.library.clone().or_else(|| {
        (is_image_id(&text) && !args.source.exists())
            .then(|| std::env::var_os("IMGPACK_LIBRARY").map(PathBuf::from))
            .flatten()
    });
    let Some(root) = library else {
        let source = ArchiveSource::open(&args.source)?;
        let archive = ArchiveReader::open(source).map_err(|e| e.in_file(&args.source))?;
        return Ok((archive, args.source.display().to_string()));
    };
    let account = args
        .account
        .clone()
        .or_else(|| std::env::var("IMGPACK_ACCOUNT").ok())
        .ok_or_else(|| {
            Error::invalid_argument("no account: give --account acc-xxxxx or set IMGPACK_ACCOUNT")
        })?;
    let options = super::images::library_options(None)?;
    let library = Library::open(&root, &options)?;
    let (record, archive) = library.serve_source(&account, &text)?;
    Ok((archive, record.id))
}

/// Runs `imgpack overlay ...`.
pub fn run_overlay(args: OverlayArgs, cancel: Arc<AtomicBool>) -> Result<u8> {
    match args.command {
        OverlayCommand::Commit(a) => {
            let options = CommitOptions {
                level: a.level,
                max_compressed_size: DEFAULT_MAX_COMPRESSED_SIZE,
                control: Control {
                    cancel: Some(cancel),
                    progress: None,
                },
                ..CommitOptions::default()
            };
            let report = commit(&a.overlay, &a.base, &a.output, &options)?;
            print(a.json, &report, || {
                format!(
                    "{} over {} -> {}: virtual {}, data {}, archive {}, {} chunks, {:.2} s",
                    report.overlay,
                    report.base,
                    report.output,
                    format_size(report.virtual_size),
                    format_size(report.disk_size),
                    format_size(report.compressed_size),
                    report.chunks,
                    report.seconds
                )
            })?;
            Ok(0)
        }
    }
}
