//! The command-line interface: argument parsing and output formatting over library calls.
//! `main.rs` only calls [`run`]; everything a registrar might need is in the library instead.

mod export;
mod images;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod batch;
mod serve;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use imgpack::convert::{
    DEFAULT_CHUNK_SIZE, DEFAULT_LEVEL, DEFAULT_MAX_COMPRESSED_SIZE, DEFAULT_MAX_VIRTUAL_SIZE,
};

use imgpack::units::{format_size, parse_size};
use imgpack::{
    Control, ConvertOptions, Error, ExtractOptions, InfoOptions, InputLimits, Progress, ReadMode, Result,
};

/// imgpack: convert disk images into compact, chunked, zstd-compressed sparse archives.
#[derive(Debug, Parser)]
#[command(name = "imgpack", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert a disk image (raw or qcow2; - for standard input) into an .imgpack archive.
    Convert(ConvertArgs),
    /// Write the raw disk held in an archive (sparse file, or - for standard output).
    Extract(ExtractArgs),
    /// Describe an image or archive.
    Info(InfoArgs),
    /// Decode every chunk of an archive and check every crc; exit 0 only if intact.
    Verify(VerifyArgs),
    /// Print the image digest (sha256-tree) of any image or archive, without converting it.
    Digest(DigestArgs),
    /// Write the disk held in an archive as raw, qcow2, vmdk, vhd or vhdx.
    Export(export::ExportArgs),
    /// Convert many images (files, or directories of them) into a directory of archives.
    Batch(batch::BatchArgs),
    /// The image library: register, list, show, update, destroy and build from images.
    Images(images::ImagesArgs),
    /// Serve an archive (or a library image) over NBD, lazily, optionally writable through an overlay.
    Serve(serve::ServeArgs),
    /// Copy-on-write overlays of served archives: commit one into a new archive.
    Overlay(serve::OverlayArgs),
}

#[derive(Debug, Args)]
pub(crate) struct Common {
    /// Print one JSON object on standard output instead of a human summary.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
}

#[derive(Debug, Args)]
struct ConvertArgs {
    /// The image to convert (- reads standard input).
    input: PathBuf,
    /// The archive to write (- writes standard output).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    encode: EncodeArgs,
    #[command(flatten)]
    common: Common,
}

/// How archives are made: shared by `convert` and `batch`.
#[derive(Debug, Args)]
pub(crate) struct EncodeArgs {
    /// zstd compression level (1-19).
    #[arg(long, default_value_t = DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
    /// Chunk size, a power of two from 64K to 64M.
    #[arg(long, default_value_t = SizeArg(DEFAULT_CHUNK_SIZE))]
    chunk_size: SizeArg,
    /// Refuse (while writing) an archive larger than this.
    #[arg(long, default_value_t = SizeArg(DEFAULT_MAX_COMPRESSED_SIZE))]
    max_compressed_size: SizeArg,
    /// Refuse images whose virtual disk is larger than this.
    #[arg(long, default_value_t = SizeArg(DEFAULT_MAX_VIRTUAL_SIZE))]
    max_virtual_size: SizeArg,
    /// How raw inputs are read.
    #[arg(long, value_enum, default_value_t = ReadMode::default())]
    read_mode: ReadMode,
    /// Directory for spill files of layered inputs (default: the output's directory; for
    /// standard output, the system's temporary directory).
    #[arg(long)]
    temp_dir: Option<PathBuf>,
}

impl EncodeArgs {
    /// Conversion options from these arguments.
    pub(crate) fn options(&self, threads: Option<usize>, control: Control) -> ConvertOptions {
        ConvertOptions {
            level: self.level,
            chunk_size: self.chunk_size.0,
            threads,
            max_compressed_size: self.max_compressed_size.0,
            limits: InputLimits {
                max_virtual_size: self.max_virtual_size.0,
            },
            read_mode: self.read_mode,
            temp_dir: self.temp_dir.clone(),
            control,
            dedup: None,
        }
    }
}

