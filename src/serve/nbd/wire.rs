//! The NBD protocol's numbers, named as in the protocol document (`doc/proto.md` of the
//! NetworkBlockDevice/nbd project), and the fixed-size messages built from them.
//!
//! Every integer on the wire is big-endian ("network byte order", section "Conventions").

use std::io::{self, IoSlice, Read, Write};

// "Newstyle negotiation": the server's greeting.
/// `NBDMAGIC`, the first 8 bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle greeting's second magic, and the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every option reply ("Fixed newstyle negotiation").
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

// "Handshake flags" and "Client flags".
/// The server speaks fixed newstyle.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// The server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// The client speaks fixed newstyle.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// The client wants the 124 zero bytes left out.
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

// "Transmission flags".
/// Always set: the flags field is meaningful.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// The export is read-only.
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_CMD_FLUSH` is supported.
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_CMD_FLAG_FUA` is supported.
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
/// `NBD_CMD_TRIM` is supported.
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
/// `NBD_CMD_WRITE_ZEROES` is supported.
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// `NBD_CMD_FLAG_DF` is supported (structured replies only).
pub const NBD_FLAG_SEND_DF: u16 = 1 << 7;
/// Several connections see one consistent export; a flush on one covers all.
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// "Option types".
/// Choose an export and enter transmission, old-fashioned (no error reply possible).
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
/// Soft disconnect.
pub const NBD_OPT_ABORT: u32 = 2;
/// List the exports.
pub const NBD_OPT_LIST: u32 = 3;
/// Upgrade to TLS (not offered here).
pub const NBD_OPT_STARTTLS: u32 = 5;
/// Describe an export.
pub const NBD_OPT_INFO: u32 = 6;
/// Describe an export and enter transmission.
pub const NBD_OPT_GO: u32 = 7;
/// Use structured replies.
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
/// List metadata contexts.
pub const NBD_OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts for `NBD_CMD_BLOCK_STATUS`.
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;

// "Option reply types".
/// The option succeeded (the final reply).
pub const NBD_REP_ACK: u32 = 1;
/// One export's name, in reply to `NBD_OPT_LIST`.
pub const NBD_REP_SERVER: u32 = 2;
/// One piece of information about an export, in reply to `NBD_OPT_INFO`/`NBD_OPT_GO`.
pub const NBD_REP_INFO: u32 = 3;
/// One metadata context, in reply to the meta-context options.
pub const NBD_REP_META_CONTEXT: u32 = 4;
/// The option is unknown to this server.
pub const NBD_REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// Refused by policy.
pub const NBD_REP_ERR_POLICY: u32 = (1 << 31) + 2;
/// The option was malformed, or sent at the wrong time.
pub const NBD_REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// No such export.
pub const NBD_REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
/// The server is shutting down.
pub const NBD_REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
/// The request is too big.
pub const NBD_REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// "Info types" (`NBD_OPT_INFO` and `NBD_OPT_GO`).
/// Size and transmission flags; always sent.
pub const NBD_INFO_EXPORT: u16 = 0;
/// The export's canonical name.
pub const NBD_INFO_NAME: u16 = 1;
/// A human-readable description.
pub const NBD_INFO_DESCRIPTION: u16 = 2;
/// Minimum, preferred and maximum block sizes.
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

// "Request types" and "Command flags".
/// Magic of every request.
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// Read.
pub const NBD_CMD_READ: u16 = 0;
/// Write (the payload follows the request).
pub const NBD_CMD_WRITE: u16 = 1;
/// Disconnect: no reply.
pub const NBD_CMD_DISC: u16 = 2;
/// Make completed writes durable.
pub const NBD_CMD_FLUSH: u16 = 3;
/// Discard.
pub const NBD_CMD_TRIM: u16 = 4;
/// Write zeros without a payload.
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
/// Report the state of a range in the selected metadata contexts.
pub const NBD_CMD_BLOCK_STATUS: u16 = 7;
/// Force unit access: durable before the reply.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
/// Reply to a read in one data chunk (no holes).
pub const NBD_CMD_FLAG_DF: u16 = 1 << 2;
/// Block status: one extent only.
pub const NBD_CMD_FLAG_REQ_ONE: u16 = 1 << 3;

