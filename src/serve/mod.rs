//! Serving an archive over NBD: a block device backed by the archive, decoded lazily, with an
//! optional copy-on-write overlay, so a server can boot from an image before (or without) the
//! image being written out.
//!
//! - [`serve`] binds a [`Server`] for an open [`ArchiveReader`] from any [`ReadAt`] source (a
//!   file today; an object store's ranged reads plug in the same way);
//! - [`export`]: reads, writes and block status of the served disk, protocol-free;
//! - [`cache`]: chunks decoded on demand into a bounded cache, with read-ahead;
//! - [`nbd`]: the protocol; [`socket`]: Unix and TCP listeners; [`server`]: connections and
//!   shutdown; [`stats`]: what was served.
//!
//! ```no_run
//! use imgpack::archive::reader::ArchiveReader;
//! use imgpack::serve::{serve, Listen, ServeOptions};
//! let archive = ArchiveReader::open_path("disk.imgpack".as_ref())?;
//! let options = ServeOptions { listen: Listen::Unix("/tmp/disk.sock".into()), ..Default::default() };
//! let server = serve(archive, None, options)?;
//! println!("qemu-img info {}", server.uri());
//! let totals = server.run()?; // until options.control's cancel flag is raised
//! # Ok::<(), imgpack::Error>(())
//! ```

pub mod cache;
pub mod export;
pub mod nbd;
pub mod server;
pub mod socket;
pub mod stats;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use cache::DEFAULT_CACHE_SIZE;
pub use server::Server;
pub use socket::Listen;
pub use stats::{ServeStats, StatsSnapshot};

use crate::archive::reader::{ArchiveReader, ChunkCheck};
use crate::control::Control;
use crate::error::Result;
use crate::overlay::{Access, BaseIdentity, Overlay};
use crate::read_at::ReadAt;
use cache::ChunkCache;
use export::Export;
use socket::Listener;

/// The default largest request (32 MiB, the protocol's customary maximum payload).
pub const DEFAULT_MAX_REQUEST: u32 = 32 << 20;
/// The default cap on simultaneous connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// The default cap on connections still in the handshake: the rest of the connection slots
/// stay for clients that got through it.
pub const DEFAULT_MAX_HANDSHAKES: usize = 4;
/// The default time a client has for its whole handshake, from accept to `NBD_OPT_GO`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a connection in transmission may send nothing before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The default TCP address (loopback, the NBD port).
pub const DEFAULT_TCP: &str = "127.0.0.1:10809";

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen. Default: TCP on `127.0.0.1:10809`.
    pub listen: Listen,
    /// The export's name. Default `""`, so `nbd+unix:///?socket=PATH` reaches it.
    pub export_name: String,
    /// Bytes of decoded chunks kept. Default [`DEFAULT_CACHE_SIZE`] (64 MiB); raised to
    /// hold at least [`cache::MIN_CACHED_CHUNKS`] chunks.
    pub cache_size: u64,
    /// Decoder threads for read-ahead and multi-chunk reads. Default: one per core.
    pub threads: Option<usize>,
    /// Simultaneous connections; more are closed at once. Default 16.
    pub max_connections: usize,
    /// Connections still in the handshake; while this many are, no new connection is
    /// accepted (they wait in the listen queue). Default 4, at most `max_connections`.
    pub max_handshakes: usize,
    /// The whole handshake must be done within this time from accept. Default 10 s.
    pub handshake_timeout: Duration,
    /// A connection in transmission that sends no request for this long is closed
    /// (`None`: never). Default 300 s.
    pub idle_timeout: Option<Duration>,
    /// Largest read or write accepted (advertised as the maximum block size). Default 32 MiB.
    pub max_request: u32,
    /// What each decoded chunk is checked against before a byte of it is served. Default
    /// [`ChunkCheck::CrcOnly`]: the crc catches damage, and the SHA-256 (the chunk's
    /// identity, checked by `verify`, builds and downloads) would double the CPU of a miss;
    /// [`ChunkCheck::Full`] checks it too (`--check-sha256`).
    pub chunk_check: ChunkCheck,
    /// The cancel flag stops the server cleanly.
    pub control: Control,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: Listen::Tcp(DEFAULT_TCP.parse().expect("a valid address")),
            export_name: String::new(),
            cache_size: DEFAULT_CACHE_SIZE,
            threads: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_request: DEFAULT_MAX_REQUEST,
            chunk_check: ChunkCheck::CrcOnly,
            control: Control::default(),
        }
    }
}

/// Binds a server for `archive`, writable through the overlay at `overlay` (created if
/// missing; refused if made over another archive). Nothing is decoded until a client reads.
pub fn serve<R: ReadAt + 'static>(
    archive: ArchiveReader<R>,
    overlay: Option<&Path>,
    options: ServeOptions,
) -> Result<Server<R>> {
    if options.export_name.len() > nbd::wire::MAX_STRING as usize {
        return Err(crate::error::Error::invalid_argument(
            "the export name is longer than 4096 bytes",
        ));
    }
    let overlay = overlay
        .map(|path| Overlay::open(path, BaseIdentity::of(&archive), Access::Serve))
        .transpose()?;
    let stats = Arc::new(ServeStats::default());
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    // A cache that cannot hold a few chunks makes concurrent readers evict each other's
    // chunks before using them: raise it (the CLI says so).
    let mut options = options;
    let chunk_size = archive.geometry().chunk_size();
    options.cache_size = options.cache_size.max(cache::MIN_CACHED_CHUNKS * chunk_size);
    let cache = ChunkCache::new(
        archive,
        options.cache_size,
        threads,
        options.chunk_check,
        Arc::clone(&stats),
    )?;
    let export = Export::new(cache, overlay, options.cache_size, stats);
    let listener = Listener::bind(&options.listen)?;
    Server::new(listener, export, options)
}
