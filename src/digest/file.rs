//! [`sha256_of_file`]: the SHA-256 of a file's bytes, what `sha256sum FILE` prints, in one
//! sequential pass that never reads its holes.
//!
//! SHA-256 is a chain, so every byte is hashed, holes included; but a hole's bytes are known to
//! be zero, so they are fed from a static block of zeros (SEEK_HOLE finds where they end)
//! instead of being read. A registration runs this beside the parallel pipeline that reads the
//! same upload at random, to record the upload's `source_sha256`.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::SeekFrom;
use sha2::{Digest, Sha256};

use crate::archive::digest::to_hex;

/// Bytes read (or fed from zeros) per step: large enough that each `pread` costs little, small
/// enough that a stop request is seen within a millisecond or so.
const STEP: usize = 1 << 20;

static ZEROS: [u8; STEP] = [0; STEP];

/// The SHA-256 (lowercase hex) of the first `len` bytes of `file`, or `None` if `stop` was
/// set before the end. Holes are hashed as zeros without being read. An error if the file
/// ends before `len` (it was truncated meanwhile) or a read fails.
pub fn sha256_of_file(file: &File, len: u64, stop: &AtomicBool) -> io::Result<Option<String>> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; STEP];
    let mut at = 0u64;
    while at < len {
        let data = next_data(file, at)?.unwrap_or(len).min(len);
        // [at, data) is a hole: zeros, hashed without reading.
        while at < data {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let n = (data - at).min(STEP as u64) as usize;
            hasher.update(&ZEROS[..n]);
            at += n as u64;
        }
        let hole = next_hole(file, at)?.min(len);
        while at < hole {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let n = (hole - at).min(STEP as u64) as usize;
            file.read_exact_at(&mut buffer[..n], at)?;
            hasher.update(&buffer[..n]);
            at += n as u64;
        }
    }
    // Holes past the end of a truncated file would otherwise hash as zeros.
    if file.metadata()?.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the file became shorter while it was hashed",
        ));
    }
    Ok(Some(to_hex(&hasher.finalize())))
}

/// The first offset at or after `from` holding data; `None` if only holes follow. Where the
/// file system cannot tell, `from` itself (everything is read).
fn next_data(file: &File, from: u64) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file.as_fd(), SeekFrom::Data(from)) {
        Ok(offset) => Ok(Some(offset)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok(Some(from)),
        Err(e) => Err(e.into()),
    }
}

/// The first hole at or after `from` (the end of the file counts as one). Where the file
/// system cannot tell, `u64::MAX`: the rest is read.
fn next_hole(file: &File, from: u64) -> io::Result<u64> {
    match rustix::fs::seek(file.as_fd(), SeekFrom::Hole(from)) {
        Ok(offset) => Ok(offset.max(from.saturating_add(1))),
        Err(rustix::io::Errno::NXIO | rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
            Ok(u64::MAX)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    fn sha256(bytes: &[u8]) -> String {
        to_hex(&Sha256::digest(bytes))
    }

    #[test]
    fn holes_hash_as_zeros_and_data_as_itself() {
        let mut file = tempfile::tempfile().unwrap();
        let mut expected = vec![0u8; (5 << 20) + 123];
        // Data, a hole of several steps, data, and a hole up to an odd end.
        for (offset, len) in [(0usize, 4096usize), (3 << 20, 70_000)] {
            for (i, byte) in expected[offset..offset + len].iter_mut().enumerate() {
                *byte = (i * 7 % 251) as u8 + 1;
            }
            file.seek(io::SeekFrom::Start(offset as u64)).unwrap();
            file.write_all(&expected[offset..offset + len]).unwrap();
        }
        file.set_len(expected.len() as u64).unwrap();
        let len = expected.len() as u64;
        let got = sha256_of_file(&file, len, &AtomicBool::new(false)).unwrap();
        assert_eq!(got.as_deref(), Some(sha256(&expected).as_str()));
    }

    #[test]
    fn empty_files_stops_and_truncation() {
        let file = tempfile::tempfile().unwrap();
        let empty = sha256_of_file(&file, 0, &AtomicBool::new(false)).unwrap();
        assert_eq!(empty.as_deref(), Some(sha256(b"").as_str()));
        file.set_len(4 << 20).unwrap();
        assert_eq!(
            sha256_of_file(&file, 4 << 20, &AtomicBool::new(true)).unwrap(),
            None
        );
        // A file shorter than the length asked for (truncated meanwhile) is an error.
        let mut short = tempfile::tempfile().unwrap();
        short.write_all(&[1u8; 1000]).unwrap();
        assert!(sha256_of_file(&short, 2000, &AtomicBool::new(false)).is_err());
    }
}
