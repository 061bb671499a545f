//! Hostile NBD clients, spoken to from raw sockets: malformed and truncated options and
//! requests, unknown options and commands, reads past the end, lengths over the limits,
//! disconnects mid-reply, a client that never reads its replies, more connections than the
//! cap. Each gets the protocol's error or a closed connection; the server never dies, stays
//! within its memory bound, and keeps serving everyone else. No external tools are needed.

mod common;
mod serve_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{random, texty, Layout, Rng};
use serve_support::ServerProcess;

const M: u64 = 1 << 20;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const ERR_UNSUP: u32 = (1 << 31) + 1;
const ERR_INVALID: u32 = (1 << 31) + 3;
const ERR_UNKNOWN: u32 = (1 << 31) + 6;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

struct Fixture {
    _dir: tempfile::TempDir,
    disk: Vec<u8>,
    server: ServerProcess,
}

/// A 6 MiB disk with data, zero blocks and whole zero chunks, served read-only (or through
/// an overlay) with at most 6 connections.
fn fixture(extra: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(11);
    let layout = Layout::new("hostile", 6 * M + 1000)
        .with(5000, texty(&mut rng, 300_000))
        .with(2 * M + 12345, random(&mut rng, 700_000))
        .with(6 * M + 10, vec![0xee; 900]);
    let raw = dir.path().join("disk.raw");
    layout.write_to(&raw);
    let archive = dir.path().join("disk.imgpack");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(["convert", "--quiet"])
        .arg(&raw)
        .arg("-o")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut args = vec!["--max-connections", "6"];
    let overlay = dir.path().join("disk.overlay");
    let overlay = overlay.to_str().unwrap().to_string();
    if extra.contains(&"overlay") {
        args.extend(["--overlay", &overlay]);
    }
    args.extend(extra.iter().filter(|a| **a != "overlay"));
    let server = ServerProcess::start(&archive, &dir.path().join("h.sock"), &args);
    // A raw file's size is rounded up to whole 512-byte sectors, as qemu-img reads it.
    let mut disk = layout.bytes();
    disk.resize(disk.len().div_ceil(512) * 512, 0);
    Fixture {
        disk,
        server,
        _dir: dir,
    }
}

fn connect(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// Reads the greeting and sends the client flags (fixed newstyle, no zeroes).
fn greet(socket: &Path) -> UnixStream {
    let mut s = connect(socket);
    let g = read_n(&mut s, 18);
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(be64(&g[8..]), IHAVEOPT);
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s
}

fn send_option(s: &mut UnixStream, option: u32, data: &[u8]) {
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).unwrap();
}

/// One option reply: (option, type, data).
fn option_reply(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    let h = read_n(s, 20);
    assert_eq!(be64(&h), 0x0003_e889_0455_65a9, "reply magic");
    let len = be32(&h[16..]) as usize;
    (be32(&h[8..]), be32(&h[12..]), read_n(s, len))
}

fn info_payload(name: &[u8], requests: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name);
    d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        d.extend_from_slice(&r.to_be_bytes());
    }
    d
}

/// Sends NBD_OPT_GO for the default export and reads replies up to the ACK.
fn go(s: &mut UnixStream) {
    send_option(s, 7, &info_payload(b"", &[3]));
    loop {
        let (option, kind, _) = option_reply(s);
        assert_eq!(option, 7);
        if kind == 1 {
            return;
        }
        assert_eq!(kind, 3, "info replies before the ack");
    }
}

/// A connection in transmission; with structured replies and base:allocation if asked.
fn transmission(socket: &Path, structured: bool) -> UnixStream {
    let mut s = greet(socket);
    if structured {
        send_option(&mut s, 8, &[]);
        assert_eq!(option_reply(&mut s).1, 1);
        let mut meta = 0u32.to_be_bytes().to_vec();
        meta.extend_from_slice(&1u32.to_be_bytes());
        meta.extend_from_slice(&15u32.to_be_bytes());
        meta.extend_from_slice(b"base:allocation");
        send_option(&mut s, 10, &meta);
        let (_, kind, data) = option_reply(&mut s);
        assert_eq!(kind, 4);
        assert_eq!(&data[4..], b"base:allocation");
        assert_eq!(option_reply(&mut s).1, 1);
    }
    go(&mut s);
    s
}

