//! gzip (RFC 1952) decoding: every member of a multi-member file, each header and trailer
//! checked, the deflate data inflated by zlib-rs (through flate2's raw `Decompress`).
//!
//! A file is one or more members, back to back (pigz and `cat a.gz b.gz` both make several):
//!
//! | bytes        | field                                                         |
//! |--------------|---------------------------------------------------------------|
//! | 0..2         | magic `1f 8b`                                                 |
//! | 2            | compression method, 8 (deflate) only                          |
//! | 3            | flags: 1 FTEXT, 2 FHCRC, 4 FEXTRA, 8 FNAME, 16 FCOMMENT; 0xe0 reserved (must be 0) |
//! | 4..10        | mtime (u32 LE), extra flags, OS                               |
//! | if FEXTRA    | XLEN (u16 LE), then XLEN bytes                                |
//! | if FNAME     | file name, NUL-terminated                                     |
//! | if FCOMMENT  | comment, NUL-terminated                                       |
//! | if FHCRC     | low 16 bits of the CRC32 of the header bytes above (u16 LE)   |
//! | ...          | raw deflate data                                              |
//! | 8 bytes      | CRC32 of the member's data (u32 LE), ISIZE = its length mod 2^32 (u32 LE) |
//!
//! After the last member, zero bytes are tolerated (as gzip does: tape blocks and some
//! uploaders pad), anything else is refused as trailing garbage.

use std::io::{self, Read};

use flate2::{Decompress, FlushDecompress, Status};

use super::buffer::Input;
use super::damage;
use crate::error::{Error, ErrorKind};
use crate::input::bytes::le32;

const FHCRC: u8 = 2;
const FEXTRA: u8 = 4;
const FNAME: u8 = 8;
const FCOMMENT: u8 = 16;
const RESERVED: u8 = 0xe0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Body,
    Trailer,
    Between,
    Done,
}

/// Decodes a gzip file (all of its members) as a `Read` of the uncompressed bytes.
///
/// Damage is reported as an `io::Error` wrapping an [`Error`] of kind `Corrupt` or `Checksum`
/// that names the member (counted from 1) and the compressed offset.
pub struct GzipDecoder<R> {
    input: Input<R>,
    inflate: Decompress,
    state: State,
    /// The current member, counted from 1.
    member: u64,
    member_start: u64,
    crc: crc32fast::Hasher,
    member_size: u64,
}

impl<R: Read> GzipDecoder<R> {
    /// Decodes the gzip file read from `reader`.
    pub fn new(reader: R) -> Self {
        GzipDecoder {
            input: Input::new(reader),
            inflate: Decompress::new(false),
            state: State::Header,
            member: 1,
            member_start: 0,
            crc: crc32fast::Hasher::new(),
            member_size: 0,
        }
    }

    fn error(&self, kind: ErrorKind, offset: u64, message: impl std::fmt::Display) -> io::Error {
        damage(Error::new(kind, format!("gzip member {}: {message}", self.member)).at(offset))
    }

    fn truncated(&self) -> io::Error {
        self.error(
            ErrorKind::Corrupt,
            self.input.offset(),
            format!(
                "the file ends inside the member (started at offset {}): truncated",
                self.member_start
            ),
        )
    }

    /// The next header byte, hashed for FHCRC; the end of the file here means truncation.
    fn header_byte(&mut self, hash: &mut crc32fast::Hasher) -> io::Result<u8> {
        match self.input.byte()? {
            Some(b) => {
                hash.update(&[b]);
                Ok(b)
            }
            None => Err(self.truncated()),
        }
    }

