//! The convert floor: the CPU time zstd alone spends compressing a raw image's non-zero data,
//! in the same chunking and at the same level as `imgpack convert`, and beside it the CPU time
//! of the SHA-256 every version 2 archive records for each stored chunk (issue 14).
//!
//! ```text
//! cargo bench --bench floor -- IMAGE [--level N] [--chunk-size BYTES] [--reps N] [--threads N]
//! ```
//!
//! The image is cut as the pipeline cuts it: chunks of `--chunk-size` (1 MiB by default), holes
//! skipped with SEEK_DATA, all-zero 4 KiB blocks left out of each chunk's payload, all-zero
//! chunks not compressed at all. Each payload is compressed on this one thread with one reused
//! `zstd::bulk::Compressor` (the call imgpack's chunk encoder makes) into a reused buffer, and
//! only the compress calls are timed, with the thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`),
//! so reading, zero scanning and gathering are not counted. `--reps` compresses every payload
//! that many times and reports each pass, so a caller can take the median.
//!
//! The SHA-256 an archive requires is the chunk's, over its whole content (its zero blocks
//! included; imgpack feeds those from a static block of zeros, which costs the same as hashing
//! the bytes): each stored chunk is hashed with `sha2` (the crate and features imgpack uses, so
//! the SHA-NI path where the CPU has it) right after it is compressed, timed the same way
//! (`sha256_cpu_s`). At the default 1 MiB chunks a chunk is one leaf of the image digest, so
//! this is all the hashing a convert must do: the second floor, `(zstd_cpu_s + sha256_cpu_s) /
//! n`, is what the product now requires.
//!
//! Output, one line per pass, `key=value` separated by spaces:
//! `level=3 chunks=1402 payload_bytes=... compressed_bytes=... zstd_cpu_s=4.123 sha256_cpu_s=0.812 threads=2
//! parallel_wall_s=2.345 parallel_cpu_s=4.456`.
//! The floor of a convert on `n` cores is `zstd_cpu_s / n` (the issue's floor); `compressed_bytes`
//! is the sum of the frames, the archive's size less its header, index and footer.
//!
//! The second, physical floor (`--threads N`, default: the available cores): the same payloads,
//! gathered into memory beforehand, compressed by `N` threads at once, each taking the next
//! payload as soon as it is free (as the pipeline's workers do), each with its own reused
//! compressor. `parallel_wall_s` is the wall time from the moment all threads start to the moment
//! the last one ends; `parallel_cpu_s` the sum of their compress-call CPU times. Two zstd streams
//! sharing caches, memory bandwidth and a hypervisor's vCPUs can run slower than one each, so
//! `parallel_wall_s` may exceed `zstd_cpu_s / N`: it is what this machine can actually do, and
//! imgpack's wall time can be compared with both. `--threads 0` skips it.
//!
//! This is self-contained on purpose (std, rustix, zstd and sha2 only): the floor must not move
//! when imgpack's own code changes.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use rustix::fs::SeekFrom;
use sha2::{Digest, Sha256};

/// The archive's block size: the unit of zero detection.
const BLOCK_SIZE: usize = 4096;

struct Args {
    image: String,
    level: i32,
    chunk_size: usize,
    reps: usize,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut image = None;
    let mut level = 3;
    let mut chunk_size = 1 << 20;
    let mut reps = 1;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--level" => level = value("--level")?.parse().map_err(|e| format!("--level: {e}"))?,
            "--chunk-size" => {
                chunk_size = value("--chunk-size")?
                    .parse()
                    .map_err(|e| format!("--chunk-size: {e}"))?
            }
            "--reps" => reps = value("--reps")?.parse().map_err(|e| format!("--reps: {e}"))?,
            "--threads" => {
                threads = value("--threads")?
                    .parse()
                    .map_err(|e| format!("--threads: {e}"))?
            }
            // `cargo bench` passes --bench to every bench binary.
            "--bench" => {}
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            other => image = Some(other.to_string()),
        }
    }
    if chunk_size == 0 || chunk_size % BLOCK_SIZE != 0 {
        return Err("--chunk-size must be a positive multiple of 4096".into());
    }
    if reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    let image =
        image.ok_or("usage: floor IMAGE [--level N] [--chunk-size BYTES] [--reps N] [--threads N]")?;
    Ok(Args {
        image,
        level,
        chunk_size,
        reps,
        threads,
    })
}

/// The calling thread's CPU time so far.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `t`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is always available on Linux");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// What one pass over the image measured.
#[derive(Default)]
struct Pass {
    chunks: usize,
    payload_bytes: usize,
    compressed_bytes: usize,
    zstd_cpu: Duration,
    sha256_cpu: Duration,
}