#[derive(Debug, Args)]
struct ExtractArgs {
    /// The archive to read.
    archive: PathBuf,
    /// The raw disk to write (- writes standard output).
    #[arg(short, long)]
    output: PathBuf,
    /// Also print the SHA-256 of the raw disk written, as sha256sum would (a sequential pass
    /// over every byte, holes included).
    #[arg(long)]
    sha256: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct InfoArgs {
    /// The image or archive.
    file: PathBuf,
    /// Report images with a larger virtual disk as refused.
    #[arg(long, default_value_t = SizeArg(DEFAULT_MAX_VIRTUAL_SIZE))]
    max_virtual_size: SizeArg,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The archive to check.
    archive: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct DigestArgs {
    /// The image or archive (- reads standard input).
    file: PathBuf,
    /// For an archive that stores its digest: decode every chunk and recompute it instead,
    /// failing if the two differ.
    #[arg(long)]
    verify: bool,
    /// Refuse images whose virtual disk is larger than this.
    #[arg(long, default_value_t = SizeArg(DEFAULT_MAX_VIRTUAL_SIZE))]
    max_virtual_size: SizeArg,
    /// How raw inputs are read.
    #[arg(long, value_enum, default_value_t = ReadMode::default())]
    read_mode: ReadMode,
    /// Directory for spill files of layered inputs (default: the system's temporary directory).
    #[arg(long)]
    temp_dir: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

fn size_arg(text: &str) -> std::result::Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

/// A size with a default: parsed like every SIZE, and shown in `--help` with the largest
/// binary suffix that divides it exactly (`1M`, `50G`), so defaults come from the library's
/// constants rather than being written again here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SizeArg(pub(crate) u64);

impl std::str::FromStr for SizeArg {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        size_arg(text).map(SizeArg)
    }
}

impl std::fmt::Display for SizeArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let suffixes = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        match suffixes
            .iter()
            .find(|(shift, _)| self.0 != 0 && self.0.is_multiple_of(1u64 << shift))
        {
            Some((shift, suffix)) => write!(f, "{}{suffix}", self.0 >> shift),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli, cancel: Arc<AtomicBool>) -> Result<u8> {
    match cli.command {
        Command::Convert(args) => convert(args, cancel),
        Command::Extract(args) => extract(args, cancel),
        Command::Info(args) => info(args, cancel),
        Command::Verify(args) => verify(args, cancel),
        Command::Digest(args) => digest(args, cancel),
        Command::Export(args) => export::run(args, cancel),
        Command::Batch(args) => batch::run(args, cancel),
        Command::Images(args) => images::run(args, cancel),
        Command::Serve(args) => serve::run_serve(args, cancel),
        Command::Overlay(args) => serve::run_overlay(args, cancel),
    }
}

fn convert(args: ConvertArgs, cancel: Arc<AtomicBool>) -> Result<u8> {
    let bar = ProgressReport::new(&args.common);
    let options = args.encode.options(args.common.threads, bar.control(cancel));
    let report = imgpack::convert(&args.input, &args.output, &options);
    bar.finish();
    let report = report?;
    if args.output.as_os_str() == "-" {
        // Standard output holds the archive: a summary there would corrupt it. As `extract`
        // does, only `--json` reports, on standard error.
        if args.common.json {
            eprintln!("{}", serde_json::to_string(&report).map_err(json_error)?);
        }
        return Ok(0);
    }
    print(args.common.json, &report, || {
        format!(
            "{} ({}) -> {}: virtual {}, data {}, archive {} ({:.1}% of data), {} chunks, {:.2} s, {:.0} MB/s",
            report.input,
            report.format,
            report.output,
            format_size(report.virtual_size),
            format_size(report.disk_size),
            format_size(report.compressed_size),
            percent(report.compressed_size, report.disk_size),
            report.chunks,
            report.seconds,
            mb_per_s(report.disk_size, report.seconds),
        )
    })?;
    Ok(0)
}

fn extract(args: ExtractArgs, cancel: Arc<AtomicBool>) -> Result<u8> {
    let bar = ProgressReport::new(&args.common);
    let options = ExtractOptions {
        threads: args.common.threads,
        sha256: args.sha256,
        control: bar.control(cancel),
    };
    let report = imgpack::extract(&args.archive, &args.output, &options);
    bar.finish();
    let report = report?;
    // The sum as sha256sum prints it; on standard error when standard output holds the disk.
    let sum_line = report
        .sha256
        .as_ref()
        .map(|sum| format!("{sum}  {}", report.output));
    if args.output.as_os_str() == "-" && !args.common.json {
        if let Some(line) = sum_line {
            eprintln!("{line}");
        }
        return Ok(0); // standard output holds the disk; say nothing more there
    }
    let summary = || {
        format!(
            "{} -> {}: virtual {}, data {}, {:.2} s, {:.0} MB/s",
            report.input,
            report.output,
            format_size(report.virtual_size),
            format_size(report.disk_size),
            report.seconds,
            mb_per_s(report.disk_size, report.seconds),
        )
    };
    if args.output.as_os_str() == "-" {
        eprintln!("{}", serde_json::to_string(&report).map_err(json_error)?);
        return Ok(0);
    }
    print(args.common.json, &report, || match &sum_line {
        Some(line) => format!("{}\n{line}", summary()),
        None => summary(),
    })?;
    Ok(0)
}

fn digest(args: DigestArgs, cancel: Arc<AtomicBool>) -> Result<u8> {
    let bar = ProgressReport::new(&args.common);
    let options = imgpack::DigestOptions {
        threads: args.common.threads,
        limits: InputLimits {
            max_virtual_size: args.max_virtual_size.0,
        },
        read_mode: args.read_mode,
        temp_dir: args.temp_dir.clone(),
        verify: args.verify,
        control: bar.control(cancel),
    };
    let report = imgpack::digest(&args.file, &options);
    bar.finish();
    let report = report?;
    // Like sha256sum: the digest, two spaces, the file.
    print(args.common.json, &report, || {
        format!("{}  {}", report.digest, report.input)
    })?;
    Ok(0)
}

fn info(args: InfoArgs, cancel: Arc<AtomicBool>) -> Result<u8> {
    let options = InfoOptions {
        limits: InputLimits {
            max_virtual_size: args.max_virtual_size.0,
        },
        control: Control {
            cancel: Some(cancel),
            progress: None,
        },
    };
    let info = imgpack::info(&args.file, &options)?;
    print(args.common.json, &info, || {
        let mut lines = vec![format!("{}: {}", info.input, info.format)];
        let mut line = |name: &str, value: Option<u64>| {
            if let Some(v) = value {
                lines.push(format!("  {name:<16} {} ({v} bytes)", format_size(v)));
            }
        };
        line("file size", Some(info.file_size));
        line("virtual size", info.virtual_size);
        line("disk size", info.disk_size);
        line("compressed size", info.compressed_size);
        line("chunk size", info.chunk_size);
        if let Some(chunks) = info.chunks {
            lines.push(format!("  {:<16} {chunks}", "stored chunks"));
        }
        if let Some(digest) = &info.digest {
            lines.push(format!("  {:<16} {digest}", "digest"));
        }
        for (key, value) in &info.details {
            lines.push(format!("  {key:<16} {value}"));
        }
        lines.push(format!(
            "  {:<16} {}",
            "convert",
            info.refusal
                .as_deref()
                .map_or("accepted".to_string(), |r| format!("refused: {r}"))
        ));
        lines.join("\n")
    })?;
    Ok(0)
}

fn verify(args: VerifyArgs, cancel: Arc<AtomicBool>) -> Result<u8> {
    let bar = ProgressReport::new(&args.common);
    let options = imgpack::VerifyOptions {
        threads: args.common.threads,
        control: bar.control(cancel),
    };
    let report = imgpack::verify(&args.archive, &options);
    bar.finish();
    let report = match report {
        Ok(report) => report,
        Err(e) if args.common.json && e.kind() != imgpack::ErrorKind::Interrupted => {
            #[derive(Serialize)]
            struct Failed {
                input: String,
                format: &'static str,
                ok: bool,
                error: String,
            }
            let failed = Failed {
                input: args.archive.display().to_string(),
                format: "imgpack",
                ok: false,
                error: e.to_string(),
            };
            println!("{}", serde_json::to_string(&failed).map_err(json_error)?);
            return Ok(1);
        }
        Err(e) => return Err(e),
    };
    print(args.common.json, &report, || {
        let mut lines: Vec<String> = report
            .bad_chunks
            .iter()
            .map(|b| {
                format!(
                    "bad chunk {} (stored at {}): {}",
                    b.chunk, b.stored_offset, b.error
                )
            })
            .collect();
        if report.digest_ok == Some(false) {
            lines.push("the image digest in the footer is not the content's".to_string());
        }
        lines.push(format!(
            "{}: {} ({} chunks, virtual {}, data {}, {:.2} s)",
            report.input,
            if report.ok { "OK" } else { "DAMAGED" },
            report.chunks,
            format_size(report.virtual_size),
            format_size(report.disk_size),
            report.seconds
        ));
        lines.join("\n")
    })?;
    Ok(if report.ok { 0 } else { 1 })
}

pub(crate) fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) -> Result<()> {
    let text = if json {
        serde_json::to_string(value).map_err(json_error)?
    } else {
        human()
    };
    println!("{text}");
    Ok(())
}

pub(crate) fn json_error(e: serde_json::Error) -> Error {
    Error::new(imgpack::ErrorKind::Io, "cannot encode JSON").with_source(e)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

pub(crate) fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / 1e6 / seconds
    } else {
        0.0
    }
}

