//! xz decoding with liblzma: concatenated streams, stream padding, every block, every check
//! type verified; blocks decoded on several threads (liblzma's multi-threaded decoder) within
//! an explicit memory limit. Also reads the index of an xz file without decoding it.
//!
//! An xz file is one or more streams, each followed by zero padding in multiples of 4 bytes:
//!
//! | part          | layout                                                                      |
//! |---------------|-----------------------------------------------------------------------------|
//! | stream header | magic `fd 37 7a 58 5a 00`, flags (`00`, check id), CRC32 of the flags (LE)    |
//! | blocks        | each: header, compressed data, padding to 4, check (0, 4, 8 or 32 bytes)    |
//! | index         | `00`, record count (varint), per block (unpadded size, uncompressed size) varints, padding to 4, CRC32 |
//! | stream footer | CRC32 of the next 6 bytes, backward size (u32 LE, index size / 4 - 1), flags, `YZ` |
//!
//! Check ids: 0 none, 1 CRC32, 4 CRC64, 10 SHA-256; others are reserved and refused (liblzma
//! would otherwise decode them unverified). liblzma's stream decoder stops at each stream's
//! end; [`XzDecoder`] skips the padding and starts the next stream itself, which also lets it
//! name the stream in errors.

use std::io::{self, Read};

use liblzma::stream::{Action, MtStreamBuilder, Status, Stream};

use super::buffer::Input;
use super::damage;
use crate::error::{Error, ErrorKind, Result};
use crate::input::bytes::le32;
use crate::read_at::ReadAt;

/// Memory liblzma may use for decoding threads; beyond it, it decodes on fewer threads.
pub const MEMLIMIT_THREADING: u64 = 256 << 20;
/// Memory one xz stream may need at all (its dictionary); a stream needing more is refused.
pub const MEMLIMIT_STOP: u64 = 320 << 20;
/// Largest index read by [`read_index`] (a larger one is not believed).
const MAX_INDEX_SIZE: u64 = 16 << 20;
/// Most blocks whose positions [`read_index`] keeps for naming damaged blocks.
const MAX_BLOCKS_KEPT: usize = 1 << 20;

const MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];

/// The name of an xz check id, or `None` for a reserved one.
pub fn check_name(id: u8) -> Option<&'static str> {
    match id {
        0 => Some("none"),
        1 => Some("CRC32"),
        4 => Some("CRC64"),
        10 => Some("SHA-256"),
        _ => None,
    }
}

/// Where a block lies, from the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPosition {
    /// Stream number, from 1.
    pub stream: u64,
    /// Block number within the whole file, from 1.
    pub block: u64,
    /// Offset of the block header in the file.
    pub compressed_offset: u64,
    /// Offset of the block's first byte in the decoded data.
    pub uncompressed_offset: u64,
    /// The block's decoded length.
    pub uncompressed_size: u64,
}

/// What an xz file's indexes say, read without decoding anything.
#[derive(Debug, Clone, Default)]
pub struct XzIndex {
    /// Streams in the file.
    pub streams: u64,
    /// Blocks in the file.
    pub blocks: u64,
    /// Total decoded size.
    pub uncompressed_size: u64,
    /// The check type of each stream, outermost first (names, e.g. "CRC64").
    pub checks: Vec<&'static str>,
    /// Block positions, in file order (empty when there are more than can be kept).
    pub block_positions: Vec<BlockPosition>,
}

impl XzIndex {
    /// The block holding decoded offset `at`, if known.
    pub fn block_at(&self, at: u64) -> Option<&BlockPosition> {
        let i = self
            .block_positions
            .partition_point(|b| b.uncompressed_offset + b.uncompressed_size <= at);
        self.block_positions.get(i)
    }
}

/// One stream as read from its end: where it starts, its check id, and where its index is.
struct StreamEnd {
    start: u64,
    check: u8,
    index_at: u64,
    index_size: u64,
}

fn index_error(offset: u64, message: impl Into<String>) -> Error {
    Error::corrupt(offset, format!("xz index: {}", message.into()))
}

