//! [`hash_while_reading`]: the SHA-256 of a byte stream computed as it is read, for recording
//! an upload's `source_sha256` (what `sha256sum upload.img` prints) while it is converted.
//!
//! ```
//! use std::io::Read;
//! let (mut reader, handle) = imgpack::digest::hash_while_reading(&b"abc"[..]);
//! std::io::copy(&mut reader, &mut std::io::sink())?;
//! let sum = handle.result();
//! assert!(sum.complete);
//! assert_eq!(sum.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Read};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use crate::archive::digest::to_hex;

/// Wraps `reader` so that every byte read through it is hashed; the handle gives the result,
/// also after the reader itself has been moved away (into `Input::reader`, say).
pub fn hash_while_reading<R: Read>(reader: R) -> (HashingReader<R>, Sha256Handle) {
    let state = Arc::new(Mutex::new(State {
        hasher: Sha256::new(),
        bytes: 0,
        complete: false,
    }));
    let handle = Sha256Handle {
        state: Arc::clone(&state),
    };
    (HashingReader { inner: reader, state }, handle)
}

struct State {
    hasher: Sha256,
    bytes: u64,
    complete: bool,
}

/// A reader that hashes what passes through it (see [`hash_while_reading`]).
pub struct HashingReader<R> {
    inner: R,
    state: Arc<Mutex<State>>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = lock(&self.state);
        state.hasher.update(&buf[..n]);
        state.bytes += n as u64;
        if n == 0 && !buf.is_empty() {
            state.complete = true;
        }
        Ok(n)
    }
}

/// The other end of a [`HashingReader`].
#[derive(Clone)]
pub struct Sha256Handle {
    state: Arc<Mutex<State>>,
}

/// The SHA-256 of the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSha256 {
    /// Lowercase hex, as `sha256sum` prints it.
    pub sha256: String,
    /// Bytes hashed.
    pub bytes: u64,
    /// Whether the stream was read to its end (a read returned 0): only then is `sha256` the
    /// whole stream's.
    pub complete: bool,
}

impl Sha256Handle {
    /// The SHA-256 of everything read so far (the stream is not disturbed).
    pub fn result(&self) -> StreamSha256 {
        let state = lock(&self.state);
        StreamSha256 {
            sha256: to_hex(&state.hasher.clone().finalize()),
            bytes: state.bytes,
            complete: state.complete,
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_what_was_read_and_knows_whether_it_was_all() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let (mut reader, handle) = hash_while_reading(&data[..]);
        let mut first = vec![0u8; 1000];
        reader.read_exact(&mut first).unwrap();
        let partial = handle.result();
        assert_eq!((partial.bytes, partial.complete), (1000, false));
        assert_eq!(partial.sha256, to_hex(&Sha256::digest(&data[..1000])));
        std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
        let whole = handle.result();
        assert_eq!((whole.bytes, whole.complete), (data.len() as u64, true));
        assert_eq!(whole.sha256, to_hex(&Sha256::digest(&data)));
    }
}
