//! Hostile object-store replies: a store that answers a ranged GET with the whole object
//! (200), sends a short body, a wrong Content-Range, or garbage instead of XML. Each ends in
//! a clear error naming the object, quickly, never a panic or a hang. The store here is a
//! loopback HTTP responder that misbehaves on purpose (a real server would not), in the
//! spirit of the short-read readers of the format tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// What the responder sends for a request line (`GET /bkt/key?x HTTP/1.1`) and its `Range`.
type Reply = fn(&str, Option<&str>) -> Vec<u8>;

fn serve(reply: Reply) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream, reply));
        }
    });
    port
}

fn answer(stream: TcpStream, reply: Reply) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let (mut range, mut length) = (None, 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("range:") {
            range = Some(value.trim().to_string());
        }
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let mut stream = stream;
    let _ = stream.write_all(&reply(request.trim(), range.as_deref()));
}

const SIZE: usize = 100_000;

fn head(status: &str, length: usize, extra: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: {length}\r\nLast-Modified: Thu, 03 Dec 2026 12:00:00 GMT\r\nETag: \"abc\"\r\n{extra}Connection: close\r\n\r\n"
    )
}

/// HEAD: an object of SIZE bytes; anything else from `get`.
fn object(request: &str, get: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    if request.starts_with("HEAD") {
        head("200 OK", SIZE, "").into_bytes()
    } else {
        get()
    }
}

fn imgpack(port: u16, args: &[&str]) -> Output {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIAHOSTILE")
        .env("AWS_SECRET_ACCESS_KEY", "hostile-secret-never-printed")
        .args(args)
        .output()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{args:?} took {:?}",
        start.elapsed()
    );
    out
}

/// Asserts a clean failure (exit 1, not a panic's 101) whose message says `says`.
#[track_caller]
fn refused(out: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // (A warning may come first: a hostile store also refuses the clean-up.)
    assert!(stderr.lines().any(|l| l.starts_with("error: ")), "{stderr}");
    assert!(stderr.contains(says), "{stderr:?} does not say {says:?}");
    assert!(!stderr.contains("hostile-secret"), "{stderr}");
}

#[test]
fn a_ranged_get_answered_with_the_whole_object_is_refused() {
    let port = serve(|request, _| {
        object(request, || {
            let mut reply = head("200 OK", SIZE, "").into_bytes();
            reply.extend(vec![7u8; SIZE]);
            reply
        })
    });
    refused(
        &imgpack(port, &["extract", "s3://bkt/a.imgpack", "-o", "/nonexistent/x"]),
        "s3://bkt/a.imgpack",
    );
    refused(
        &imgpack(port, &["verify", "s3://bkt/a.imgpack"]),
        "s3://bkt/a.imgpack",
    );
}

#[test]
fn a_short_ranged_body_is_refused() {
    let port = serve(|request, range| {
        object(request, || {
            let range = range
                .unwrap_or("bytes=0-0")
                .trim_start_matches("bytes=")
                .to_string();
            let (start, end) = range.split_once('-').unwrap();
            let (start, end): (usize, usize) = (start.parse().unwrap(), end.parse().unwrap());
            let extra = format!("Content-Range: bytes {start}-{end}/{SIZE}\r\n");
            let mut reply = head("206 Partial Content", end - start + 1, &extra).into_bytes();
            // Half the promised bytes, then the connection closes.
            reply.extend(vec![7u8; (end - start) / 2]);
            reply
        })
    });
    refused(
        &imgpack(port, &["info", "s3://bkt/a.imgpack"]),
        "s3://bkt/a.imgpack",
    );
}

#[test]
fn a_wrong_content_range_is_refused() {
    let port = serve(|request, _| {
        object(request, || {
            let extra = format!("Content-Range: bytes 5-14/{SIZE}\r\n");
            let mut reply = head("206 Partial Content", 10, &extra).into_bytes();
            reply.extend([7u8; 10]);
            reply
        })
    });
    refused(
        &imgpack(port, &["info", "s3://bkt/a.imgpack"]),
        "s3://bkt/a.imgpack",
    );
}

#[test]
fn garbage_instead_of_xml_is_refused() {
    let port = serve(|_, _| {
        let body = b"<<<not xml at all &&&";
        let mut reply = head("200 OK", body.len(), "Content-Type: application/xml\r\n").into_bytes();
        reply.extend(body);
        reply
    });
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIAHOSTILE")
        .env("AWS_SECRET_ACCESS_KEY", "hostile-secret-never-printed")
        .env(
            "IMGPACK_CATALOG",
            format!("sqlite:{}", dir.path().join("c.db").display()),
        )
        .args([
            "images",
            "--library",
            "s3://bkt/lib",
            "--account",
            "acc-xxxxx",
            "list",
        ])
        .output()
        .unwrap();
    refused(&out, "s3://bkt/lib");
}

