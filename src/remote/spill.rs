//! [`GrowingSpill`]: an object downloaded by one streaming GET into an unnamed temporary file
//! that can be read at random *while* the download runs, so that converting a random-access
//! format (qcow2, VMDK, ...) overlaps its download instead of waiting for it.
//!
//! A thread copies the stream into the file front to back and publishes how far it got; a
//! positional read waits until the bytes it needs have arrived, then reads the file. Images
//! written by `qemu-img` keep their metadata and data roughly in order, so the conversion
//! follows close behind the download. Pieces that are all zero are left as holes, so the
//! file takes no more disk than the object's data; memory is one piece buffer.
//!
//! The download's failure (a dropped connection, a short body) reaches every read waiting for
//! bytes past the failure, and [`GrowingSpill::wait_complete`]. Dropping the spill stops the
//! copy at its next piece, which drops the GET.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{Error, ErrorKind, Result};
use crate::read_at::ReadAt;
use crate::zero::is_zero;

/// Bytes copied at a time: readers are woken once per piece.
const PIECE_LEN: usize = 1 << 20;

/// How far the copy got, and how it ended.
#[derive(Default)]
struct Progress {
    filled: u64,
    /// `Some(None)`: the whole object arrived; `Some(Some(why))`: the copy failed.
    ended: Option<Option<String>>,
}

struct Shared {
    progress: Mutex<Progress>,
    grown: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An object being spilled to a temporary file, readable as it grows; see the module docs.
pub struct GrowingSpill {
    file: File,
    size: u64,
    name: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GrowingSpill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrowingSpill")
            .field("name", &self.name)
            .field("size", &self.size)
            .finish()
    }
}

