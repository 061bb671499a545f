//! Spilling: an image that needs random access but arrives as a stream (standard input, the
//! payload of a compressed layer) is copied into an unnamed temporary file (`O_TMPFILE` in the
//! spill directory: nothing is left behind on success, error, interrupt or even SIGKILL),
//! bounded by the virtual-size limit, and read from there.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use super::errors::unwrap_io;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::input::{read_full, OpenOptions};
use crate::units::format_size;
use crate::zero::is_zero;

/// Most bytes a spilled image may take: the virtual-size limit plus room for metadata.
pub fn spill_limit(max_virtual_size: u64) -> u64 {
    max_virtual_size
        .saturating_add(max_virtual_size / 8)
        .saturating_add(64 << 20)
}

/// Copies a decoded image into an unnamed temporary file in `options.spill_dir` (holes where
/// whole 1 MiB pieces are zero), refusing it past [`spill_limit`] and stopping on cancel.
pub fn spill(mut reader: impl Read, options: &OpenOptions) -> Result<File> {
    let dir = &options.spill_dir;
    let mut file =
        tempfile::tempfile_in(dir).context("creating a temporary file for the decoded image", dir)?;
    let limit = spill_limit(options.limits.max_virtual_size);
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        options.control.check()?;
        let n = read_full(&mut reader, &mut buffer).map_err(unwrap_io)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > limit {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the decoded image exceeds {} ({limit} bytes), more than an image within the virtual-size limit of {} can take; stopped decoding there",
                    format_size(limit),
                    format_size(options.limits.max_virtual_size)
                ),
            ));
        }
        if is_zero(&buffer[..n]) {
            file.seek(SeekFrom::Current(n as i64))
                .context("writing the temporary file", dir)?;
        } else {
            file.write_all(&buffer[..n])
                .context("writing the temporary file", dir)?;
        }
        if n < buffer.len() {
            break;
        }
    }
    file.set_len(total).context("writing the temporary file", dir)?;
    file.seek(SeekFrom::Start(0))
        .context("writing the temporary file", dir)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::path::Path;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use crate::error::ErrorKind;

    fn options(dir: &Path, max_virtual_size: u64) -> OpenOptions {
        OpenOptions {
            limits: crate::input::InputLimits { max_virtual_size },
            spill_dir: dir.to_path_buf(),
            ..OpenOptions::default()
        }
    }

    fn empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).unwrap().next().is_none()
    }

    #[test]
    fn spill_keeps_bytes_and_leaves_no_name_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![7u8; 1000];
        data.resize(3 << 20, 0);
        data.extend_from_slice(b"end");
        let mut file = spill(&data[..], &options(dir.path(), 1 << 30)).unwrap();
        assert!(empty(dir.path()));
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert!(back == data);
    }

    #[test]
    fn spill_stops_at_the_limit_and_on_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let endless = io::repeat(0).take(u64::MAX);
        let err = spill(endless, &options(dir.path(), 1 << 20)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
        let mut cancelled = options(dir.path(), 1 << 30);
        cancelled.control.cancel = Some(Arc::new(AtomicBool::new(true)));
        let err = spill(io::repeat(1).take(1 << 30), &cancelled).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Interrupted);
        assert!(empty(dir.path()));
    }
}
