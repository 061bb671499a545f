//! The NBD protocol, server side, written from the protocol document (`doc/proto.md` of the
//! NetworkBlockDevice/nbd project; section names are quoted in each function's doc).
//!
//! - [`wire`]: the protocol's constants and fixed-size messages, named as in the document;
//! - [`handshake`]: fixed newstyle negotiation and the options (`NBD_OPT_GO`, `INFO`, `LIST`,
//!   `EXPORT_NAME`, `STRUCTURED_REPLY`, `LIST_META_CONTEXT`/`SET_META_CONTEXT`, `ABORT`);
//! - [`transmission`]: the commands (`READ`, `WRITE`, `FLUSH`, `TRIM`, `WRITE_ZEROES`,
//!   `BLOCK_STATUS`, `DISC`) with simple and structured replies;
//! - [`reply_writer`]: a connection's output, sending a read's data with its header in one
//!   `writev`.
//!
//! The crates.io `nbd` crate (0.3) was not used: it describes itself as a first sketch and has
//! neither structured replies nor block status, which this server needs.

pub mod handshake;
pub mod reply_writer;
pub mod transmission;
pub mod wire;