fn request(s: &mut UnixStream, flags: u16, command: u16, handle: u64, offset: u64, len: u32) {
    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&command.to_be_bytes());
    b.extend_from_slice(&handle.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    s.write_all(&b).unwrap();
}

/// A simple reply's error, checking magic and handle.
fn simple_reply(s: &mut UnixStream, handle: u64) -> u32 {
    let r = read_n(s, 16);
    assert_eq!(be32(&r), 0x6744_6698, "simple reply magic");
    assert_eq!(be64(&r[8..]), handle);
    be32(&r[4..])
}

/// Whether the server closed the connection (EOF or reset) within the timeout.
fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// A well-behaved client still reads the right bytes (simple replies).
fn still_serves(socket: &Path, disk: &[u8]) {
    let mut s = transmission(socket, false);
    for (offset, len) in [(0u64, 8192u32), (2 * M + 12000, 100_000), (6 * M, 1000)] {
        request(&mut s, 0, 0, 7, offset, len);
        assert_eq!(simple_reply(&mut s, 7), 0);
        let data = read_n(&mut s, len as usize);
        assert!(
            data == disk[offset as usize..offset as usize + len as usize],
            "bytes at {offset}"
        );
    }
    request(&mut s, 0, 2, 0, 0, 0); // NBD_CMD_DISC
    assert!(closed(&mut s));
}

fn socket_of(f: &Fixture) -> PathBuf {
    f.server.socket.clone()
}

#[test]
fn malformed_handshakes_are_refused_and_the_server_goes_on() {
    let f = fixture(&[]);
    let socket = socket_of(&f);
    // Unknown client flags: "the server MUST close the TCP connection".
    let mut s = connect(&socket);
    read_n(&mut s, 18);
    s.write_all(&0xffff_ffffu32.to_be_bytes()).unwrap();
    assert!(closed(&mut s));
    // An option without the IHAVEOPT magic.
    let mut s = greet(&socket);
    s.write_all(&[0x55; 16]).unwrap();
    assert!(closed(&mut s));
    // An option claiming 1 GiB of data: closed without reading it.
    let mut s = greet(&socket);
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&7u32.to_be_bytes());
    b.extend_from_slice(&(1u32 << 30).to_be_bytes());
    s.write_all(&b).unwrap();
    assert!(closed(&mut s));
    // A truncated option, then the client goes away.
    let mut s = greet(&socket);
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&7u32.to_be_bytes());
    b.extend_from_slice(&100u32.to_be_bytes());
    b.extend_from_slice(&[1; 10]);
    s.write_all(&b).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed(&mut s));
    // Disconnect in the middle of the greeting.
    drop(connect(&socket));
    // NBD_OPT_EXPORT_NAME with an unknown name can only be refused by closing.
    let mut s = greet(&socket);
    send_option(&mut s, 1, b"/etc/passwd");
    assert!(closed(&mut s));
    // Endless options: cut off.
    let mut s = greet(&socket);
    let mut replies = 0;
    for _ in 0..300 {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&99u32.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        if s.write_all(&b).is_err() {
            break; // closed already
        }
    }
    while let Ok(true) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        option_reply(&mut s).1 == ERR_UNSUP
    })) {
        replies += 1;
    }
    assert!(replies < 300, "{replies} options answered");
    still_serves(&socket, &f.disk);
}