/// The offset just past the last non-zero byte before `end` (stream padding is skipped in
/// large reads: a hostile file may end in gigabytes of zeros).
fn skip_padding_backwards(file: &dyn ReadAt, end: u64) -> Result<u64> {
    let mut buffer = vec![0u8; 64 << 10];
    let mut pos = end;
    while pos > 0 {
        let len = (buffer.len() as u64).min(pos) as usize;
        let piece = &mut buffer[..len];
        file.read_exact_at(piece, pos - len as u64)
            .map_err(|e| Error::io("reading the xz index", e))?;
        match piece.iter().rposition(|&b| b != 0) {
            Some(i) => return Ok(pos - len as u64 + i as u64 + 1),
            None => pos -= len as u64,
        }
    }
    Ok(0)
}

/// Reads the stream footers and indexes of an xz file from its end, checking their CRC32s,
/// that every stream's blocks fit before its index and that a stream header sits where the
/// index says the stream starts.
pub fn read_index(file: &dyn ReadAt) -> Result<XzIndex> {
    let io = |e| Error::io("reading the xz index", e);
    let size = file.size();
    if !size.is_multiple_of(4) {
        return Err(index_error(
            size,
            "the file size is not a multiple of 4 (truncated or trailing bytes)",
        ));
    }
    // From the last stream to the first.
    let mut streams: Vec<StreamEnd> = Vec::new();
    let mut total_records = 0u64;
    let mut pos = size;
    while pos > 0 {
        let data_end = skip_padding_backwards(file, pos)?;
        // Padding is whole 4-byte words; the footer ends in "YZ", never in zero.
        pos = data_end.div_ceil(4) * 4;
        if pos != data_end {
            return Err(index_error(
                data_end,
                "no stream footer (YZ) at the end: truncated or trailing garbage",
            ));
        }
        if pos < 24 {
            return Err(index_error(pos, "too short for a stream header and footer"));
        }
        let footer_at = pos - 12;
        let mut footer = [0u8; 12];
        file.read_exact_at(&mut footer, footer_at).map_err(io)?;
        if &footer[10..12] != b"YZ" {
            return Err(index_error(
                footer_at,
                "no stream footer (YZ) at the end: truncated or trailing garbage",
            ));
        }
        if crc32fast::hash(&footer[4..10]).to_le_bytes() != footer[..4] {
            return Err(index_error(footer_at, "stream footer CRC32 mismatch"));
        }
        let check = footer[9] & 0x0f;
        if footer[8] != 0 || footer[9] & 0xf0 != 0 {
            return Err(index_error(footer_at + 8, "reserved stream flags are set"));
        }
        let backward = u64::from(le32(&footer, 4));
        let index_size = (backward + 1) * 4;
        if index_size > MAX_INDEX_SIZE || index_size > footer_at {
            return Err(index_error(
                footer_at,
                format!("implausible index size {index_size}"),
            ));
        }
        let index_at = footer_at - index_size;
        let mut index = vec![0u8; index_size as usize];
        file.read_exact_at(&mut index, index_at).map_err(io)?;
        let mut blocks_size = Some(0u64);
        let records = parse_index(&index, index_at, |unpadded, _| {
            blocks_size = blocks_size.and_then(|sum| sum.checked_add(unpadded.checked_add(3)? & !3));
        })?;
        let stream_start = blocks_size
            .and_then(|b| index_at.checked_sub(b))
            .and_then(|s| s.checked_sub(12))
            .ok_or_else(|| index_error(index_at, "the blocks listed in the index do not fit before it"))?;
        let mut header = [0u8; 12];
        file.read_exact_at(&mut header, stream_start).map_err(io)?;
        if header[..6] != MAGIC || header[6..8] != footer[8..10] {
            return Err(index_error(
                stream_start,
                "no matching stream header where the index says the stream starts",
            ));
        }
        total_records = total_records.saturating_add(records);
        streams.push(StreamEnd {
            start: stream_start,
            check,
            index_at,
            index_size,
        });
        pos = stream_start;
    }
    streams.reverse();
    let mut out = XzIndex {
        streams: streams.len() as u64,
        blocks: total_records,
        ..XzIndex::default()
    };
    let keep = total_records <= MAX_BLOCKS_KEPT as u64;
    let mut blocks = 0u64;
    for (number, stream) in streams.iter().enumerate() {
        out.checks.push(check_name(stream.check).unwrap_or("reserved"));
        let mut index = vec![0u8; stream.index_size as usize];
        file.read_exact_at(&mut index, stream.index_at).map_err(io)?;
        let mut compressed = stream.start + 12;
        let mut total = Some(out.uncompressed_size);
        parse_index(&index, stream.index_at, |unpadded, uncompressed| {
            blocks += 1;
            if let (true, Some(offset)) = (keep, total) {
                out.block_positions.push(BlockPosition {
                    stream: number as u64 + 1,
                    block: blocks,
                    compressed_offset: compressed,
                    uncompressed_offset: offset,
                    uncompressed_size: uncompressed,
                });
            }
            compressed = compressed.saturating_add(unpadded.saturating_add(3) & !3);
            total = total.and_then(|t| t.checked_add(uncompressed));
        })?;
        out.uncompressed_size =
            total.ok_or_else(|| index_error(stream.index_at, "the decoded size overflows 64 bits"))?;
    }
    Ok(out)
}

