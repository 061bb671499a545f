//! `imgpack batch`: many images into a directory of archives, with one progress display and a
//! summary table (or one JSON object) at the end.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{mb_per_s, print, Common, EncodeArgs};
use imgpack::batch::{BatchOptions, BatchProgressSink, BatchReport, BatchSnapshot};
use imgpack::units::format_size;
use imgpack::{Control, Error, ErrorKind, Result};

#[derive(Debug, Args)]
pub(crate) struct BatchArgs {
    /// Images to convert; a directory means every regular file in it.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Where the archives go (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
    /// Files converted at the same time (they share one pool of worker threads).
    #[arg(long, default_value_t = imgpack::batch::DEFAULT_JOBS)]
    jobs: usize,
    /// Keep converting the other files after one fails.
    #[arg(long)]
    continue_on_error: bool,
    #[command(flatten)]
    encode: EncodeArgs,
    #[command(flatten)]
    common: Common,
}

pub(crate) fn run(args: BatchArgs, cancel: Arc<AtomicBool>) -> Result<u8> {
    if let Some(threads) = args.common.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| Error::new(ErrorKind::Io, "cannot start worker threads").with_source(e))?;
    }
    let bar = (!args.common.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            )
            .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let options = BatchOptions {
        jobs: args.jobs,
        continue_on_error: args.continue_on_error,
        // Threads come from the one shared pool, so no per-file pool here.
        convert: args.encode.options(
            None,
            Control {
                cancel: Some(cancel),
                progress: None,
            },
        ),
        progress: bar
            .clone()
            .map(|bar| Arc::new(BarSink { bar }) as Arc<dyn BatchProgressSink>),
    };
    let report = imgpack::batch::run(&args.inputs, &args.out_dir, &options);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = report?;
    print(args.common.json, &report, || table(&report))?;
    Ok(if report.interrupted {
        130
    } else if report.failed > 0 {
        1
    } else {
        0
    })
}

struct BarSink {
    bar: ProgressBar,
}

impl BatchProgressSink for BarSink {
    fn update(&self, s: &BatchSnapshot) {
        self.bar.set_length(s.total_bytes);
        self.bar.set_position(s.done_bytes);
        self.bar.set_message(format!(
            "{}/{} files; now: {}",
            s.finished_files,
            s.total_files,
            s.in_flight.join(", ")
        ));
    }
}

fn table(report: &BatchReport) -> String {
    let header = [
        "file",
        "format",
        "virtual",
        "disk",
        "compressed",
        "ratio",
        "seconds",
        "MB/s",
        "status",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let size = |v: Option<u64>| v.map(format_size).unwrap_or_else(|| "-".into());
    for f in &report.files {
        let ratio = match (f.disk_size, f.compressed_size) {
            (Some(d), Some(c)) if c > 0 => format!("{:.2}x", d as f64 / c as f64),
            _ => "-".into(),
        };
        rows.push(vec![
            f.input.clone(),
            f.format.clone().unwrap_or_else(|| "-".into()),
            size(f.virtual_size),
            size(f.disk_size),
            size(f.compressed_size),
            ratio,
            f.seconds.map(|s| format!("{s:.2}")).unwrap_or_else(|| "-".into()),
            match (f.disk_size, f.seconds) {
                (Some(d), Some(s)) => format!("{:.0}", mb_per_s(d, s)),
                _ => "-".into(),
            },
            f.status.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect();
    for f in &report.files {
        if let Some(note) = &f.renamed {
            out.push(format!("note: {} -> {} ({note})", f.input, f.output));
        }
        if let Some(error) = &f.error {
            out.push(format!("failed: {}: {error}", f.input));
        }
    }
    out.push(format!(
        "{} converted, {} failed, {} skipped{} in {:.2} s",
        report.ok,
        report.failed,
        report.skipped,
        if report.interrupted { " (interrupted)" } else { "" },
        report.seconds
    ));
    out.join("\n")
}
