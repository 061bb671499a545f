//! `batch`: convert many images at once, keeping every core busy without oversubscribing.
//!
//! A few job slots (threads) take files from a queue; every conversion does its heavy work
//! on the one shared rayon pool, so small images overlap each other's serial parts (opening,
//! index, fsync) while a large image still spreads over every core. Outputs are named after
//! their inputs (`disk.qcow2.xz` -> `disk.imgpack`), with collisions resolved in input order.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::control::{Control, Progress};
use crate::convert::{convert, ConvertOptions};
use crate::error::{Error, ErrorKind, IoContext, Result};

/// How many files are converted at once by default.
pub const DEFAULT_JOBS: usize = 2;

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Files converted at the same time. Default 2.
    pub jobs: usize,
    /// Keep starting files after one fails. Default false: stop starting new files after the
    /// first failure and finish those in flight.
    pub continue_on_error: bool,
    /// Options for each conversion; its `control.cancel` stops the whole batch (its
    /// `control.progress` is not used: see `progress`).
    pub convert: ConvertOptions,
    /// Receives the batch's combined progress.
    pub progress: Option<Arc<dyn BatchProgressSink>>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            jobs: DEFAULT_JOBS,
            continue_on_error: false,
            convert: ConvertOptions::default(),
            progress: None,
        }
    }
}

impl std::fmt::Debug for dyn BatchProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchProgressSink")
    }
}

/// The state of a batch, for a progress display.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSnapshot {
    /// Input bytes handled so far (finished files plus the share done of those in flight).
    pub done_bytes: u64,
    /// Input bytes in all.
    pub total_bytes: u64,
    /// Files finished (converted or failed).
    pub finished_files: usize,
    /// Files in all.
    pub total_files: usize,
    /// Names of the files being converted now.
    pub in_flight: Vec<String>,
}

/// Receives [`BatchSnapshot`]s while a batch runs. Called from worker threads.
pub trait BatchProgressSink: Send + Sync {
    /// The batch's state changed.
    fn update(&self, snapshot: &BatchSnapshot);
}

/// What happened to one file.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileReport {
    /// The input file.
    pub input: String,
    /// The archive written, or that would have been written.
    pub output: String,
    /// `"ok"`, `"failed"`, or `"skipped"` (not started after a failure or interruption).
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Set when the output name was changed to avoid a collision, saying with what.
    pub renamed: Option<String>,
    /// Input format (with layers), as in `convert --json`.
    pub format: Option<String>,
    /// Virtual size.
    pub virtual_size: Option<u64>,
    /// Bytes of non-zero blocks.
    pub disk_size: Option<u64>,
    /// Archive size.
    pub compressed_size: Option<u64>,
    /// Chunk size.
    pub chunk_size: Option<u64>,
    /// Stored chunks.
    pub chunks: Option<u64>,
    /// Wall time of this file's conversion.
    pub seconds: Option<f64>,
}

/// The outcome of a batch.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BatchReport {
    /// One record per input file, in input order.
    pub files: Vec<FileReport>,
    /// Files converted.
    pub ok: usize,
    /// Files that failed.
    pub failed: usize,
    /// Files not started.
    pub skipped: usize,
    /// Whether the batch was interrupted.
    pub interrupted: bool,
    /// Wall time of the whole batch.
    pub seconds: f64,
}

/// Expands the inputs: files stay, directories become their regular files (sorted, not
/// recursive). Refuses inputs that do not exist.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).context("reading the input", input)?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .context("listing the directory", input)?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// File-name endings dropped when naming outputs, innermost last.
const IMAGE_EXTENSIONS: [&str; 14] = [
    "gz", "xz", "zst", "zstd", "qcow2", "qcow", "raw", "img", "vmdk", "vhd", "vhdx", "vdi", "bin", "imgpack",
];

/// The archive name for an input: its file name without image and compression extensions,
/// plus `.imgpack` (`disk.qcow2.xz` -> `disk.imgpack`).
pub fn output_name(input: &Path) -> String {
    let mut name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    while let Some((stem, ext)) = name.rsplit_once('.') {
        if stem.is_empty() || !IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()) {
            break;
        }
        name = stem.to_string();
    }
    if name.is_empty() {
        name = "image".into();
    }
    format!("{name}.imgpack")
}

