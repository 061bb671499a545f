//! Where a server listens: a Unix socket or TCP, behind one [`Listener`] and one [`Socket`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket at this path (created; refused if something else is there).
    Unix(PathBuf),
    /// TCP at this address.
    Tcp(SocketAddr),
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// Unix socket, with its path (removed when the listener is dropped).
    Unix(UnixListener, PathBuf),
    /// TCP.
    Tcp(TcpListener),
}

/// One accepted connection.
#[derive(Debug)]
pub enum Socket {
    /// Unix.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
}

impl Listener {
    /// Binds `listen`. A Unix socket path that holds a socket nobody listens on (a server
    /// that was killed) is replaced; anything else there is refused.
    pub fn bind(listen: &Listen) -> Result<Listener> {
        let listener = match listen {
            Listen::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = UnixListener::bind(path).context("listening on the socket", path)?;
                Listener::Unix(listener, path.clone())
            }
            Listen::Tcp(addr) => Listener::Tcp(
                TcpListener::bind(addr).map_err(|e| Error::io(format!("listening on {addr}"), e))?,
            ),
        };
        match &listener {
            Listener::Unix(l, _) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        }
        .map_err(|e| Error::io("setting up the listener", e))?;
        Ok(listener)
    }

    /// The NBD URI for export `name` on this listener.
    pub fn uri(&self, name: &str) -> Result<String> {
        let name = percent_encode(name);
        Ok(match self {
            Listener::Unix(_, path) => {
                let path =
                    std::path::absolute(path).map_err(|e| Error::io("resolving the socket path", e))?;
                format!(
                    "nbd+unix:///{name}?socket={}",
                    percent_encode(&path.to_string_lossy())
                )
            }
            Listener::Tcp(l) => {
                let addr = l
                    .local_addr()
                    .map_err(|e| Error::io("reading the listening address", e))?;
                format!("nbd://{addr}/{name}")
            }
        })
    }

    /// A waiting connection, if any (the listener does not block).
    pub fn accept(&self) -> io::Result<Option<Socket>> {
        let accepted = match self {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Socket::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Socket::Tcp(s)
            }),
        };
        match accepted {
            Ok(socket) => {
                socket.set_nonblocking(false)?;
                Ok(Some(socket))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn remove_stale_socket(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.file_type().is_socket() && UnixStream::connect(path).is_err() {
        return std::fs::remove_file(path).context("removing a stale socket", path);
    }
    Err(Error::invalid_argument("something is already at the socket path").in_file(path))
}

/// Percent-encodes everything but RFC 3986's unreserved characters and `/`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Socket {
    /// A second handle on the same connection.
    pub fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
        })
    }

    /// Ends both directions (wakes a thread blocked reading it).
    pub fn shutdown(&self) {
        let _ = match self {
            Socket::Unix(s) => s.shutdown(Shutdown::Both),
            Socket::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// Limits how long a read or a write may block (`None`: forever).
    pub fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
            Socket::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
        }
    }

    /// Limits how long a read may block (`None`: forever).
    pub fn set_read_timeout(&self, read: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_read_timeout(read),
            Socket::Tcp(s) => s.set_read_timeout(read),
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_nonblocking(on),
            Socket::Tcp(s) => s.set_nonblocking(on),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.read(buf),
            Socket::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.write(buf),
            Socket::Tcp(s) => s.write(buf),
        }
    }

    // A reply's header and data leave in one `writev` (the default would send the header
    // alone first).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.write_vectored(bufs),
            Socket::Tcp(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uri_parts_are_percent_encoded() {
        assert_eq!(super::percent_encode("/tmp/a b?.sock"), "/tmp/a%20b%3F.sock");
    }
}