/// Parses one index (indicator through CRC32), calling `record(unpadded size, uncompressed
/// size)` for each block; returns the number of records.
fn parse_index(index: &[u8], at: u64, mut record: impl FnMut(u64, u64)) -> Result<u64> {
    let body_len = index.len() - 4;
    if crc32fast::hash(&index[..body_len]).to_le_bytes() != index[body_len..] {
        return Err(index_error(at, "CRC32 mismatch"));
    }
    if index[0] != 0 {
        return Err(index_error(at, "no index indicator"));
    }
    let mut pos = 1usize;
    let varint = |pos: &mut usize| -> Result<u64> {
        let mut value = 0u64;
        for i in 0..9 {
            let byte = *index
                .get(*pos)
                .filter(|_| *pos < body_len)
                .ok_or_else(|| index_error(at + *pos as u64, "a number runs past the index"))?;
            *pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(index_error(
                        at + *pos as u64 - 1,
                        "a number is not minimally encoded",
                    ));
                }
                return Ok(value);
            }
        }
        Err(index_error(at + *pos as u64, "a number is longer than 9 bytes"))
    };
    let count = varint(&mut pos)?;
    // Each record takes at least two bytes, so the count is bounded by the index's size.
    if count > (body_len as u64) / 2 {
        return Err(index_error(
            at,
            format!("{count} records cannot fit in the index"),
        ));
    }
    for _ in 0..count {
        let unpadded = varint(&mut pos)?;
        let uncompressed = varint(&mut pos)?;
        if !(5..=(1u64 << 63)).contains(&unpadded) {
            return Err(index_error(
                at + pos as u64,
                format!("impossible block size {unpadded}"),
            ));
        }
        record(unpadded, uncompressed);
    }
    if index[pos..body_len].iter().any(|&b| b != 0) || (body_len - pos) >= 4 {
        return Err(index_error(at + pos as u64, "bad index padding"));
    }
    Ok(count)
}

/// Decodes an xz file (all of its streams) as a `Read` of the uncompressed bytes.
///
/// Damage is reported as an `io::Error` wrapping an [`Error`] (kind `Corrupt`, or `Checksum`
/// when the index shows the whole block was decoded before the check failed) naming the
/// stream, the block (when the index is known) and an offset.
pub struct XzDecoder<R> {
    input: Input<R>,
    stream: Option<Stream>,
    threads: u32,
    /// Streams started so far.
    streams: u64,
    stream_start: u64,
    stream_out_start: u64,
    decoded: u64,
    index: Option<XzIndex>,
    done: bool,
}

impl<R: Read> XzDecoder<R> {
    /// Decodes the xz file read from `reader` on up to `threads` threads. `index`, when the
    /// file could be read from its end first, lets errors name the damaged block.
    pub fn new(reader: R, threads: u32, index: Option<XzIndex>) -> Self {
        XzDecoder {
            input: Input::new(reader),
            stream: None,
            threads: threads.max(1),
            streams: 0,
            stream_start: 0,
            stream_out_start: 0,
            decoded: 0,
            index,
            done: false,
        }
    }

