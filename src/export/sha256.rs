//! `--sha256`: the SHA-256 of the written output, as `sha256sum` would print it. It costs a
//! sequential pass over every byte of the output, holes included: while streaming, the bytes
//! are hashed as they are written ([`Hashing`]); a file is read back once written ([`of_file`]).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use crate::control::Control;
use crate::error::{Error, Result};

/// A writer that hashes what passes through it, when asked to.
pub struct Hashing<W: Write> {
    inner: W,
    hasher: Option<Sha256>,
}

impl<W: Write> Hashing<W> {
    /// Wraps `inner`, hashing only if `enabled`.
    pub fn new(inner: W, enabled: bool) -> Self {
        Hashing {
            inner,
            hasher: enabled.then(Sha256::new),
        }
    }

    /// The hex digest of everything written, if hashing.
    pub fn hex(self) -> Option<String> {
        self.hasher.map(|h| hex(&h.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The hex SHA-256 of `file`'s whole content.
pub fn of_file(file: &File, control: &Control) -> Result<String> {
    let len = file
        .metadata()
        .map_err(|e| Error::io("measuring the output", e))?
        .len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        control.check()?;
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)
            .map_err(|e| Error::io("reading the output back for its SHA-256", e).at(at))?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