#[test]
fn bad_options_get_the_protocols_errors() {
    let f = fixture(&[]);
    let socket = socket_of(&f);
    let mut s = greet(&socket);
    send_option(&mut s, 99, b"whatever");
    assert_eq!(option_reply(&mut s), (99, ERR_UNSUP, vec![]));
    send_option(&mut s, 5, &[]); // STARTTLS: not offered
    assert_eq!(option_reply(&mut s).1, ERR_UNSUP);
    send_option(&mut s, 3, b"x"); // LIST takes no data
    assert_eq!(option_reply(&mut s).1, ERR_INVALID);
    let mut bad = info_payload(b"", &[3]);
    bad.push(0); // lengths do not add up
    send_option(&mut s, 6, &bad);
    assert_eq!(option_reply(&mut s).1, ERR_INVALID);
    let mut huge_name = u32::MAX.to_be_bytes().to_vec();
    huge_name.extend_from_slice(&[0; 6]);
    send_option(&mut s, 7, &huge_name);
    assert_eq!(option_reply(&mut s).1, ERR_INVALID);
    send_option(&mut s, 7, &info_payload(b"../../etc/shadow", &[]));
    assert_eq!(option_reply(&mut s).1, ERR_UNKNOWN);
    send_option(&mut s, 10, &[0; 8]); // meta context before structured replies
    assert_eq!(option_reply(&mut s).1, ERR_INVALID);
    send_option(&mut s, 8, b"x"); // STRUCTURED_REPLY takes no data
    assert_eq!(option_reply(&mut s).1, ERR_INVALID);
    send_option(&mut s, 8, &[]);
    assert_eq!(option_reply(&mut s).1, 1);
    let mut meta = 0u32.to_be_bytes().to_vec();
    meta.extend_from_slice(&2u32.to_be_bytes()); // two queries promised, one sent
    meta.extend_from_slice(&5u32.to_be_bytes());
    meta.extend_from_slice(b"base:");
    send_option(&mut s, 9, &meta);
    assert_eq!(option_reply(&mut s).1, ERR_INVALID);
    // LIST: the one export, "".
    send_option(&mut s, 3, &[]);
    let (_, kind, data) = option_reply(&mut s);
    assert_eq!((kind, data), (2, 0u32.to_be_bytes().to_vec()));
    assert_eq!(option_reply(&mut s).1, 1);
    // INFO: size and flags (read-only, multi-conn).
    send_option(&mut s, 6, &info_payload(b"", &[]));
    let (_, kind, data) = option_reply(&mut s);
    assert_eq!(kind, 3);
    assert_eq!(be64(&data[2..]), f.disk.len() as u64);
    let flags = u16::from_be_bytes([data[10], data[11]]);
    assert_ne!(flags & (1 << 1), 0, "read-only");
    assert_ne!(flags & (1 << 8), 0, "multi-conn");
    assert_eq!(option_reply(&mut s).1, 1);
    // ABORT: acknowledged, then closed.
    send_option(&mut s, 2, &[]);
    assert_eq!(option_reply(&mut s).1, 1);
    assert!(closed(&mut s));
    still_serves(&socket, &f.disk);
}

#[test]
fn bad_requests_get_errors_and_the_connection_stays_usable() {
    let f = fixture(&[]);
    let socket = socket_of(&f);
    let size = f.disk.len() as u64;
    let mut s = transmission(&socket, false);
    let cases: [(u16, u16, u64, u32, u32); 9] = [
        (0, 0, size - 10, 11, EINVAL),     // read past the end
        (0, 0, u64::MAX - 5, 100, EINVAL), // offset + length overflows
        (0, 0, 0, 0, EINVAL),              // empty read
        (0, 0, 0, 64 << 20, EINVAL),       // over the 32 MiB maximum
        (0, 99, 0, 512, EINVAL),           // unknown command
        (0, 5, 0, 512, EINVAL),            // NBD_CMD_CACHE: not offered
        (1 << 15, 0, 0, 512, EINVAL),      // unknown flag
        (0, 4, 0, 4096, EPERM),            // TRIM on a read-only export
        (0, 7, 0, 4096, EINVAL),           // BLOCK_STATUS without a meta context
    ];
    for (i, (flags, command, offset, len, error)) in cases.into_iter().enumerate() {
        request(&mut s, flags, command, i as u64, offset, len);
        assert_eq!(simple_reply(&mut s, i as u64), error, "case {i}");
    }
    // A write to a read-only export: its payload is read and dropped, EPERM, and the stream
    // stays in step.
    request(&mut s, 0, 1, 50, 0, 5000);
    s.write_all(&[0xaa; 5000]).unwrap();
    assert_eq!(simple_reply(&mut s, 50), EPERM);
    request(&mut s, 0, 3, 51, 0, 0); // FLUSH
    assert_eq!(simple_reply(&mut s, 51), 0);
    request(&mut s, 0, 0, 52, 5000, 100);
    assert_eq!(simple_reply(&mut s, 52), 0);
    assert!(read_n(&mut s, 100) == f.disk[5000..5100]);
    // A write whose payload is over the maximum cannot be skipped: closed.
    request(&mut s, 0, 1, 53, 0, u32::MAX);
    assert!(closed(&mut s));
    // A request without the magic: closed.
    let mut s = transmission(&socket, false);
    s.write_all(&[0u8; 28]).unwrap();
    assert!(closed(&mut s));
    // A truncated request, then the client leaves.
    let mut s = transmission(&socket, false);
    s.write_all(&REQUEST_MAGIC.to_be_bytes()).unwrap();
    drop(s);
    still_serves(&socket, &f.disk);
}