    /// Skips stream padding and starts the next stream, or finds the end of the file.
    fn next_stream(&mut self) -> io::Result<()> {
        let padding_start = self.input.offset();
        loop {
            let rest = self.input.available()?;
            let zeros = rest.iter().take_while(|&&b| b == 0).count();
            let (more, empty) = (zeros < rest.len(), rest.is_empty());
            self.input.consume(zeros);
            if more || empty {
                break;
            }
        }
        let padding = self.input.offset() - padding_start;
        let at = self.input.offset();
        let header = self.input.peek(12)?;
        if header.is_empty() {
            if !padding.is_multiple_of(4) {
                return Err(damage(Error::corrupt(
                    padding_start,
                    format!("xz stream padding of {padding} bytes is not a multiple of 4"),
                )));
            }
            self.done = true;
            return Ok(());
        }
        if self.streams > 0 && !header.starts_with(&MAGIC[..header.len().min(6)]) {
            return Err(damage(Error::corrupt(
                at,
                format!("trailing garbage after xz stream {}", self.streams),
            )));
        }
        if header.len() < 12 {
            return Err(damage(Error::corrupt(
                at,
                "the file ends inside an xz stream header: truncated",
            )));
        }
        if !padding.is_multiple_of(4) {
            return Err(damage(Error::corrupt(
                padding_start,
                format!("xz stream padding of {padding} bytes is not a multiple of 4"),
            )));
        }
        let check = header[7];
        if header[6] == 0 && check & 0xf0 == 0 && check_name(check).is_none() {
            return Err(damage(
                Error::unsupported(format!(
                    "xz stream {} uses reserved check type {check}, which cannot be verified",
                    self.streams + 1
                ))
                .at(at + 7),
            ));
        }
        let stream = MtStreamBuilder::new()
            .threads(self.threads)
            .memlimit_threading(MEMLIMIT_THREADING)
            .memlimit_stop(MEMLIMIT_STOP)
            .timeout_ms(0)
            .decoder()
            .map_err(|e| {
                damage(Error::new(
                    ErrorKind::Io,
                    format!("cannot start the xz decoder: {e:?}"),
                ))
            })?;
        self.streams += 1;
        self.stream_start = at;
        self.stream_out_start = self.decoded;
        self.stream = Some(stream);
        Ok(())
    }

    fn error(&self, e: liblzma::stream::Error, total_in: u64) -> io::Error {
        use liblzma::stream::Error as E;
        let stream = self.streams;
        let seen = self.stream_start + total_in;
        let error = match e {
            E::MemLimit => Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "xz stream {stream} needs more than {} MiB of memory to decode (its dictionary is too large)",
                    MEMLIMIT_STOP >> 20
                ),
            )
            .at(self.stream_start),
            E::Options => Error::unsupported(format!(
                "xz stream {stream} uses filters or options this decoder does not support"
            ))
            .at(self.stream_start),
            E::Mem => Error::new(ErrorKind::Io, "out of memory while decoding xz"),
            _ => match self.index.as_ref().and_then(|i| i.block_at(self.decoded)) {
                Some(block) if block.uncompressed_offset + block.uncompressed_size == self.decoded => {
                    Error::new(
                        ErrorKind::Checksum,
                        format!(
                            "xz stream {}, block {}: the integrity check of the block's data does not match",
                            block.stream, block.block
                        ),
                    )
                    .at(block.compressed_offset)
                }
                Some(block) => Error::corrupt(
                    block.compressed_offset,
                    format!(
                        "xz stream {}, block {} (starting at this offset): the compressed data is corrupt (found by offset {seen}, after {} bytes of its data)",
                        block.stream,
                        block.block,
                        self.decoded - block.uncompressed_offset
                    ),
                ),
                None => Error::corrupt(
                    seen,
                    format!(
                        "xz stream {stream}: the data is corrupt or fails its integrity check (found by this offset, {} bytes into the stream's data)",
                        self.decoded - self.stream_out_start
                    ),
                ),
            },
        };
        damage(error)
    }
}