    fn read_header(&mut self) -> io::Result<()> {
        let start = self.input.offset();
        self.member_start = start;
        let mut hash = crc32fast::Hasher::new();
        let mut fixed = [0u8; 10];
        for byte in fixed.iter_mut() {
            *byte = self.header_byte(&mut hash)?;
        }
        if fixed[..2] != [0x1f, 0x8b] {
            return Err(self.error(
                ErrorKind::Corrupt,
                start,
                "no gzip magic (1f 8b) where the member should start",
            ));
        }
        if fixed[2] != 8 {
            return Err(self.error(
                ErrorKind::Corrupt,
                start + 2,
                format!(
                    "unknown compression method {} (only 8, deflate, exists)",
                    fixed[2]
                ),
            ));
        }
        let flags = fixed[3];
        if flags & RESERVED != 0 {
            return Err(self.error(
                ErrorKind::Corrupt,
                start + 3,
                format!("reserved header flag bits are set (flags 0x{flags:02x})"),
            ));
        }
        if flags & FEXTRA != 0 {
            let low = self.header_byte(&mut hash)?;
            let high = self.header_byte(&mut hash)?;
            for _ in 0..u16::from_le_bytes([low, high]) {
                self.header_byte(&mut hash)?;
            }
        }
        for flag in [FNAME, FCOMMENT] {
            if flags & flag != 0 {
                while self.header_byte(&mut hash)? != 0 {}
            }
        }
        if flags & FHCRC != 0 {
            let at = self.input.offset();
            let want = (hash.clone().finalize() & 0xffff) as u16;
            let low = self.header_byte(&mut hash)?;
            let high = self.header_byte(&mut hash)?;
            let stored = u16::from_le_bytes([low, high]);
            if stored != want {
                return Err(self.error(
                    ErrorKind::Checksum,
                    at,
                    format!("header CRC16 mismatch: stored 0x{stored:04x}, computed 0x{want:04x}"),
                ));
            }
        }
        Ok(())
    }

    fn read_trailer(&mut self) -> io::Result<()> {
        let at = self.input.offset();
        let mut trailer = [0u8; 8];
        for byte in trailer.iter_mut() {
            *byte = self.input.byte()?.ok_or_else(|| self.truncated())?;
        }
        let stored_crc = le32(&trailer, 0);
        let stored_size = le32(&trailer, 4);
        let crc = std::mem::take(&mut self.crc).finalize();
        if stored_crc != crc {
            return Err(self.error(
                ErrorKind::Checksum,
                at,
                format!("CRC32 mismatch: stored 0x{stored_crc:08x}, data gives 0x{crc:08x}"),
            ));
        }
        let size = self.member_size as u32; // ISIZE is the length modulo 2^32
        if stored_size != size {
            return Err(self.error(
                ErrorKind::Checksum,
                at + 4,
                format!(
                    "ISIZE mismatch: stored {stored_size}, the member decoded to {} bytes",
                    self.member_size
                ),
            ));
        }
        Ok(())
    }

    /// After a member: another member, zero padding to the end, or the end.
    fn between_members(&mut self) -> io::Result<State> {
        let next = self.input.available()?;
        match next.first() {
            None => Ok(State::Done),
            Some(0x1f) => {
                self.member += 1;
                self.member_size = 0;
                self.inflate.reset(false);
                Ok(State::Header)
            }
            Some(0) => loop {
                let rest = self.input.available()?;
                if rest.is_empty() {
                    return Ok(State::Done);
                }
                if let Some(i) = rest.iter().position(|&b| b != 0) {
                    let at = self.input.offset() + i as u64;
                    return Err(damage(Error::corrupt(
                        at,
                        format!(
                            "trailing garbage after gzip member {} and zero padding",
                            self.member
                        ),
                    )));
                }
                let n = rest.len();
                self.input.consume(n);
            },
            Some(_) => Err(damage(Error::corrupt(
                self.input.offset(),
                format!("trailing garbage after gzip member {}", self.member),
            ))),
        }
    }

    fn inflate(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut stalls = 0;
        loop {
            let offset = self.input.offset();
            let input = self.input.available()?;
            let at_end = input.is_empty();
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self.inflate.decompress(input, out, FlushDecompress::None);
            let used = (self.inflate.total_in() - in_before) as usize;
            let produced = (self.inflate.total_out() - out_before) as usize;
            let status = status.map_err(|e| {
                self.error(
                    ErrorKind::Corrupt,
                    offset + used as u64,
                    format!("deflate data is corrupt ({e})"),
                )
            })?;
            self.input.consume(used);
            self.crc.update(&out[..produced]);
            self.member_size += produced as u64;
            if status == Status::StreamEnd {
                self.state = State::Trailer;
                return Ok(produced);
            }
            if produced > 0 {
                return Ok(produced);
            }
            if used == 0 {
                if at_end {
                    return Err(self.truncated());
                }
                stalls += 1;
                if stalls > 2 {
                    return Err(self.error(
                        ErrorKind::Corrupt,
                        offset,
                        "the deflate decoder makes no progress",
                    ));
                }
            }
        }
    }
}