impl GrowingSpill {
    /// Starts copying `reader`, which must yield exactly `size` bytes (more or fewer is an
    /// error), into an unnamed temporary file in `dir`. `name` labels errors.
    pub fn start(reader: Box<dyn Read + Send>, size: u64, dir: &Path, name: &str) -> Result<GrowingSpill> {
        let io_error = |what: &str, e: io::Error| Error::io(format!("{what} for {name}"), e).in_file(dir);
        let file = tempfile::tempfile_in(dir).map_err(|e| io_error("creating a temporary file", e))?;
        // Full length at once: pieces of zeros are never written and stay holes.
        file.set_len(size)
            .map_err(|e| io_error("sizing the temporary file", e))?;
        let writer = file
            .try_clone()
            .map_err(|e| io_error("opening the temporary file", e))?;
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress::default()),
            grown: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let filling = Arc::clone(&shared);
        let label = name.to_string();
        std::thread::Builder::new()
            .name("s3-spill".into())
            .spawn(move || {
                let outcome = fill(reader, &writer, size, &filling, &label).err();
                filling.lock().ended = Some(outcome);
                filling.grown.notify_all();
            })
            .map_err(|e| io_error("starting the download thread", e))?;
        Ok(GrowingSpill {
            file,
            size,
            name: name.to_string(),
            shared,
        })
    }

    /// Waits for the copy to end (the whole object read, to its end); the download's error
    /// if it failed.
    pub fn wait_complete(&self) -> Result<()> {
        let mut progress = self.shared.lock();
        loop {
            match &progress.ended {
                Some(Some(why)) => return Err(Error::new(ErrorKind::Io, why.clone())),
                Some(None) => return Ok(()),
                None => {}
            }
            progress = self
                .shared
                .grown
                .wait(progress)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Waits until the first `end` bytes are in the file (or the copy failed).
    fn wait_for(&self, end: u64) -> io::Result<()> {
        let mut progress = self.shared.lock();
        while progress.filled < end {
            match &progress.ended {
                Some(Some(why)) => return Err(io::Error::other(Error::new(ErrorKind::Io, why.clone()))),
                Some(None) => break,
                None => {}
            }
            progress = self
                .shared
                .grown
                .wait(progress)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        Ok(())
    }
}

/// The copying thread: piece by piece, holes for zeros, progress published after each.
fn fill(
    mut reader: Box<dyn Read + Send>,
    file: &File,
    size: u64,
    shared: &Shared,
    name: &str,
) -> std::result::Result<(), String> {
    let mut buffer = vec![0u8; PIECE_LEN];
    let mut filled = 0u64;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Err(format!("the download of {name} was stopped"));
        }
        let n = read_piece(&mut reader, &mut buffer)
            .map_err(|e| format!("downloading {name} after {filled} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        if filled + n as u64 > size {
            return Err(format!("{name} is longer than the {size} bytes announced"));
        }
        if !is_zero(&buffer[..n]) {
            file.write_all_at(&buffer[..n], filled)
                .map_err(|e| format!("writing the temporary copy of {name}: {e}"))?;
        }
        filled += n as u64;
        shared.lock().filled = filled;
        shared.grown.notify_all();
    }
    if filled != size {
        return Err(format!(
            "{name} ended after {filled} of the {size} bytes announced"
        ));
    }
    Ok(())
}

/// Reads until `buf` is full or the reader ends.
fn read_piece(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl ReadAt for GrowingSpill {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= self.size);
        let Some(end) = end else {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"));
        };
        self.wait_for(end)?;
        self.file.read_exact_at(buf, offset)
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = buf.len().min((self.size - offset) as usize);
        self.read_exact_at(&mut buf[..n], offset)?;
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for GrowingSpill {
    fn drop(&mut self) {
        // The thread ends at its next piece and drops the GET; the file goes with the last
        // descriptor.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `data` slowly, in small reads, to make readers wait.
    struct Slow {
        data: Vec<u8>,
        at: usize,
    }

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(std::time::Duration::from_micros(200));
            let n = buf.len().min(4096).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        let mut data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8 + 1).collect();
        // A whole zero piece in the middle becomes a hole and must still read as zeros.
        data[PIECE_LEN..2 * PIECE_LEN].fill(0);
        data
    }

    #[test]
    fn reads_wait_for_the_bytes_and_see_exactly_the_object() {
        let expected = data(3 * PIECE_LEN + 12345);
        let dir = tempfile::tempdir().unwrap();
        let reader = Slow {
            data: expected.clone(),
            at: 0,
        };
        let spill = GrowingSpill::start(Box::new(reader), expected.len() as u64, dir.path(), "obj").unwrap();
        // The tail first: it has not arrived yet, so this waits for it.
        let mut tail = vec![0u8; 1000];
        let at = expected.len() as u64 - 1000;
        spill.read_exact_at(&mut tail, at).unwrap();
        assert_eq!(tail, expected[at as usize..]);
        let mut all = vec![0u8; expected.len()];
        assert_eq!(spill.read_at_most(&mut all, 0).unwrap(), expected.len());
        assert!(all == expected);
        spill.wait_complete().unwrap();
        let mut past = [0u8; 2];
        assert!(spill.read_exact_at(&mut past, expected.len() as u64 - 1).is_err());
        assert_eq!(spill.read_at_most(&mut past, expected.len() as u64).unwrap(), 0);
    }

    #[test]
    fn a_short_or_long_body_is_an_error_for_readers_waiting_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let body = data(2 * PIECE_LEN + 10);
        let short = GrowingSpill::start(
            Box::new(io::Cursor::new(body.clone())),
            body.len() as u64 + 50,
            dir.path(),
            "obj",
        )
        .unwrap();
        let mut buf = [0u8; 50];
        let err = short.read_exact_at(&mut buf, body.len() as u64).unwrap_err();
        assert!(err.to_string().contains("ended after"), "{err}");
        assert!(short.wait_complete().is_err());
        // What did arrive can still be read.
        short.read_exact_at(&mut buf, 0).unwrap();

        let long =
            GrowingSpill::start(Box::new(io::Cursor::new(body.clone())), 100, dir.path(), "obj").unwrap();
        let err = long.wait_complete().unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "the temporary file is unnamed"
        );
    }
}