/// Reads a structured reply: (assembled bytes with holes as zeros, hole chunks, error).
fn structured_read(s: &mut UnixStream, handle: u64, offset: u64, len: usize) -> (Vec<u8>, usize, u32) {
    let mut out = vec![0xffu8; len];
    let mut holes = 0;
    loop {
        let h = read_n(s, 20);
        assert_eq!(be32(&h), 0x668e_33ef);
        assert_eq!(be64(&h[8..]), handle);
        let flags = u16::from_be_bytes([h[4], h[5]]);
        let kind = u16::from_be_bytes([h[6], h[7]]);
        let data = read_n(s, be32(&h[16..]) as usize);
        match kind {
            0 => {}
            1 => {
                let at = (be64(&data) - offset) as usize;
                out[at..at + data.len() - 8].copy_from_slice(&data[8..]);
            }
            2 => {
                let at = (be64(&data) - offset) as usize;
                out[at..at + be32(&data[8..]) as usize].fill(0);
                holes += 1;
            }
            k if k & 0x8000 != 0 => return (out, holes, be32(&data)),
            k => panic!("unexpected chunk type {k}"),
        }
        if flags & 1 != 0 {
            return (out, holes, 0);
        }
    }
}

#[test]
fn structured_replies_send_holes_and_block_status() {
    let f = fixture(&[]);
    let socket = socket_of(&f);
    let mut s = transmission(&socket, true);
    let (offset, len) = (M - 100_000, 2 * M as usize);
    request(&mut s, 0, 0, 1, offset, len as u32);
    let (data, holes, error) = structured_read(&mut s, 1, offset, len);
    assert_eq!(error, 0);
    assert!(holes > 0, "zero regions come as hole chunks");
    assert!(data == f.disk[offset as usize..offset as usize + len]);
    // NBD_CMD_FLAG_DF: one data chunk, no holes.
    request(&mut s, 1 << 2, 0, 2, offset, len as u32);
    let (data, holes, _) = structured_read(&mut s, 2, offset, len);
    assert_eq!(holes, 0);
    assert!(data == f.disk[offset as usize..offset as usize + len]);
    // Read errors are error chunks.
    request(&mut s, 0, 0, 3, f.disk.len() as u64, 1);
    assert_eq!(structured_read(&mut s, 3, 0, 0).2, EINVAL);
    // Block status: extents that add up and match the zero blocks.
    request(&mut s, 0, 7, 4, 0, f.disk.len() as u32);
    let h = read_n(&mut s, 20);
    assert_eq!(u16::from_be_bytes([h[6], h[7]]), 5);
    let payload = read_n(&mut s, be32(&h[16..]) as usize);
    assert_eq!(be32(&payload), 1, "the context id given for base:allocation");
    let mut at = 0u64;
    for d in payload[4..].chunks(8) {
        let (len, flags) = (be32(d) as u64, be32(&d[4..]));
        let zero = f.disk[at as usize..(at + len) as usize].iter().all(|&b| b == 0);
        assert_eq!(flags == 3, zero, "extent at {at}");
        at += len;
    }
    assert_eq!(at, f.disk.len() as u64);
    request(&mut s, 1 << 3, 7, 5, 0, f.disk.len() as u32); // REQ_ONE
    let h = read_n(&mut s, 20);
    assert_eq!(be32(&h[16..]), 12, "one descriptor");
    read_n(&mut s, 12);
    still_serves(&socket, &f.disk);
}

