//! [`Server`]: the accept loop, one thread per connection (at most `max_connections`), and a
//! clean stop when the control's cancel flag is raised (SIGINT/SIGTERM in the binary).
//!
//! Slow or idle clients cannot hold the slots for ever: the whole handshake has a deadline
//! (not just each read), at most `max_handshakes` connections may be in it at once (new ones
//! wait in the listen queue meanwhile, so the slots of clients already through are not used
//! up by clients that never finish), and a connection in transmission that sends nothing for
//! `idle_timeout` is closed.

use std::collections::HashMap;
use std::io::BufReader;
use std::io::Read;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::export::Export;
use super::nbd::handshake::{handshake, ExportInfo, Outcome};
use super::nbd::reply_writer::ReplyWriter;
use super::nbd::transmission::Transmission;
use super::nbd::wire::*;
use super::socket::{Listener, Socket};
use super::stats::{ServeStats, StatsSnapshot};
use super::ServeOptions;
use crate::error::Result;
use crate::read_at::ReadAt;

/// How often the accept loop looks at the cancel flag.
const POLL: Duration = Duration::from_millis(20);
/// How long a stalled client may leave a reply unread before the connection is dropped.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

type Connections = Arc<Mutex<HashMap<u64, Socket>>>;

/// A bound server, ready to [`run`](Server::run).
pub struct Server<R: ReadAt + 'static> {
    listener: Listener,
    export: Arc<Export<R>>,
    info: ExportInfo,
    options: ServeOptions,
    uri: String,
}

impl<R: ReadAt + 'static> Server<R> {
    /// A server for `export` on `listener`.
    pub(crate) fn new(listener: Listener, export: Export<R>, options: ServeOptions) -> Result<Self> {
        let mut flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_DF;
        if export.writable() {
            flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FUA;
        } else {
            flags |= NBD_FLAG_READ_ONLY | NBD_FLAG_CAN_MULTI_CONN;
        }
        let info = ExportInfo {
            name: options.export_name.clone(),
            size: export.size(),
            flags,
            max_payload: options.max_request,
        };
        let uri = listener.uri(&options.export_name)?;
        Ok(Server {
            listener,
            export: Arc::new(export),
            info,
            options,
            uri,
        })
    }

    /// The URI clients connect to.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The bytes of decoded chunks cached (the requested size, or more if that could not
    /// hold a few chunks).
    pub fn cache_size(&self) -> u64 {
        self.options.cache_size
    }

    /// The counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.export.stats().snapshot()
    }

    /// Accepts and serves connections until the cancel flag is raised; then closes every
    /// connection, waits for their threads, makes the overlay durable, and returns the totals.
    pub fn run(self) -> Result<StatsSnapshot> {
        let connections: Connections = Arc::new(Mutex::new(HashMap::new()));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let next_id = AtomicU64::new(0);
        let handshaking = Arc::new(AtomicUsize::new(0));
        let max_handshakes = self
            .options
            .max_handshakes
            .clamp(1, self.options.max_connections.max(1));
        while self.options.control.check().is_ok() {
            threads.retain(|t| !t.is_finished());
            if handshaking.load(Ordering::Acquire) >= max_handshakes {
                // Leave new clients in the listen queue until a handshake ends.
                std::thread::sleep(POLL);
                continue;
            }
            let socket = match self.listener.accept() {
                Ok(Some(socket)) => socket,
                Ok(None) => {
                    std::thread::sleep(POLL);
                    continue;
                }
                // A connection that failed while being accepted (reset, out of descriptors):
                // the server goes on.
                Err(_) => {
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            if threads.len() >= self.options.max_connections {
                socket.shutdown();
                continue;
            }
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let Ok(handle) = socket.try_clone() else { continue };
            lock(&connections).insert(id, handle);
            ServeStats::add(&self.export.stats().connections, 1);
            let (export, info, registry) = (
                Arc::clone(&self.export),
                self.info.clone(),
                Arc::clone(&connections),
            );
            let limits = Limits {
                max_request: self.options.max_request,
                handshake_timeout: self.options.handshake_timeout,
                idle_timeout: self.options.idle_timeout,
            };
            handshaking.fetch_add(1, Ordering::AcqRel);
            let in_handshake = InHandshake(Some(Arc::clone(&handshaking)));
            let spawned = std::thread::Builder::new()
                .name(format!("imgpack-nbd-{id}"))
                .spawn(move || {
                    if serve_connection(socket, &export, &info, &limits, in_handshake).is_err() {
                        ServeStats::add(&export.stats().protocol_errors, 1);
                    }
                    lock(&registry).remove(&id);
                });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(_) => {
                    if let Some(socket) = lock(&connections).remove(&id) {
                        socket.shutdown();
                    }
                }
            }
        }
        for socket in lock(&connections).values() {
            socket.shutdown();
        }
        for thread in threads {
            let _ = thread.join();
        }
        self.export.flush()?;
        Ok(self.export.stats().snapshot())
    }
}