impl<R: Read> Read for XzDecoder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut stalls = 0;
        loop {
            if self.done {
                return Ok(0);
            }
            let Some(mut stream) = self.stream.take() else {
                self.next_stream()?;
                continue;
            };
            let offset = self.input.offset();
            let input = self.input.available()?;
            let at_end = input.is_empty();
            let action = if at_end { Action::Finish } else { Action::Run };
            let (in_before, out_before) = (stream.total_in(), stream.total_out());
            let status = stream.process(input, out, action);
            let used = (stream.total_in() - in_before) as usize;
            let produced = (stream.total_out() - out_before) as usize;
            let total_in = stream.total_in();
            self.input.consume(used);
            self.decoded += produced as u64;
            let status = match status {
                Ok(status) => status,
                Err(e) => return Err(self.error(e, total_in)),
            };
            if status != Status::StreamEnd {
                self.stream = Some(stream);
            }
            if produced > 0 {
                return Ok(produced);
            }
            if status == Status::StreamEnd {
                continue;
            }
            if used == 0 {
                stalls += 1;
                if at_end && (status == Status::MemNeeded || stalls > 2) {
                    return Err(damage(Error::corrupt(
                        offset,
                        format!(
                            "the file ends inside xz stream {} (started at offset {}): truncated",
                            self.streams, self.stream_start
                        ),
                    )));
                }
                if stalls > 1000 {
                    return Err(damage(Error::corrupt(offset, "the xz decoder makes no progress")));
                }
            } else {
                stalls = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liblzma::stream::{Check, MtStreamBuilder};

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 253) as u8 ^ (i >> 12) as u8).collect()
    }

    /// An xz stream of `data` in blocks of `block_size` with `check`.
    fn xz(data: &[u8], block_size: u64, check: Check) -> Vec<u8> {
        let stream = MtStreamBuilder::new()
            .threads(2)
            .block_size(block_size)
            .preset(1)
            .check(check)
            .encoder()
            .unwrap();
        let mut out = Vec::new();
        let mut encoder = liblzma::write::XzEncoder::new_stream(&mut out, stream);
        std::io::Write::write_all(&mut encoder, data).unwrap();
        encoder.finish().unwrap();
        out
    }

    fn decode(file: &[u8], index: Option<XzIndex>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        XzDecoder::new(file, 2, index)
            .read_to_end(&mut out)
            .map_err(super::super::unwrap_io)?;
        Ok(out)
    }

    #[test]
    fn index_of_concatenated_padded_streams() {
        let data = sample(3 << 20);
        let mut file = xz(&data[..1 << 20], 256 << 10, Check::Crc32);
        file.extend_from_slice(&[0; 8]);
        file.extend(xz(&data[1 << 20..], 1 << 20, Check::Sha256));
        file.extend_from_slice(&[0; 1 << 20]); // a megabyte of padding is skipped at once
        let index = read_index(&file).unwrap();
        assert_eq!(index.streams, 2);
        assert_eq!(index.blocks, 4 + 2);
        assert_eq!(index.uncompressed_size, data.len() as u64);
        assert_eq!(index.checks, ["CRC32", "SHA-256"]);
        let fifth = index.block_at((2 << 20) + 5).unwrap();
        assert_eq!(
            (fifth.stream, fifth.block, fifth.uncompressed_offset),
            (2, 6, 2 << 20)
        );
        assert!(index.block_at(3 << 20).is_none());
        assert!(decode(&file, Some(index)).unwrap() == data);
    }

    #[test]
    fn damage_names_stream_and_block() {
        let data = sample(2 << 20);
        let file = xz(&data, 512 << 10, Check::Crc64);
        let index = read_index(&file).unwrap();
        let third = index.block_positions[2];
        let mut bad = file.clone();
        bad[third.compressed_offset as usize + 100] ^= 0x40;
        let err = decode(&bad, Some(index)).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Corrupt | ErrorKind::Checksum));
        assert_eq!(err.offset(), Some(third.compressed_offset));
        assert!(err.to_string().contains("stream 1, block 3"), "{err}");
        // Without the index, still refused, with an offset.
        let err = decode(&bad, None).unwrap_err();
        assert!(err.offset().is_some());
    }

    #[test]
    fn broken_indexes_are_refused() {
        let file = xz(&sample(100_000), 1 << 20, Check::Crc64);
        for cut in [4, 12, file.len() / 2, file.len() - 4] {
            assert!(read_index(&file[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        let mut bad = file.clone();
        let at = file.len() - 16; // inside the index
        bad[at] ^= 1;
        assert_eq!(read_index(&bad).unwrap_err().kind(), ErrorKind::Corrupt);
        let mut garbage = file.clone();
        garbage.extend_from_slice(b"junk");
        assert!(read_index(&garbage).is_err());
        assert!(decode(&garbage, None)
            .unwrap_err()
            .to_string()
            .contains("trailing garbage"));
    }

    #[test]
    fn reserved_check_types_are_refused() {
        let mut file = xz(b"hello", 1 << 20, Check::Crc64);
        // Check id 2 (reserved), with the header CRC32 recomputed so only the id is wrong.
        file[7] = 2;
        let crc = crc32fast::hash(&file[6..8]).to_le_bytes();
        file[8..12].copy_from_slice(&crc);
        let err = decode(&file, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("reserved check"), "{err}");
    }
}
