//! A real S3-compatible server for tests: moto's server mode (PyPI `moto[s3]`, in memory,
//! with multipart uploads, ranged GETs and ListMultipartUploads), started on a free loopback
//! port per test and killed when dropped. `.ci/run` installs it; where it is missing the test
//! skips (a failure under `IMGPACK_REQUIRE_ORACLES=1`).
//!
//! ```ignore
//! let Some(server) = S3Server::start() else { return };
//! Command::new(imgpack).envs(server.env()).args(["images", "--library", &server.library_url("lib"), ...])
//! ```
//!
//! [`LinkCut`] sits between imgpack and the server as a plain TCP relay that a test can cut
//! (every connection dropped, new ones refused) and mend: a network outage or a server that
//! went away, with the server's state kept for the checks afterwards.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::oracle;

/// The test bucket's name.
pub const BUCKET: &str = "imgpack-test";
/// Credentials given to imgpack; the secret is checked never to appear in any output.
pub const ACCESS_KEY: &str = "AKIAIMGPACKTEST";
pub const SECRET_KEY: &str = "imgpack-Secret-9f3b1c7e5d2a-never-print";

/// A running moto server with one bucket.
pub struct S3Server {
    child: Child,
    port: u16,
    _log_dir: tempfile::TempDir,
}

/// The moto server executable: `IMGPACK_MOTO_SERVER`, else `moto_server` on the PATH.
fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("IMGPACK_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    oracle::on_path("moto_server").then(|| PathBuf::from("moto_server"))
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3Server {
    /// Starts a server and creates [`BUCKET`]; `None` (after a skip) if moto is not installed.
    pub fn start() -> Option<S3Server> {
        let Some(program) = moto_server() else {
            oracle::skip("moto_server not found (bash .ci/run installs it)");
            return None;
        };
        let log_dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(log_dir.path().join("moto.log")).unwrap();
        let port = free_port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let server = S3Server {
            child,
            port,
            _log_dir: log_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((status, _)) = try_http(port, "PUT", &format!("/{BUCKET}"), &[]) {
                assert_eq!(status, 200, "creating the bucket");
                return Some(server);
            }
            assert!(Instant::now() < deadline, "moto_server did not answer in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn library_url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The `AWS_*` variables that point imgpack at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        env_for_port(self.port)
    }

    /// Every key in the bucket (an unsigned ListObjectsV2, which moto accepts).
    pub fn keys(&self) -> Vec<String> {
        let (status, body) = http(self.port, "GET", &format!("/{BUCKET}?list-type=2&max-keys=1000"));
        assert_eq!(status, 200, "{body}");
        tag_values(&body, "Key")
    }

    /// The bytes of object `key` (an unsigned GET).
    pub fn get(&self, key: &str) -> Vec<u8> {
        let (status, body) = http_bytes(self.port, "GET", &format!("/{BUCKET}/{key}"), &[]);
        assert_eq!(status, 200, "GET {key}: {}", String::from_utf8_lossy(&body));
        body
    }

    /// Stores `bytes` as object `key` (an unsigned PUT): a test damaging the store.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let (status, body) = http_bytes(self.port, "PUT", &format!("/{BUCKET}/{key}"), bytes);
        assert_eq!(status, 200, "PUT {key}: {}", String::from_utf8_lossy(&body));
    }

    /// Deletes object `key` (an unsigned DELETE).
    pub fn delete(&self, key: &str) {
        let (status, body) = http_bytes(self.port, "DELETE", &format!("/{BUCKET}/{key}"), &[]);
        assert_eq!(status, 204, "DELETE {key}: {}", String::from_utf8_lossy(&body));
    }

    /// The keys of the multipart uploads in progress (ListMultipartUploads).
    pub fn multipart_uploads(&self) -> Vec<String> {
        let (status, body) = http(self.port, "GET", &format!("/{BUCKET}?uploads"));
        assert_eq!(status, 200, "{body}");
        tag_values(&body, "Key")
    }

    /// Stops the server (its state is lost).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `AWS_*` variables for a server on `port`.
pub fn env_for_port(port: u16) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The texts of every `<tag>...</tag>` in an XML reply.
fn tag_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split(&close).next())
        .map(str::to_string)
        .collect()
}

/// One HTTP/1.1 request, not signed; (status, body).
pub fn http(port: u16, method: &str, target: &str) -> (u16, String) {
    let (status, body) = http_bytes(port, method, target, &[]);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One HTTP/1.1 request sending `body`, not signed; (status, body of the reply).
pub fn http_bytes(port: u16, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
    try_http(port, method, target, body).unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// An `Authorization` header naming [`ACCESS_KEY`] with a signature moto does not check: it
/// serves object reads only to a request that names a key.
fn unchecked_authorization() -> String {
    format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0")
}

fn try_http(port: u16, method: &str, target: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        unchecked_authorization(),
        body.len()
    )?;
    stream.write_all(body)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
        std::io::Error::other(format!(
            "not an HTTP reply: {:?}",
            String::from_utf8_lossy(&reply)
        ))
    })?;
    let head = String::from_utf8_lossy(&reply[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP reply: {head:?}")))?;
    Ok((status, reply[end + 4..].to_vec()))
}

/// A TCP relay in front of a server that a test can cut and mend; see the module docs.
pub struct LinkCut {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Bytes of replies relayed so far (a test can wait until a transfer is under way).
    relayed: Arc<AtomicU64>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl LinkCut {
    /// A relay on a free loopback port to the server on `upstream`.
    pub fn new(upstream: u16) -> LinkCut {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let relayed = Arc::new(AtomicU64::new(0));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (cut2, relayed2, live2) = (Arc::clone(&cut), Arc::clone(&relayed), Arc::clone(&live));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                {
                    let mut live = live2.lock().unwrap();
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let counter = Arc::clone(&relayed2);
                std::thread::spawn(move || pump(client, server, None));
                std::thread::spawn(move || pump(s2, c2, Some(counter)));
            }
        });
        LinkCut {
            port,
            cut,
            relayed,
            live,
        }
    }

    /// The relay's port (give imgpack `env_for_port(link.port())`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bytes of replies relayed so far.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::SeqCst)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, counter: Option<Arc<AtomicU64>>) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
                if let Some(counter) = &counter {
                    counter.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
