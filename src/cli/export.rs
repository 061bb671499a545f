//! `imgpack export`: an archive out as raw, qcow2, VMDK, VHD or VHDX.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Args;

use imgpack::export::{
    CompressionType, ExportFormat, Preallocation, Qcow2Compat, Subformat, DEFAULT_CLUSTER_SIZE,
};
use imgpack::units::format_size;
use imgpack::{Control, ExportOptions, ExportReport, Result};

use super::{mb_per_s, print, Common, ProgressReport, SizeArg};

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The archive to read.
    archive: PathBuf,
    /// The file to write (- writes standard output: raw and vmdk streamOptimized only).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    format: FormatArgs,
    #[command(flatten)]
    common: Common,
}

/// The output format and its options: shared by `export` and `images download`.
#[derive(Debug, Args)]
pub(crate) struct FormatArgs {
    /// Output format: raw, qcow2, vmdk, vhd (or vpc), vhdx, imgpack (the archive itself, byte for byte).
    #[arg(short = 'O', long = "format", default_value = "raw")]
    format: ExportFormat,
    /// vmdk: streamOptimized (default) or monolithicSparse; vhd, vhdx: dynamic (default) or fixed.
    #[arg(long)]
    subformat: Option<Subformat>,
    /// qcow2: 1.1 (version 3, the default) or 0.10 (version 2).
    #[arg(long)]
    compat: Option<Qcow2Compat>,
    /// qcow2: cluster size, a power of two from 512 to 2M.
    #[arg(long)]
    cluster_size: Option<SizeArg>,
    /// qcow2: compress clusters (in parallel on every core).
    #[arg(short = 'c', long = "compress")]
    compress: bool,
    /// qcow2 with -c: zstd (default for version 3) or zlib (for older readers).
    #[arg(long)]
    compression_type: Option<CompressionType>,
    /// qcow2: off (default) or metadata (every cluster allocated and mapped).
    #[arg(long)]
    preallocation: Option<Preallocation>,
    /// vhd: round the virtual size up to a whole MiB, as Azure requires (reported).
    #[arg(long, alias = "azure")]
    force_size: bool,
    /// Also print the SHA-256 of the written file (costs a pass over all of it, holes included).
    #[arg(long)]
    sha256: bool,
}

impl FormatArgs {
    /// Export options from these arguments.
    pub(crate) fn options(&self, threads: Option<usize>, control: Control) -> ExportOptions {
        ExportOptions {
            format: self.format,
            subformat: self.subformat,
            compat: self.compat.unwrap_or_default(),
            cluster_size: self.cluster_size.map_or(DEFAULT_CLUSTER_SIZE, |s| s.0),
            compress: self.compress,
            compression_type: self.compression_type,
            preallocation: self.preallocation.unwrap_or_default(),
            force_size: self.force_size,
            sha256: self.sha256,
            threads,
            control,
        }
    }
}

pub(crate) fn run(args: ExportArgs, cancel: Arc<AtomicBool>) -> Result<u8> {
    let bar = ProgressReport::new(&args.common);
    let options = args.format.options(args.common.threads, bar.control(cancel));
    let report = imgpack::export(&args.archive, &args.output, &options);
    bar.finish();
    report_export(&report?, args.common.json)?;
    Ok(0)
}

/// Prints an export's report; when the disk went to standard output, to standard error.
pub(crate) fn report_export(report: &ExportReport, json: bool) -> Result<()> {
    let summary = || {
        let mut line = format!(
            "{} -> {} ({}{}): virtual {}, written {}, {:.2} s, {:.0} MB/s",
            report.input,
            report.output,
            report.format,
            report
                .subformat
                .as_deref()
                .map(|s| format!(" {s}"))
                .unwrap_or_default(),
            format_size(report.virtual_size),
            format_size(report.bytes_written),
            report.seconds,
            mb_per_s(report.bytes_written, report.seconds),
        );
        if let Some(note) = &report.note {
            line.push_str(&format!("\nnote: {note}"));
        }
        if let Some(sha256) = &report.sha256 {
            line.push_str(&format!("\n{sha256}  {}", report.output));
        }
        line
    };
    if report.output == "-" {
        let text = if json {
            serde_json::to_string(report).map_err(super::json_error)?
        } else {
            summary()
        };
        if json || report.sha256.is_some() || report.note.is_some() {
            eprintln!("{text}");
        }
        return Ok(());
    }
    print(json, report, summary)
}