/// Output paths for `inputs` in `out_dir`, in input order; a name already taken gets `-2`,
/// `-3`, ... before `.imgpack`. Returns each path and, when renamed, a note saying why.
pub fn plan_outputs(inputs: &[PathBuf], out_dir: &Path) -> Vec<(PathBuf, Option<String>)> {
    let mut taken = HashSet::new();
    inputs
        .iter()
        .map(|input| {
            let wanted = output_name(input);
            let stem = wanted.trim_end_matches(".imgpack").to_string();
            let mut name = wanted.clone();
            let mut n = 1;
            while !taken.insert(name.clone()) {
                n += 1;
                name = format!("{stem}-{n}.imgpack");
            }
            let note = (name != wanted).then(|| format!("{wanted} was taken by an earlier input"));
            (out_dir.join(name), note)
        })
        .collect()
}

/// Converts every file in `inputs` into `out_dir`.
pub fn run(inputs: &[PathBuf], out_dir: &Path, options: &BatchOptions) -> Result<BatchReport> {
    let start = Instant::now();
    if options.jobs == 0 {
        return Err(Error::invalid_argument(
            "the number of files converted at once (jobs) must be at least 1",
        ));
    }
    let files = expand_inputs(inputs)?;
    std::fs::create_dir_all(out_dir).context("creating the output directory", out_dir)?;
    let plan = plan_outputs(&files, out_dir);
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .collect();
    let tracker = Arc::new(BatchProgress::new(
        sizes.iter().sum(),
        files.len(),
        options.progress.clone(),
    ));
    let cancel = options.convert.control.cancel.clone().unwrap_or_default();
    let stop_starting = AtomicBool::new(false);
    let next = Mutex::new(0usize);
    let results: Mutex<BTreeMap<usize, FileReport>> = Mutex::new(BTreeMap::new());

    std::thread::scope(|scope| {
        for _ in 0..options.jobs.min(files.len().max(1)) {
            scope.spawn(|| loop {
                if stop_starting.load(Ordering::SeqCst) || cancel.load(Ordering::Relaxed) {
                    return;
                }
                let i = {
                    let mut next = next.lock().expect("queue lock");
                    if *next >= files.len() {
                        return;
                    }
                    *next += 1;
                    *next - 1
                };
                let (output, renamed) = &plan[i];
                tracker.start(i, &files[i], sizes[i]);
                let mut convert_options = options.convert.clone();
                convert_options.control = Control {
                    cancel: Some(cancel.clone()),
                    progress: Some(Arc::new(FileProgress {
                        tracker: tracker.clone(),
                        index: i,
                        file_size: sizes[i],
                    })),
                };
                let outcome = convert(&files[i], output, &convert_options);
                tracker.finish(i, sizes[i]);
                let mut report = blank_report(&files[i], output, renamed.clone());
                match outcome {
                    Ok(r) => {
                        report.status = "ok".into();
                        report.format = Some(r.format);
                        report.virtual_size = Some(r.virtual_size);
                        report.disk_size = Some(r.disk_size);
                        report.compressed_size = Some(r.compressed_size);
                        report.chunk_size = Some(r.chunk_size);
                        report.chunks = Some(r.chunks);
                        report.seconds = Some(r.seconds);
                    }
                    Err(e) => {
                        if !options.continue_on_error || e.kind() == ErrorKind::Interrupted {
                            stop_starting.store(true, Ordering::SeqCst);
                        }
                        report.status = "failed".into();
                        report.error = Some(e.to_string());
                    }
                }
                results.lock().expect("results lock").insert(i, report);
            });
        }
    });

    let mut results = results.into_inner().expect("results lock");
    let files: Vec<FileReport> = (0..files.len())
        .map(|i| {
            results.remove(&i).unwrap_or_else(|| {
                let mut r = blank_report(&files[i], &plan[i].0, plan[i].1.clone());
                r.status = "skipped".into();
                r
            })
        })
        .collect();
    let count = |s: &str| files.iter().filter(|f| f.status == s).count();
    Ok(BatchReport {
        ok: count("ok"),
        failed: count("failed"),
        skipped: count("skipped"),
        interrupted: cancel.load(Ordering::Relaxed),
        files,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn blank_report(input: &Path, output: &Path, renamed: Option<String>) -> FileReport {
    FileReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        status: String::new(),
        error: None,
        renamed,
        format: None,
        virtual_size: None,
        disk_size: None,
        compressed_size: None,
        chunk_size: None,
        chunks: None,
        seconds: None,
    }
}

/// Combined progress of a batch, in input-file bytes.
struct BatchProgress {
    total: u64,
    files: usize,
    state: Mutex<ProgressState>,
    sink: Option<Arc<dyn BatchProgressSink>>,
}

#[derive(Default)]
struct ProgressState {
    finished_bytes: u64,
    finished_files: usize,
    in_flight: BTreeMap<usize, (String, u64)>,
}

impl BatchProgress {
    fn new(total: u64, files: usize, sink: Option<Arc<dyn BatchProgressSink>>) -> Self {
        BatchProgress {
            total,
            files,
            state: Mutex::new(ProgressState::default()),
            sink,
        }
    }

    fn start(&self, index: usize, path: &Path, _size: u64) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.state
            .lock()
            .expect("progress lock")
            .in_flight
            .insert(index, (name, 0));
        self.publish();
    }

    fn advance(&self, index: usize, done: u64) {
        if let Some(entry) = self
            .state
            .lock()
            .expect("progress lock")
            .in_flight
            .get_mut(&index)
        {
            entry.1 = done;
        }
        self.publish();
    }

    fn finish(&self, index: usize, size: u64) {
        {
            let mut state = self.state.lock().expect("progress lock");
            state.in_flight.remove(&index);
            state.finished_bytes += size;
            state.finished_files += 1;
        }
        self.publish();
    }

    fn publish(&self) {
        if let Some(sink) = &self.sink {
            let snapshot = {
                let state = self.state.lock().expect("progress lock");
                BatchSnapshot {
                    done_bytes: state.finished_bytes + state.in_flight.values().map(|v| v.1).sum::<u64>(),
                    total_bytes: self.total,
                    finished_files: state.finished_files,
                    total_files: self.files,
                    in_flight: state.in_flight.values().map(|(name, _)| name.clone()).collect(),
                }
            };
            sink.update(&snapshot);
        }
    }
}

/// Per-file progress, scaled from the virtual disk to the input file's size.
struct FileProgress {
    tracker: Arc<BatchProgress>,
    index: usize,
    file_size: u64,
}

impl Progress for FileProgress {
    fn update(&self, done: u64, total: Option<u64>, _disk_size: u64) {
        let scaled = match total {
            Some(t) if t > 0 => (self.file_size as f64 * (done as f64 / t as f64)) as u64,
            _ => done.min(self.file_size),
        };
        self.tracker.advance(self.index, scaled.min(self.file_size));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_drop_image_and_compression_extensions() {
        for (input, want) in [
            ("disk.qcow2.xz", "disk.imgpack"),
            ("/a/b/ubuntu-22.04.img.gz", "ubuntu-22.04.imgpack"),
            ("slackware.img", "slackware.imgpack"),
            ("notes.txt", "notes.txt.imgpack"),
            (".raw", ".raw.imgpack"),
            ("DISK.RAW.ZST", "DISK.imgpack"),
        ] {
            assert_eq!(output_name(Path::new(input)), want, "{input}");
        }
    }

    #[test]
    fn collisions_get_numbered_in_input_order() {
        let inputs: Vec<PathBuf> = ["a/disk.raw", "b/disk.qcow2", "disk.raw.gz", "other.img"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let plan = plan_outputs(&inputs, Path::new("out"));
        let names: Vec<String> = plan.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "out/disk.imgpack",
                "out/disk-2.imgpack",
                "out/disk-3.imgpack",
                "out/other.imgpack"
            ]
        );
        assert!(plan[0].1.is_none());
        assert!(plan[1].1.as_deref().unwrap().contains("disk.imgpack"));
    }
}