#[test]
fn a_streaming_body_cut_short_fails_the_registration() {
    let port = serve(|request, _| {
        if request.contains("list-type=2") {
            let body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>bkt</Name><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>";
            let mut reply = head("200 OK", body.len(), "Content-Type: application/xml\r\n").into_bytes();
            reply.extend(body.as_slice());
            return reply;
        }
        // The archive's multipart upload and its marker go through as a store would take them.
        if request.starts_with("POST") && request.contains("uploads") {
            let body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult><Bucket>bkt</Bucket><Key>k</Key><UploadId>u1</UploadId></InitiateMultipartUploadResult>";
            let mut reply = head("200 OK", body.len(), "Content-Type: application/xml\r\n").into_bytes();
            reply.extend(body.as_slice());
            return reply;
        }
        if request.starts_with("PUT") {
            return head("200 OK", 0, "").into_bytes();
        }
        if request.starts_with("DELETE") {
            return b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_vec();
        }
        // The upload: a million bytes promised, a thousand sent.
        let mut reply = head("200 OK", 1_000_000, "").into_bytes();
        reply.extend([0u8; 1000]);
        reply
    });
    let dir = tempfile::tempdir().unwrap();
    let register = |stream_read: &str| {
        Command::new(env!("CARGO_BIN_EXE_imgpack"))
            .env("IMGPACK_S3_STREAM_READ", stream_read)
            .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "AKIAHOSTILE")
            .env("AWS_SECRET_ACCESS_KEY", "hostile-secret-never-printed")
            .env(
                "IMGPACK_CATALOG",
                format!("sqlite:{}", dir.path().join("c.db").display()),
            )
            .args([
                "images",
                "--library",
                "s3://bkt/lib",
                "--account",
                "acc-xxxxx",
                "register",
                "-a",
                "x86_64",
                "-n",
                "x",
                "-s",
                "disk.raw",
            ])
            .output()
            .unwrap()
    };
    // One streaming GET: the body ends early.
    refused(
        &register("single"),
        "s3://bkt/lib/incoming/acc-xxxxx/disk.raw at byte 1000",
    );
    // Parallel ranged GETs (the default): a range answered with a whole (short) body.
    refused(
        &register("ranged"),
        "s3://bkt/lib/incoming/acc-xxxxx/disk.raw bytes 0-1000000",
    );
}

/// Every request line the write-refusing store saw.
static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[test]
fn a_bucket_refusing_writes_fails_the_registration_and_keeps_the_upload() {
    let port = serve(|request, _| {
        SEEN.lock().unwrap().push(request.to_string());
        let xml = |status: &str, body: &str| {
            let mut reply = head(status, body.len(), "Content-Type: application/xml\r\n").into_bytes();
            reply.extend(body.as_bytes());
            reply
        };
        if request.starts_with("GET") && request.contains("list-type=2") {
            return xml(
                "200 OK",
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>bkt</Name><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>",
            );
        }
        if request.starts_with("HEAD") {
            return head("200 OK", 65536, "").into_bytes();
        }
        if request.starts_with("GET") {
            // The upload: a 64 KiB raw disk, served whole and correctly.
            let mut reply = head("200 OK", 65536, "").into_bytes();
            reply.extend(vec![9u8; 65536]);
            return reply;
        }
        // Every write: what S3 answers a caller without write permission.
        xml(
            "403 Forbidden",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_imgpack"))
            .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "AKIAHOSTILE")
            .env("AWS_SECRET_ACCESS_KEY", "hostile-secret-never-printed")
            .env(
                "IMGPACK_CATALOG",
                format!("sqlite:{}", dir.path().join("c.db").display()),
            )
            .args(["images", "--library", "s3://bkt/lib", "--account", "acc-xxxxx"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["register", "-a", "x86_64", "-n", "x", "-s", "disk.raw"]);
    refused(&out, "starting the multipart upload of s3://bkt/lib/images/");
    refused(&out, "privileges");
    let listed = run(&["list", "--json"]);
    let images: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(images[0]["status"], "failed", "{images}");
    let seen = SEEN.lock().unwrap();
    assert!(
        !seen
            .iter()
            .any(|r| r.contains("incoming") && (r.starts_with("DELETE") || r.contains("delete"))),
        "the upload was deleted: {seen:?}"
    );
}