impl<R: Read> Read for GzipDecoder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Header => {
                    self.read_header()?;
                    self.state = State::Body;
                }
                State::Body => {
                    let n = self.inflate(out)?;
                    if n > 0 {
                        return Ok(n);
                    }
                }
                State::Trailer => {
                    self.read_trailer()?;
                    self.state = State::Between;
                }
                State::Between => self.state = self.between_members()?,
                State::Done => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A gzip member with the given flags' fields, made by hand (the crate writes none of them).
    fn member(data: &[u8], flags: u8) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, flags, 1, 2, 3, 4, 0, 3];
        if flags & FEXTRA != 0 {
            out.extend_from_slice(&[4, 0, b'a', b'b', 2, 0]);
        }
        if flags & FNAME != 0 {
            out.extend_from_slice(b"disk.raw\0");
        }
        if flags & FCOMMENT != 0 {
            out.extend_from_slice(b"a comment\0");
        }
        if flags & FHCRC != 0 {
            let crc = crc32fast::hash(&out) as u16;
            out.extend_from_slice(&crc.to_le_bytes());
        }
        let mut compress = Compress::new(Compression::fast(), false);
        let mut deflated = Vec::with_capacity(data.len() + 1024);
        compress
            .compress_vec(data, &mut deflated, FlushCompress::Finish)
            .unwrap();
        out.extend_from_slice(&deflated);
        out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    fn decode(file: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        GzipDecoder::new(file)
            .read_to_end(&mut out)
            .map_err(super::super::unwrap_io)?;
        Ok(out)
    }

    fn sample() -> Vec<u8> {
        (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()
    }

    #[test]
    fn every_header_field_and_several_members() {
        let data = sample();
        let mut file = Vec::new();
        for flags in [
            0,
            FEXTRA,
            FNAME,
            FCOMMENT,
            FHCRC,
            FEXTRA | FNAME | FCOMMENT | FHCRC | 1,
        ] {
            file.extend(member(&data[..1000 + flags as usize * 997], flags));
        }
        let want: Vec<u8> = [
            0,
            FEXTRA,
            FNAME,
            FCOMMENT,
            FHCRC,
            FEXTRA | FNAME | FCOMMENT | FHCRC | 1,
        ]
        .iter()
        .flat_map(|&f| data[..1000 + f as usize * 997].to_vec())
        .collect();
        assert_eq!(decode(&file).unwrap(), want);
        file.extend_from_slice(&[0u8; 4096]);
        assert_eq!(decode(&file).unwrap(), want, "zero padding is tolerated");
        file.push(1);
        let err = decode(&file).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("trailing garbage"), "{err}");
    }

    #[test]
    fn header_crc_crc32_and_isize_are_checked() {
        let data = sample();
        let good = member(&data, FHCRC | FNAME);
        let hcrc_at = 10 + 9;
        let mut bad = good.clone();
        bad[hcrc_at] ^= 1;
        let err = decode(&bad).unwrap_err();
        assert_eq!(
            (err.kind(), err.offset()),
            (ErrorKind::Checksum, Some(hcrc_at as u64))
        );

        let mut bad = good.clone();
        let crc_at = good.len() - 8;
        bad[crc_at] ^= 1;
        let err = decode(&bad).unwrap_err();
        assert_eq!(
            (err.kind(), err.offset()),
            (ErrorKind::Checksum, Some(crc_at as u64))
        );
        assert!(err.to_string().contains("gzip member 1: CRC32"), "{err}");

        let mut bad = good.clone();
        bad[good.len() - 1] ^= 1;
        let err = decode(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Checksum);
        assert!(err.to_string().contains("ISIZE"), "{err}");

        let mut two = good.clone();
        two.extend_from_slice(&bad);
        assert!(decode(&two).unwrap_err().to_string().contains("gzip member 2"));
    }

    #[test]
    fn truncation_anywhere_is_refused() {
        let file = member(&sample(), FNAME | FEXTRA | FHCRC);
        for cut in [
            1,
            5,
            12,
            20,
            30,
            100,
            file.len() / 2,
            file.len() - 8,
            file.len() - 1,
        ] {
            let err = decode(&file[..cut]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "cut at {cut}: {err}");
        }
    }

    #[test]
    fn reserved_flags_and_methods_are_refused() {
        let mut file = member(b"x", 0);
        file[3] = 0x20;
        assert!(decode(&file).unwrap_err().to_string().contains("reserved"));
        let mut file = member(b"x", 0);
        file[2] = 7;
        assert!(decode(&file)
            .unwrap_err()
            .to_string()
            .contains("compression method"));
    }
}