fn lock(connections: &Connections) -> std::sync::MutexGuard<'_, HashMap<u64, Socket>> {
    connections.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one connection may use.
struct Limits {
    max_request: u32,
    handshake_timeout: Duration,
    idle_timeout: Option<Duration>,
}

/// Counts a connection as in the handshake until [`end`](InHandshake::end) or drop (a thread
/// that could not start, a connection that failed in the handshake).
struct InHandshake(Option<Arc<AtomicUsize>>);

impl InHandshake {
    fn end(&mut self) {
        if let Some(count) = self.0.take() {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for InHandshake {
    fn drop(&mut self) {
        self.end();
    }
}

/// One connection: the handshake under its deadline, then transmission until the client
/// leaves or stays idle too long.
fn serve_connection<R: ReadAt + 'static>(
    socket: Socket,
    export: &Export<R>,
    info: &ExportInfo,
    limits: &Limits,
    mut in_handshake: InHandshake,
) -> std::io::Result<()> {
    // Reads wait at most until the deadline (DeadlineReader); a write (a client not reading
    // its option replies) at most the timeout itself, so a handshake ends within twice it.
    socket.set_timeouts(Some(limits.handshake_timeout), Some(limits.handshake_timeout))?;
    let timed = DeadlineReader {
        socket: socket.try_clone()?,
        deadline: Some(Instant::now() + limits.handshake_timeout),
    };
    let mut reader = BufReader::with_capacity(64 << 10, timed);
    // Small replies are gathered; a read's data leaves with its header, uncopied.
    let mut writer = ReplyWriter::with_capacity(64 << 10, socket.try_clone()?);
    let mut both = ReadWrite {
        reader: &mut reader,
        writer: &mut writer,
    };
    let negotiated = match handshake(&mut both, info)? {
        Outcome::Transmission(negotiated) => negotiated,
        Outcome::Closed => {
            std::io::Write::flush(&mut writer)?;
            return Ok(());
        }
    };
    std::io::Write::flush(&mut writer)?;
    in_handshake.end();
    // A guest not touching its disk sends nothing for a while; past the idle timeout its
    // slot goes to someone else (clients reconnect).
    reader.get_mut().deadline = None;
    socket.set_timeouts(limits.idle_timeout, Some(STALL_TIMEOUT))?;
    let result = Transmission {
        input: reader,
        output: writer,
        export,
        negotiated,
        max_payload: limits.max_request,
    }
    .run();
    socket.shutdown();
    result
}

/// The socket's reading side; while `deadline` is set, each read may only wait until then
/// (so a client sending a byte now and then cannot stretch the handshake for ever).
struct DeadlineReader {
    socket: Socket,
    deadline: Option<Instant>,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the NBD handshake took too long",
                ));
            }
            self.socket.set_read_timeout(Some(left))?;
        }
        self.socket.read(buf)
    }
}

/// A reader and a writer as one stream, for the handshake.
struct ReadWrite<'a, R, W> {
    reader: &'a mut R,
    writer: &'a mut W,
}

impl<R: std::io::Read, W: std::io::Write> std::io::Read for ReadWrite<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}

impl<R, W: std::io::Write> std::io::Write for ReadWrite<'_, R, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}