// "Simple reply message" and "Structured reply chunk message".
/// Magic of a simple reply.
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const NBD_STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Structured reply flag: the last chunk of this reply.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;
/// Chunk type: nothing (only as the final chunk).
pub const NBD_REPLY_TYPE_NONE: u16 = 0;
/// Chunk type: data at an offset.
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Chunk type: a range that reads as zeros.
pub const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Chunk type: extents of one metadata context.
pub const NBD_REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Chunk type: an error.
pub const NBD_REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// "Error values".
/// Operation not permitted (a write to a read-only export).
pub const NBD_EPERM: u32 = 1;
/// Input/output error (a damaged chunk).
pub const NBD_EIO: u32 = 5;
/// Out of memory.
pub const NBD_ENOMEM: u32 = 12;
/// Invalid argument (out of range, too long, unknown command).
pub const NBD_EINVAL: u32 = 22;
/// No space left (a write past the end).
pub const NBD_ENOSPC: u32 = 28;
/// Value too large (a `NBD_CMD_FLAG_DF` read that cannot be one chunk).
pub const NBD_EOVERFLOW: u32 = 75;
/// Not supported.
pub const NBD_ENOTSUP: u32 = 95;
/// The server is shutting down.
pub const NBD_ESHUTDOWN: u32 = 108;

// "Metadata querying" / "`base:` metadata context".
/// The one metadata context offered.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation`: the range is not allocated.
pub const NBD_STATE_HOLE: u32 = 1 << 0;
/// `base:allocation`: the range reads as zeros.
pub const NBD_STATE_ZERO: u32 = 1 << 1;

/// "String" in "Conventions": no string may be longer than this.
pub const MAX_STRING: u32 = 4096;

/// An option request's fixed part ("Fixed newstyle negotiation": magic, option, length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// `IHAVEOPT` if the client is well behaved.
    pub magic: u64,
    /// The option.
    pub option: u32,
    /// Length of the option's data.
    pub length: u32,
}

impl OptionHeader {
    /// Reads the 16 bytes of an option header.
    pub fn read(r: &mut impl Read) -> io::Result<Self> {
        let mut b = [0u8; 16];
        r.read_exact(&mut b)?;
        Ok(OptionHeader {
            magic: u64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
            option: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
            length: u32::from_be_bytes(b[12..16].try_into().expect("4 bytes")),
        })
    }
}

/// Writes one option reply ("Fixed newstyle negotiation": magic, option, type, length, data).
pub fn write_option_reply(w: &mut impl Write, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b)
}

/// A request ("Request message"): 28 bytes, then the payload of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// Command (`NBD_CMD_*`).
    pub command: u16,
    /// The client's handle, echoed in the reply.
    pub handle: u64,
    /// Offset in the export.
    pub offset: u64,
    /// Length of the range (and of a write's payload).
    pub length: u32,
}

/// Length of a request's fixed part.
pub const REQUEST_LEN: usize = 28;

impl Request {
    /// Decodes a request; `None` if its magic is wrong (the client is not speaking NBD).
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Option<Self> {
        if u32::from_be_bytes(b[0..4].try_into().expect("4 bytes")) != NBD_REQUEST_MAGIC {
            return None;
        }
        Some(Request {
            flags: u16::from_be_bytes(b[4..6].try_into().expect("2 bytes")),
            command: u16::from_be_bytes(b[6..8].try_into().expect("2 bytes")),
            handle: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
            offset: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
            length: u32::from_be_bytes(b[24..28].try_into().expect("4 bytes")),
        })
    }
}

/// The 16 bytes of a simple reply ("Simple reply message"): magic, error, handle.
pub fn simple_reply(handle: u64, error: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

/// The 20 bytes heading a structured reply chunk ("Structured reply chunk message"): magic,
/// flags, type, handle, length of the chunk's payload.
pub fn structured_header(handle: u64, flags: u16, kind: u16, length: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&NBD_STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..20].copy_from_slice(&length.to_be_bytes());
    b
}

/// The 28 bytes heading an `NBD_REPLY_TYPE_OFFSET_DATA` chunk of `data_len` bytes at
/// `offset` ("`NBD_REPLY_TYPE_OFFSET_DATA`": the structured header, then the offset).
pub fn data_chunk_head(handle: u64, flags: u16, offset: u64, data_len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..20].copy_from_slice(&structured_header(
        handle,
        flags,
        NBD_REPLY_TYPE_OFFSET_DATA,
        data_len + 8,
    ));
    b[20..].copy_from_slice(&offset.to_be_bytes());
    b
}

/// Writes every byte of `bufs`, in as few `writev` calls as the writer allows (the standard
/// library's `write_all_vectored` is not stable yet).
pub fn write_all_vectored(out: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
