//! zstd decoding: every frame of a multi-frame file (pzstd and `cat` make several), skippable
//! frames skipped, content checksums verified (libzstd's streaming decoder), with the window
//! bounded so a hostile frame cannot ask for unbounded memory.
//!
//! | frame            | layout                                                                 |
//! |------------------|------------------------------------------------------------------------|
//! | zstd frame       | magic `28 b5 2f fd`, frame header (descriptor, window, dictionary id, content size), blocks (3-byte headers), optional 4-byte checksum (low 32 bits of XXH64) |
//! | skippable frame  | magic `5? 2a 4d 18`, size (u32 LE), that many bytes of user data      |
//!
//! Anything after the last frame that is not a frame is refused.

use std::io::{self, Read};

use zstd::zstd_safe::{get_error_name, DCtx, DParameter, InBuffer, OutBuffer};

use super::buffer::Input;
use super::damage;
use crate::error::{Error, ErrorKind, Result};
use crate::read_at::ReadAt;

/// log2 of the largest window a frame may ask for (128 MiB, libzstd's default limit); frames
/// made with `--long=31` are refused rather than given 2 GiB.
pub const WINDOW_LOG_MAX: u32 = 27;

/// Decodes a zstd file (all of its frames) as a `Read` of the uncompressed bytes.
///
/// Damage is reported as an `io::Error` wrapping an [`Error`] (kind `Corrupt`, `Checksum` for
/// a content checksum mismatch, `LimitExceeded` for a window too large) naming the frame and
/// the offset where the decoder stopped.
pub struct ZstdDecoder<R> {
    input: Input<R>,
    context: DCtx<'static>,
    /// The current frame, counted from 1.
    frame: u64,
    frame_start: u64,
    in_frame: bool,
}

impl<R: Read> ZstdDecoder<R> {
    /// Decodes the zstd file read from `reader`.
    pub fn new(reader: R) -> Result<Self> {
        let mut context =
            DCtx::try_create().ok_or_else(|| Error::new(ErrorKind::Io, "cannot allocate a zstd decoder"))?;
        context
            .set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
            .map_err(|code| Error::new(ErrorKind::Io, format!("zstd: {}", get_error_name(code))))?;
        Ok(ZstdDecoder {
            input: Input::new(reader),
            context,
            frame: 1,
            frame_start: 0,
            in_frame: false,
        })
    }

    fn error(&self, code: usize, offset: u64) -> io::Error {
        let name = get_error_name(code);
        let lower = name.to_ascii_lowercase();
        let kind = if lower.contains("checksum") {
            ErrorKind::Checksum
        } else if lower.contains("memory") || lower.contains("window") {
            ErrorKind::LimitExceeded
        } else {
            ErrorKind::Corrupt
        };
        let what = if kind == ErrorKind::LimitExceeded {
            format!(
                "{name} (frames may use windows up to {} MiB)",
                1u64 << (WINDOW_LOG_MAX - 20)
            )
        } else {
            name.to_string()
        };
        damage(
            Error::new(
                kind,
                format!(
                    "zstd frame {} (starting at offset {}): {what}",
                    self.frame, self.frame_start
                ),
            )
            .at(offset),
        )
    }
}

impl<R: Read> Read for ZstdDecoder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut stalls = 0;
        loop {
            let offset = self.input.offset();
            let input = self.input.available()?;
            if input.is_empty() {
                if self.in_frame {
                    return Err(damage(Error::corrupt(
                        offset,
                        format!(
                            "the file ends inside zstd frame {} (started at offset {}): truncated",
                            self.frame, self.frame_start
                        ),
                    )));
                }
                return Ok(0);
            }
            let mut in_buffer = InBuffer::around(input);
            let mut out_buffer = OutBuffer::around(&mut *out);
            let result = self.context.decompress_stream(&mut out_buffer, &mut in_buffer);
            let used = in_buffer.pos();
            let produced = out_buffer.pos();
            let hint = result.map_err(|code| self.error(code, offset + used as u64))?;
            self.input.consume(used);
            if hint == 0 {
                self.in_frame = false;
                self.frame += 1;
                self.frame_start = self.input.offset();
            } else {
                self.in_frame = true;
            }
            if produced > 0 {
                return Ok(produced);
            }
            if used == 0 && hint != 0 {
                stalls += 1;
                if stalls > 2 {
                    return Err(damage(Error::corrupt(
                        offset,
                        "the zstd decoder makes no progress",
                    )));
                }
            }
        }
    }
}

