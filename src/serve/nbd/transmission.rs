//! The transmission phase ("Transmission" in the NBD protocol document): requests read one at
//! a time, each answered before the next is read, one function per command.
//!
//! Every request is checked before it is acted on: its magic (a wrong one closes the
//! connection), its flags, its range against the export's size and its length against the
//! largest payload advertised. A write's payload is read and applied in pieces, so a
//! connection never buffers more than [`PIECE`] bytes of it.

use std::io::{self, BufRead, IoSlice, Read, Write};

use super::handshake::{protocol_error, Negotiated, BASE_ALLOCATION_ID};
use super::wire::*;
use crate::error::ErrorKind;
use crate::read_at::ReadAt;
use crate::serve::export::{Allocation, Export, Piece, ReadFailure};
use crate::serve::stats::ServeStats;

/// Largest piece of a write's payload read from the socket at once.
pub const PIECE: usize = 1 << 20;
/// Most extents in one block-status reply.
const MAX_EXTENTS: usize = 2048;
/// Zeros to copy from when a hole must be sent as data.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// "`NBD_CMD_FLAG_NO_HOLE`" (bit 1): valid on `NBD_CMD_WRITE_ZEROES` only.
const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// The command flags valid on `command` ("Command flags"): FUA on any command (it is
/// advertised for writable exports, and a server "MUST accept all commands with this bit
/// set"), DF on reads once structured replies are negotiated, NO_HOLE on WRITE_ZEROES,
/// REQ_ONE on BLOCK_STATUS. `NBD_CMD_FLAG_FAST_ZERO` (bit 4) is never valid: this server
/// does not advertise `NBD_FLAG_SEND_FAST_ZERO`, so it "SHOULD fail" it with `EINVAL`.
fn valid_flags(command: u16, negotiated: Negotiated) -> u16 {
    NBD_CMD_FLAG_FUA
        | match command {
            NBD_CMD_READ if negotiated.structured => NBD_CMD_FLAG_DF,
            NBD_CMD_WRITE_ZEROES => NBD_CMD_FLAG_NO_HOLE,
            NBD_CMD_BLOCK_STATUS => NBD_CMD_FLAG_REQ_ONE,
            _ => 0,
        }
}

/// One connection in transmission.
pub struct Transmission<'a, R: ReadAt, In: BufRead, Out: Write> {
    /// Requests come from here.
    pub input: In,
    /// Replies go here (buffered; flushed after each reply).
    pub output: Out,
    /// The export.
    pub export: &'a Export<R>,
    /// What the handshake agreed.
    pub negotiated: Negotiated,
    /// Largest request length accepted.
    pub max_payload: u32,
}