/// A progress bar on standard error, shown only on a terminal and without `--quiet`.
struct ProgressReport {
    bar: Option<ProgressBar>,
}

impl ProgressReport {
    fn new(common: &Common) -> Self {
        let show = !common.quiet && std::io::stderr().is_terminal();
        let bar = show.then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                )
                .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        ProgressReport { bar }
    }

    fn control(&self, cancel: Arc<AtomicBool>) -> Control {
        Control {
            cancel: Some(cancel),
            progress: self
                .bar
                .clone()
                .map(|bar| Arc::new(BarProgress { bar }) as Arc<dyn Progress>),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

struct BarProgress {
    bar: ProgressBar,
}

impl Progress for BarProgress {
    fn update(&self, done: u64, total: Option<u64>, disk_size: u64) {
        if let Some(total) = total {
            self.bar.set_length(total);
        }
        self.bar.set_position(done);
        self.bar.set_message(format!("data {}", format_size(disk_size)));
    }
}

/// Whether the cancel flag was raised (for the exit code).
pub fn cancelled(cancel: &AtomicBool) -> bool {
    cancel.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::SizeArg;

    #[test]
    fn size_defaults_show_the_largest_exact_suffix_and_parse_back() {
        for (bytes, shown) in [
            (1u64 << 20, "1M"),
            (50 << 30, "50G"),
            (64 << 40, "64T"),
            (1536, "1536"),
            (3 << 10, "3K"),
            (0, "0"),
        ] {
            assert_eq!(SizeArg(bytes).to_string(), shown);
            assert_eq!(shown.parse::<SizeArg>(), Ok(SizeArg(bytes)));
        }
    }
}