/// The total decoded size of a zstd file, when every frame's header declares its content size,
/// found by walking frame and block headers (no decoding). `None` if some frame does not
/// declare it or there are more than `max_blocks` blocks to walk.
pub fn content_size(file: &dyn ReadAt, max_blocks: u64) -> Result<Option<u64>> {
    let io = |e| Error::io("reading the zstd frame headers", e);
    let size = file.size();
    let mut pos = 0u64;
    let mut total = 0u64;
    let mut blocks = 0u64;
    while pos < size {
        let mut magic = [0u8; 4];
        file.read_exact_at(&mut magic, pos).map_err(|_| truncated(pos))?;
        let magic_value = u32::from_le_bytes(magic);
        if magic_value & 0xffff_fff0 == 0x184d_2a50 {
            let mut length = [0u8; 4];
            file.read_exact_at(&mut length, pos + 4)
                .map_err(|_| truncated(pos))?;
            pos = pos + 8 + u64::from(u32::from_le_bytes(length));
            continue;
        }
        if magic_value != 0xfd2f_b528 {
            return Err(Error::corrupt(pos, "not a zstd frame (trailing garbage?)"));
        }
        let mut header = [0u8; 14];
        let got = file.read_at_most(&mut header, pos + 4).map_err(io)?;
        let descriptor = *header.first().filter(|_| got > 0).ok_or_else(|| truncated(pos))?;
        let fcs_flag = descriptor >> 6;
        let single_segment = descriptor & 0x20 != 0;
        let has_checksum = descriptor & 0x04 != 0;
        let dict_id_len = [0usize, 1, 2, 4][usize::from(descriptor & 3)];
        let fcs_len = match (fcs_flag, single_segment) {
            (0, false) => 0,
            (0, true) => 1,
            (1, _) => 2,
            (2, _) => 4,
            _ => 8,
        };
        let header_len = 1 + usize::from(!single_segment) + dict_id_len + fcs_len;
        if got < header_len {
            return Err(truncated(pos));
        }
        if fcs_len == 0 {
            return Ok(None);
        }
        let field = &header[header_len - fcs_len..header_len];
        let mut bytes = [0u8; 8];
        bytes[..fcs_len].copy_from_slice(field);
        let mut content = u64::from_le_bytes(bytes);
        if fcs_len == 2 {
            content += 256;
        }
        total = total
            .checked_add(content)
            .ok_or_else(|| Error::corrupt(pos, "the declared sizes overflow 64 bits"))?;
        pos += 4 + header_len as u64;
        loop {
            blocks += 1;
            if blocks > max_blocks {
                return Ok(None);
            }
            let mut block = [0u8; 3];
            file.read_exact_at(&mut block, pos).map_err(|_| truncated(pos))?;
            let value = u32::from(block[0]) | u32::from(block[1]) << 8 | u32::from(block[2]) << 16;
            let last = value & 1 != 0;
            let kind = (value >> 1) & 3;
            let length = u64::from(value >> 3);
            pos += 3 + match kind {
                1 => 1, // RLE: one byte repeated
                3 => return Err(Error::corrupt(pos, "reserved zstd block type")),
                _ => length,
            };
            if last {
                break;
            }
        }
        if has_checksum {
            pos += 4;
        }
    }
    if pos > size {
        return Err(truncated(size));
    }
    Ok(Some(total))
}

fn truncated(at: u64) -> Error {
    Error::corrupt(at, "the zstd file ends inside a frame: truncated")
}