impl<R: ReadAt + 'static, In: BufRead, Out: Write> Transmission<'_, R, In, Out> {
    /// Serves requests until the client disconnects (`Ok`) or the connection breaks (`Err`).
    pub fn run(&mut self) -> io::Result<()> {
        loop {
            let mut header = [0u8; REQUEST_LEN];
            match self.input.read_exact(&mut header) {
                Ok(()) => {}
                // Between requests, a client going away, or staying idle past the idle
                // timeout (the socket's read timeout), is an ordinary end.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
            let request = Request::decode(&header)
                .ok_or_else(|| protocol_error("request without the request magic"))?;
            ServeStats::add(&self.export.stats().requests, 1);
            if request.command == NBD_CMD_DISC {
                return Ok(());
            }
            self.handle(request)?;
            self.output.flush()?;
        }
    }

    fn handle(&mut self, request: Request) -> io::Result<()> {
        if request.flags & !valid_flags(request.command, self.negotiated) != 0 {
            if request.command == NBD_CMD_WRITE {
                self.discard_payload(request)?;
            }
            return self.reply_error(request, NBD_EINVAL);
        }
        match request.command {
            NBD_CMD_READ => self.cmd_read(request),
            NBD_CMD_WRITE => self.cmd_write(request),
            NBD_CMD_FLUSH => self.cmd_flush(request),
            NBD_CMD_TRIM | NBD_CMD_WRITE_ZEROES => self.cmd_zero(request),
            NBD_CMD_BLOCK_STATUS => self.cmd_block_status(request),
            // "NBD_CMD_CACHE" and anything unknown: "EINVAL".
            _ => self.reply_error(request, NBD_EINVAL),
        }
    }

    /// The range's end if it lies inside the export and is not empty.
    fn range(&self, request: Request) -> Option<u64> {
        let end = request.offset.checked_add(u64::from(request.length))?;
        (request.length > 0 && end <= self.export.size()).then_some(end)
    }

    /// "`NBD_CMD_READ` (0)": with structured replies, data chunks and hole chunks
    /// ("`NBD_REPLY_TYPE_OFFSET_DATA`", "`NBD_REPLY_TYPE_OFFSET_HOLE`"), the last one flagged
    /// `NBD_REPLY_FLAG_DONE`; an error found half-way is an error chunk. Without them, a simple
    /// reply and the data, after every chunk needed was decoded and checked (a simple reply
    /// cannot report an error once data has been sent).
    fn cmd_read(&mut self, request: Request) -> io::Result<()> {
        if request.length > self.max_payload || self.range(request).is_none() {
            return self.reply_error(request, NBD_EINVAL);
        }
        let (offset, len) = (request.offset, u64::from(request.length));
        self.export.read_ahead(offset, len);
        let stats = self.export.stats();
        let structured = self.negotiated.structured;
        let one_chunk = !structured || request.flags & NBD_CMD_FLAG_DF != 0;
        if one_chunk {
            if let Err(e) = self.export.check_readable(offset, len) {
                return self.reply_error(request, errno_of(&e));
            }
            if structured {
                let header = structured_header(
                    request.handle,
                    NBD_REPLY_FLAG_DONE,
                    NBD_REPLY_TYPE_OFFSET_DATA,
                    request.length + 8,
                );
                self.output.write_all(&header)?;
                self.output.write_all(&offset.to_be_bytes())?;
            } else {
                self.output.write_all(&simple_reply(request.handle, 0))?;
            }
            let output = &mut self.output;
            let result = self
                .export
                .read(offset, len, &mut |piece| write_piece_as_data(output, piece));
            return match result {
                Ok(()) => {
                    ServeStats::add(&stats.bytes_served, len);
                    Ok(())
                }
                // The reply's length is promised already: the connection cannot go on.
                Err(ReadFailure::Export(e)) => Err(io::Error::other(e.to_string())),
                Err(ReadFailure::Client(e)) => Err(e),
            };
        }
        let handle = request.handle;
        let output = &mut self.output;
        let end = offset + len;
        let mut position = offset;
        let result = self.export.read(offset, len, &mut |piece| {
            let at = position;
            let piece_len = match piece {
                Piece::Data(bytes) => bytes.len() as u64,
                Piece::Zero(n) => n,
            };
            position += piece_len;
            // The last piece ends the reply itself ("NBD_REPLY_FLAG_DONE" may be set on any
            // chunk), which saves a separate `NBD_REPLY_TYPE_NONE` chunk and its write.
            let flags = if position == end { NBD_REPLY_FLAG_DONE } else { 0 };
            match piece {
                Piece::Data(bytes) => {
                    let head = data_chunk_head(handle, flags, at, bytes.len() as u32);
                    // Header and data in one `writev`, straight from the cached chunk.
                    write_all_vectored(output, &mut [IoSlice::new(&head), IoSlice::new(bytes)])
                }
                Piece::Zero(n) => {
                    let header = structured_header(handle, flags, NBD_REPLY_TYPE_OFFSET_HOLE, 12);
                    output.write_all(&header)?;
                    output.write_all(&at.to_be_bytes())?;
                    output.write_all(&(n as u32).to_be_bytes())
                }
            }
        });
        match result {
            // Every piece was sent, the last one with the DONE flag.
            Ok(()) => {
                ServeStats::add(&stats.bytes_served, len);
                Ok(())
            }
            Err(ReadFailure::Export(e)) => self.structured_error(handle, errno_of(&e), &e.to_string()),
            Err(ReadFailure::Client(e)) => Err(e),
        }
    }

    /// "`NBD_CMD_WRITE` (1)": the payload follows the request. Refused with `NBD_EPERM` on a
    /// read-only export and `NBD_ENOSPC` past the end (the payload is read and dropped first,
    /// so the stream stays in step); a payload over the advertised maximum cannot be skipped
    /// safely, so it closes the connection.
    fn cmd_write(&mut self, request: Request) -> io::Result<()> {
        if request.length > self.max_payload {
            return Err(protocol_error("write payload over the advertised maximum"));
        }
        if !self.export.writable() {
            self.discard_payload(request)?;
            return self.reply_error(request, NBD_EPERM);
        }
        if self.range(request).is_none() {
            self.discard_payload(request)?;
            let error = if request.length == 0 {
                NBD_EINVAL
            } else {
                NBD_ENOSPC
            };
            return self.reply_error(request, error);
        }
        let mut buf = vec![0u8; (request.length as usize).min(PIECE)];
        let mut done = 0u64;
        let mut failure = None;
        while done < u64::from(request.length) {
            let take = (u64::from(request.length) - done).min(PIECE as u64) as usize;
            self.input.read_exact(&mut buf[..take])?;
            if failure.is_none() {
                if let Err(e) = self.export.write(request.offset + done, &buf[..take]) {
                    failure = Some(errno_of(&e));
                }
            }
            done += take as u64;
        }
        if failure.is_none() && request.flags & NBD_CMD_FLAG_FUA != 0 {
            failure = self.export.flush().err().map(|e| errno_of(&e));
        }
        self.reply_error(request, failure.unwrap_or(0))
    }

    /// "`NBD_CMD_FLUSH` (3)": every write completed before it is made durable.
    fn cmd_flush(&mut self, request: Request) -> io::Result<()> {
        let error = match self.export.flush() {
            Ok(()) => 0,
            Err(e) => errno_of(&e),
        };
        self.reply_error(request, error)
    }

    /// "`NBD_CMD_TRIM` (4)" and "`NBD_CMD_WRITE_ZEROES` (6)": into the overlay.
    fn cmd_zero(&mut self, request: Request) -> io::Result<()> {
        if !self.export.writable() {
            return self.reply_error(request, NBD_EPERM);
        }
        if self.range(request).is_none() {
            let error = if request.length == 0 {
                NBD_EINVAL
            } else {
                NBD_ENOSPC
            };
            return self.reply_error(request, error);
        }
        let (offset, len) = (request.offset, u64::from(request.length));
        let mut result = if request.command == NBD_CMD_TRIM {
            self.export.trim(offset, len)
        } else {
            self.export.write_zeroes(offset, len)
        };
        if result.is_ok() && request.flags & NBD_CMD_FLAG_FUA != 0 {
            result = self.export.flush();
        }
        self.reply_error(request, result.err().map_or(0, |e| errno_of(&e)))
    }

    /// "`NBD_CMD_BLOCK_STATUS` (7)": one `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for
    /// `base:allocation`, descriptors of (length, `NBD_STATE_HOLE | NBD_STATE_ZERO` or 0),
    /// covering a prefix of the range; one descriptor with `NBD_CMD_FLAG_REQ_ONE`.
    fn cmd_block_status(&mut self, request: Request) -> io::Result<()> {
        if !self.negotiated.structured || !self.negotiated.base_allocation {
            return self.reply_error(request, NBD_EINVAL);
        }
        if self.range(request).is_none() {
            return self.reply_error(request, NBD_EINVAL);
        }
        let max = if request.flags & NBD_CMD_FLAG_REQ_ONE != 0 {
            1
        } else {
            MAX_EXTENTS
        };
        let extents = self
            .export
            .extents(request.offset, u64::from(request.length), max);
        let mut payload = Vec::with_capacity(4 + 8 * extents.len());
        payload.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
        for (len, state) in extents {
            let flags = match state {
                Allocation::Data => 0,
                Allocation::Zero => NBD_STATE_HOLE | NBD_STATE_ZERO,
            };
            payload.extend_from_slice(&(len as u32).to_be_bytes());
            payload.extend_from_slice(&flags.to_be_bytes());
        }
        let header = structured_header(
            request.handle,
            NBD_REPLY_FLAG_DONE,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            payload.len() as u32,
        );
        self.output.write_all(&header)?;
        self.output.write_all(&payload)
    }

    /// Reads a write's payload (at most the advertised maximum) and drops it.
    fn discard_payload(&mut self, request: Request) -> io::Result<()> {
        if request.length > self.max_payload {
            return Err(protocol_error("write payload over the advertised maximum"));
        }
        let copied = io::copy(
            &mut (&mut self.input).take(u64::from(request.length)),
            &mut io::sink(),
        )?;
        if copied != u64::from(request.length) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// A reply without data: simple (allowed for any command but a read once structured
    /// replies are on), or an error chunk for a structured read.
    fn reply_error(&mut self, request: Request, error: u32) -> io::Result<()> {
        if request.command == NBD_CMD_READ && self.negotiated.structured && error != 0 {
            return self.structured_error(request.handle, error, "");
        }
        self.output.write_all(&simple_reply(request.handle, error))
    }

    /// "`NBD_REPLY_TYPE_ERROR`": error (32 bits), message length (16 bits), message.
    fn structured_error(&mut self, handle: u64, error: u32, message: &str) -> io::Result<()> {
        let message = &message.as_bytes()[..message.len().min(1024)];
        let header = structured_header(
            handle,
            NBD_REPLY_FLAG_DONE,
            NBD_REPLY_TYPE_ERROR,
            6 + message.len() as u32,
        );
        self.output.write_all(&header)?;
        self.output.write_all(&error.to_be_bytes())?;
        self.output.write_all(&(message.len() as u16).to_be_bytes())?;
        self.output.write_all(message)
    }
}

/// Writes a piece as plain bytes (holes as zeros).
fn write_piece_as_data(output: &mut impl Write, piece: Piece<'_>) -> io::Result<()> {
    match piece {
        Piece::Data(bytes) => output.write_all(bytes),
        Piece::Zero(mut n) => {
            while n > 0 {
                let take = n.min(ZEROS.len() as u64) as usize;
                output.write_all(&ZEROS[..take])?;
                n -= take as u64;
            }
            Ok(())
        }
    }
}

/// The NBD error for an export failure: a host file system out of space or quota (writing
/// the overlay) is `NBD_ENOSPC`, as the client's own disk full would be, not an I/O error.
fn errno_of(error: &crate::error::Error) -> u32 {
    match error.kind() {
        ErrorKind::InvalidArgument => NBD_EINVAL,
        ErrorKind::LimitExceeded => NBD_ENOSPC,
        _ if out_of_space(error) => NBD_ENOSPC,
        _ => NBD_EIO,
    }
}

/// Whether `error` was caused by `ENOSPC` or `EDQUOT`.
fn out_of_space(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            let errno = rustix::io::Errno::from_io_error(io);
            if errno == Some(rustix::io::Errno::NOSPC) || errno == Some(rustix::io::Errno::DQUOT) {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_or_quota_is_enospc() {
        let error =
            |errno: i32| crate::error::Error::io("writing the overlay", io::Error::from_raw_os_error(errno));
        assert_eq!(errno_of(&error(libc_errno::ENOSPC)), NBD_ENOSPC);
        assert_eq!(errno_of(&error(libc_errno::EDQUOT)), NBD_ENOSPC);
        assert_eq!(errno_of(&error(libc_errno::EIO)), NBD_EIO);
    }

    mod libc_errno {
        pub const ENOSPC: i32 = rustix::io::Errno::NOSPC.raw_os_error();
        pub const EDQUOT: i32 = rustix::io::Errno::DQUOT.raw_os_error();
        pub const EIO: i32 = rustix::io::Errno::IO.raw_os_error();
    }
}