#[test]
fn disconnects_slow_clients_and_too_many_connections_leave_others_unaffected() {
    let f = fixture(&[]);
    let socket = socket_of(&f);
    // Disconnect in the middle of large replies.
    for i in 0..10 {
        let mut s = transmission(&socket, i % 2 == 0);
        request(&mut s, 0, 0, 1, 0, 6 << 20);
        read_n(&mut s, 100);
        drop(s);
    }
    // A client that sends many reads and never reads a reply: its socket buffer fills, and it
    // alone waits.
    let mut slow = transmission(&socket, false);
    slow.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    for handle in 0..200 {
        let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&[0, 0, 0, 0]);
        b.extend_from_slice(&(handle as u64).to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(&(4u32 << 20).to_be_bytes());
        if slow.write_all(&b).is_err() {
            break;
        }
    }
    still_serves(&socket, &f.disk);
    // More connections than the cap (6, one taken by the slow client): the extra ones are
    // closed at once, the others work.
    std::thread::sleep(Duration::from_millis(300));
    let mut open: Vec<UnixStream> = (0..5).map(|_| transmission(&socket, false)).collect();
    let mut extra = connect(&socket);
    assert!(closed(&mut extra), "a connection over the cap is closed");
    for (i, s) in open.iter_mut().enumerate() {
        request(s, 0, 0, i as u64, 5000, 10);
        assert_eq!(simple_reply(s, i as u64), 0);
        assert!(read_n(s, 10) == f.disk[5000..5010]);
    }
    drop(open);
    drop(slow);
    std::thread::sleep(Duration::from_millis(200));
    still_serves(&socket, &f.disk);
}

/// A client that trickles its handshake: valid flags, then an `NBD_OPT_LIST` header
/// announcing 64 KiB of data, one byte every 300 ms until `stop` or the server hangs up.
/// Every single read of the server gets a byte in time; only a deadline on the whole
/// handshake stops it.
fn trickling_client(
    socket: &Path,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let mut s = connect(socket);
    std::thread::spawn(move || {
        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&IHAVEOPT.to_be_bytes());
        bytes.extend_from_slice(&3u32.to_be_bytes());
        bytes.extend_from_slice(&(64u32 << 10).to_be_bytes());
        bytes.resize(bytes.len() + (64 << 10), b'x');
        for b in bytes {
            if stop.load(std::sync::atomic::Ordering::Relaxed) || s.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    })
}

#[test]
fn slow_handshakes_and_idle_clients_cannot_lock_others_out() {
    let f = fixture(&["--handshake-timeout", "2", "--idle-timeout", "1"]);
    let socket = socket_of(&f);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // More trickling clients than there are connection slots (6).
    let slow: Vec<_> = (0..8).map(|_| trickling_client(&socket, stop.clone())).collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    still_serves(&socket, &f.disk);
    // Served once the handshake deadline cut the trickling clients ahead of it in the queue.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in slow {
        t.join().unwrap();
    }
    // A client in transmission that sends nothing is closed after the idle timeout.
    let mut idle = transmission(&socket, false);
    std::thread::sleep(Duration::from_millis(1600));
    assert!(closed(&mut idle), "an idle connection is closed");
    still_serves(&socket, &f.disk);
}