/// Cuts `file` into chunks as the pipeline does and calls `each` with every chunk's payload
/// (its non-zero 4 KiB blocks, in order) and the chunk's whole content; all-zero chunks are
/// skipped.
fn for_each_payload(
    file: &File,
    chunk_size: usize,
    mut each: impl FnMut(&[u8], &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let size = file.metadata()?.len();
    let mut chunk = vec![0u8; chunk_size];
    let mut payload = Vec::with_capacity(chunk_size);
    let mut position = 0u64;
    while position < size {
        let data_at = match rustix::fs::seek(file.as_fd(), SeekFrom::Data(position)) {
            Ok(offset) => offset,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => position, // no SEEK_DATA here: read everything
        };
        let start = data_at - data_at % chunk_size as u64;
        let len = (size - start).min(chunk_size as u64) as usize;
        file.read_exact_at(&mut chunk[..len], start)?;
        payload.clear();
        for block in chunk[..len].chunks(BLOCK_SIZE) {
            if block.iter().any(|&b| b != 0) {
                payload.extend_from_slice(block);
            }
        }
        position = start + chunk_size as u64;
        if !payload.is_empty() {
            each(&payload, &chunk[..len])?;
        }
    }
    Ok(())
}

/// Compresses every chunk's payload on this one thread, timing only zstd, then hashes the
/// chunk, timing only SHA-256. Each payload is compressed right after it is gathered, so it is
/// as warm in cache as in imgpack.
fn pass(file: &File, chunk_size: usize, compressor: &mut zstd::bulk::Compressor) -> std::io::Result<Pass> {
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(chunk_size));
    let mut result = Pass::default();
    for_each_payload(file, chunk_size, |payload, content| {
        frame.clear();
        let before = thread_cpu();
        compressor
            .compress_to_buffer(payload, &mut frame)
            .map_err(std::io::Error::other)?;
        result.zstd_cpu += thread_cpu() - before;
        let before = thread_cpu();
        let hash = Sha256::digest(content);
        result.sha256_cpu += thread_cpu() - before;
        std::hint::black_box(hash);
        result.chunks += 1;
        result.payload_bytes += payload.len();
        result.compressed_bytes += frame.len();
        Ok(())
    })?;
    Ok(result)
}

/// What the parallel pass measured.
struct ParallelPass {
    wall: Duration,
    cpu: Duration,
    compressed_bytes: usize,
}

/// Compresses `payloads` on `threads` threads at once, each taking the next payload as soon as
/// it is free; times the whole from a common start (a barrier) to the last thread's end.
fn parallel_pass(
    payloads: &[Vec<u8>],
    threads: usize,
    level: i32,
    chunk_size: usize,
) -> std::io::Result<ParallelPass> {
    let next = AtomicUsize::new(0);
    let start = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> std::io::Result<(Duration, usize)> {
                    let mut compressor = zstd::bulk::Compressor::new(level)?;
                    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(chunk_size));
                    let (mut cpu, mut bytes) = (Duration::ZERO, 0);
                    start.wait();
                    while let Some(payload) = payloads.get(next.fetch_add(1, Ordering::Relaxed)) {
                        frame.clear();
                        let before = thread_cpu();
                        compressor
                            .compress_to_buffer(payload.as_slice(), &mut frame)
                            .map_err(std::io::Error::other)?;
                        cpu += thread_cpu() - before;
                        bytes += frame.len();
                    }
                    Ok((cpu, bytes))
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let mut result = ParallelPass {
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            compressed_bytes: 0,
        };
        for worker in workers {
            let (cpu, bytes) = worker.join().expect("a compress thread panicked")?;
            result.cpu += cpu;
            result.compressed_bytes += bytes;
        }
        result.wall = began.elapsed();
        Ok(result)
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("floor: {message}");
            return ExitCode::from(2);
        }
    };
    let mut compressor = match zstd::bulk::Compressor::new(args.level) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("floor: zstd level {}: {e}", args.level);
            return ExitCode::from(2);
        }
    };
    let file = match File::open(&args.image) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("floor: {}: {e}", args.image);
            return ExitCode::FAILURE;
        }
    };
    // The parallel pass compresses from memory: gather the payloads once.
    let mut payloads = Vec::new();
    if args.threads > 0 {
        if let Err(e) = for_each_payload(&file, args.chunk_size, |p, _| {
            payloads.push(p.to_vec());
            Ok(())
        }) {
            eprintln!("floor: {}: {e}", args.image);
            return ExitCode::FAILURE;
        }
    }
    for _ in 0..args.reps {
        let single = match pass(&file, args.chunk_size, &mut compressor) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("floor: {}: {e}", args.image);
                return ExitCode::FAILURE;
            }
        };
        let mut line = format!(
            "level={} chunks={} payload_bytes={} compressed_bytes={} zstd_cpu_s={:.3} sha256_cpu_s={:.3}",
            args.level,
            single.chunks,
            single.payload_bytes,
            single.compressed_bytes,
            single.zstd_cpu.as_secs_f64(),
            single.sha256_cpu.as_secs_f64()
        );
        if args.threads > 0 {
            match parallel_pass(&payloads, args.threads, args.level, args.chunk_size) {
                Ok(p) if p.compressed_bytes == single.compressed_bytes => {
                    line += &format!(
                        " threads={} parallel_wall_s={:.3} parallel_cpu_s={:.3}",
                        args.threads,
                        p.wall.as_secs_f64(),
                        p.cpu.as_secs_f64()
                    )
                }
                Ok(p) => {
                    eprintln!(
                        "floor: the parallel pass made {} compressed bytes, the single one {}",
                        p.compressed_bytes, single.compressed_bytes
                    );
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("floor: parallel pass: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        println!("{line}");
    }
    ExitCode::SUCCESS
}
