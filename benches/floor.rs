//! The convert floor: the CPU time zstd alone spends compressing a raw image's non-zero data,
//! in the same chunking and at the same level as `imgpack convert`.
//!
//! ```text
//! cargo bench --bench floor -- IMAGE [--level N] [--chunk-size BYTES] [--reps N]
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
//! Output, one line per pass, `key=value` separated by spaces:
//! `level=3 chunks=1402 payload_bytes=... compressed_bytes=... zstd_cpu_s=4.123`.
//! The floor of a convert on `n` cores is `zstd_cpu_s / n`; `compressed_bytes` is the sum of
//! the frames, the archive's size less its header, index and footer.
//!
//! This is self-contained on purpose (std, rustix and zstd only): the floor must not move when
//! imgpack's own code changes.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::Duration;

use rustix::fs::SeekFrom;

/// The archive's block size: the unit of zero detection.
const BLOCK_SIZE: usize = 4096;

struct Args {
    image: String,
    level: i32,
    chunk_size: usize,
    reps: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut image = None;
    let mut level = 3;
    let mut chunk_size = 1 << 20;
    let mut reps = 1;
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
    let image = image.ok_or("usage: floor IMAGE [--level N] [--chunk-size BYTES] [--reps N]")?;
    Ok(Args {
        image,
        level,
        chunk_size,
        reps,
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
}

/// Cuts `file` into chunks as the pipeline does and compresses every chunk's payload (its
/// non-zero 4 KiB blocks, in order; all-zero chunks are skipped), timing only zstd. Each
/// payload is compressed right after it is gathered, so it is as warm in cache as in imgpack.
fn pass(file: &File, chunk_size: usize, compressor: &mut zstd::bulk::Compressor) -> std::io::Result<Pass> {
    let size = file.metadata()?.len();
    let mut chunk = vec![0u8; chunk_size];
    let mut payload = Vec::with_capacity(chunk_size);
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(chunk_size));
    let mut result = Pass::default();
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
        if payload.is_empty() {
            continue;
        }
        frame.clear();
        let before = thread_cpu();
        compressor
            .compress_to_buffer(payload.as_slice(), &mut frame)
            .map_err(std::io::Error::other)?;
        result.zstd_cpu += thread_cpu() - before;
        result.chunks += 1;
        result.payload_bytes += payload.len();
        result.compressed_bytes += frame.len();
    }
    Ok(result)
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
    for _ in 0..args.reps {
        match pass(&file, args.chunk_size, &mut compressor) {
            Ok(p) => println!(
                "level={} chunks={} payload_bytes={} compressed_bytes={} zstd_cpu_s={:.3}",
                args.level,
                p.chunks,
                p.payload_bytes,
                p.compressed_bytes,
                p.zstd_cpu.as_secs_f64()
            ),
            Err(e) => {
                eprintln!("floor: {}: {e}", args.image);
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