/// The server's resident memory in bytes (Linux).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn memory_stays_bounded_under_many_large_reads() {
    let f = fixture(&[]);
    let socket = socket_of(&f);
    let threads: Vec<_> = (0..5)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut s = transmission(&socket, i % 2 == 0);
                for round in 0..4u64 {
                    request(&mut s, 0, 0, round, 0, 6 << 20);
                    if i % 2 == 0 {
                        structured_read(&mut s, round, 0, 6 << 20);
                    } else {
                        assert_eq!(simple_reply(&mut s, round), 0);
                        read_n(&mut s, 6 << 20);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let resident = rss(f.server.pid());
    // The 64 MiB default cache holds this whole 6 MiB disk; connections stream their replies
    // in pieces, so five connections reading 6 MiB at a time add little.
    assert!(resident < 96 << 20, "resident memory {resident} bytes");
    still_serves(&socket, &f.disk);
}

/// The server's peak resident memory in bytes (Linux).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn memory_stays_bounded_with_64m_chunks_and_many_connections() {
    // Five 64 MiB chunks, each with a little data (the rest zeros, so converting is quick, but
    // each chunk still decodes to 64 MiB).
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(64);
    let mut layout = Layout::new("big-chunks", 5 * 64 * M);
    for chunk in 0..5 {
        layout = layout.with(chunk * 64 * M + 4096, random(&mut rng, 8192));
    }
    let raw = dir.path().join("disk.raw");
    layout.write_to(&raw);
    let archive = dir.path().join("disk.imgpack");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgpack"))
        .args(["convert", "--quiet", "--chunk-size", "64M"])
        .arg(&raw)
        .arg("-o")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let disk = layout.bytes();
    let server = ServerProcess::start(
        &archive,
        &dir.path().join("big.sock"),
        &["--threads", "2", "--max-connections", "12"],
    );
    // Ten connections at once, each reading 4 KiB of a different chunk than its neighbour.
    let threads: Vec<_> = (0..10u64)
        .map(|i| {
            let socket = server.socket.clone();
            let offset = (i % 5) * 64 * M + 4096 + i * 8;
            let expected = disk[offset as usize..offset as usize + 4096].to_vec();
            std::thread::spawn(move || {
                let mut s = transmission(&socket, false);
                request(&mut s, 0, 0, i, offset, 4096);
                assert_eq!(simple_reply(&mut s, i), 0);
                assert!(read_n(&mut s, 4096) == expected, "bytes at {offset}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let (peak, after) = (peak_rss(server.pid()), rss(server.pid()));
    // The 64 MiB default cache is raised to two chunks (128 MiB); two decodes at a time add
    // two chunks; spares never keep a 64 MiB buffer. Measured: 256 MiB peak, 137 MiB after;
    // before decodes and spares were bounded, 521 MiB peak and 457 MiB after.
    assert!(peak < 340 * M, "peak resident memory {} MiB", peak / M);
    assert!(
        after < 200 * M,
        "resident memory after the clients left {} MiB",
        after / M
    );
}

#[test]
fn writable_exports_check_ranges_too() {
    let f = fixture(&["overlay"]);
    let socket = socket_of(&f);
    let size = f.disk.len() as u64;
    let mut s = transmission(&socket, false);
    request(&mut s, 0, 1, 1, size - 10, 20); // write past the end
    s.write_all(&[1; 20]).unwrap();
    assert_eq!(simple_reply(&mut s, 1), ENOSPC);
    request(&mut s, 0, 6, 2, size, 4096); // WRITE_ZEROES past the end
    assert_eq!(simple_reply(&mut s, 2), ENOSPC);
    request(&mut s, 0, 4, 3, u64::MAX, 4096); // TRIM overflowing
    assert_eq!(simple_reply(&mut s, 3), ENOSPC);
    request(&mut s, 0, 1, 4, 10, 3); // a real write, unaligned
    s.write_all(&[9, 8, 7]).unwrap();
    assert_eq!(simple_reply(&mut s, 4), 0);
    request(&mut s, 1, 1, 5, size - 2, 2); // with FUA, at the unaligned end
    s.write_all(&[6, 5]).unwrap();
    assert_eq!(simple_reply(&mut s, 5), 0);
    request(&mut s, 0, 0, 6, 8, 7);
    assert_eq!(simple_reply(&mut s, 6), 0);
    let mut expected = f.disk[8..15].to_vec();
    expected[2..5].copy_from_slice(&[9, 8, 7]);
    assert_eq!(read_n(&mut s, 7), expected);
    request(&mut s, 0, 0, 7, size - 4, 4);
    assert_eq!(simple_reply(&mut s, 7), 0);
    assert_eq!(read_n(&mut s, 4)[2..], [6, 5]);
}

/// The transmission flags in the `NBD_INFO_EXPORT` reply to an `NBD_OPT_GO`.
fn go_flags(s: &mut UnixStream) -> u16 {
    send_option(s, 7, &info_payload(b"", &[]));
    let mut flags = None;
    loop {
        let (_, kind, data) = option_reply(s);
        if kind == 1 {
            return flags.expect("an NBD_INFO_EXPORT reply");
        }
        if kind == 3 && data[..2] == [0, 0] {
            flags = Some(u16::from_be_bytes([data[10], data[11]]));
        }
    }
}

#[test]
fn flags_and_contexts_follow_what_was_negotiated() {
    const SEND_DF: u16 = 1 << 7;
    let f = fixture(&["overlay"]);
    let socket = socket_of(&f);
    // NBD_FLAG_SEND_DF only with structured replies.
    let mut plain = greet(&socket);
    assert_eq!(
        go_flags(&mut plain) & SEND_DF,
        0,
        "SEND_DF without structured replies"
    );
    // ... and DF on a read is then invalid.
    request(&mut plain, 1 << 2, 0, 1, 0, 512);
    assert_eq!(simple_reply(&mut plain, 1), EINVAL);
    let mut structured = greet(&socket);
    send_option(&mut structured, 8, &[]);
    assert_eq!(option_reply(&mut structured).1, 1);
    assert_ne!(go_flags(&mut structured) & SEND_DF, 0);

    // A failing SET_META_CONTEXT still replaces the selection: none is left.
    let mut s = greet(&socket);
    send_option(&mut s, 8, &[]);
    assert_eq!(option_reply(&mut s).1, 1);
    let mut meta = 0u32.to_be_bytes().to_vec();
    meta.extend_from_slice(&1u32.to_be_bytes());
    meta.extend_from_slice(&15u32.to_be_bytes());
    meta.extend_from_slice(b"base:allocation");
    send_option(&mut s, 10, &meta);
    assert_eq!(option_reply(&mut s).1, 4);
    assert_eq!(option_reply(&mut s).1, 1);
    let mut other_export = 5u32.to_be_bytes().to_vec();
    other_export.extend_from_slice(b"other");
    other_export.extend_from_slice(&meta[4..]);
    send_option(&mut s, 10, &other_export);
    assert_eq!(option_reply(&mut s).1, ERR_UNKNOWN);
    go(&mut s);
    request(&mut s, 0, 7, 2, 0, 4096); // BLOCK_STATUS with no context selected
    assert_eq!(simple_reply(&mut s, 2), EINVAL);

    // Command flags are checked per command: FAST_ZERO is not advertised, so it fails;
    // NO_HOLE is for WRITE_ZEROES only.
    let mut w = transmission(&socket, false);
    request(&mut w, 1 << 4, 6, 3, 0, 4096); // WRITE_ZEROES with FAST_ZERO
    assert_eq!(simple_reply(&mut w, 3), EINVAL);
    request(&mut w, 1 << 1, 6, 4, 0, 4096); // WRITE_ZEROES with NO_HOLE
    assert_eq!(simple_reply(&mut w, 4), 0);
    request(&mut w, 1 << 1, 0, 5, 0, 512); // READ with NO_HOLE
    assert_eq!(simple_reply(&mut w, 5), EINVAL);
    request(&mut w, 1, 0, 6, 0, 512); // READ with FUA: accepted
    assert_eq!(simple_reply(&mut w, 6), 0);
    assert_eq!(read_n(&mut w, 512), vec![0u8; 512]);
}
