//! Telling whether the process that is creating an image is still alive.
//!
//! A registration stores a [`Lease`]: its pid, its host name, its process table (boot id and
//! pid namespace), its start time (so a reused pid is not mistaken for it) and an expiry it
//! keeps renewing. The process table is consulted only when the lease was taken in the very
//! process table we are in (same host name, boot id and pid namespace); every other lease is
//! judged by its expiry alone. With a shared catalog (PostgreSQL) that is the rule for other
//! hosts, and also for containers on this host (same boot id, other pid namespace) and for
//! another machine that happens to share our host name (a different boot id does not prove a
//! reboot of this machine, so it no longer counts as one).
//!
//! Timing, for registrars on many hosts: a lease lasts [`LEASE_SECONDS`] (60 s) and the
//! registration renews it every 10 s, so six renewals in a row must fail (a catalog outage,
//! a stalled host) before anyone may reap it. Expiries are compared in one clock: the
//! PostgreSQL store stores them in the server's clock and converts on the way in and out, so
//! hosts whose clocks disagree by minutes still agree on the expiry.

use std::path::Path;

use super::store::Lease;

/// How long a lease lasts without renewal, in seconds.
pub const LEASE_SECONDS: i64 = 60;

/// This machine and process, as a lease records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    /// Host name (empty if unknown).
    pub host: String,
    /// The process table: the boot id, and the pid namespace after a `/` (`boot/pid:[4026531836]`);
    /// empty if unknown.
    pub boot_id: String,
}

impl HostIdentity {
    /// The identity of the running machine.
    pub fn current() -> HostIdentity {
        HostIdentity {
            host: read_trimmed(Path::new("/proc/sys/kernel/hostname")).unwrap_or_default(),
            boot_id: process_table_id().unwrap_or_default(),
        }
    }

    /// A lease for the running process, expiring `LEASE_SECONDS` after `now`.
    pub fn lease_for_self(&self, now: i64) -> Lease {
        let pid = std::process::id();
        Lease {
            pid,
            host: self.host.clone(),
            boot_id: self.boot_id.clone(),
            start_time: process_start_time(pid).unwrap_or(0),
            expires_at: now.saturating_add(LEASE_SECONDS),
        }
    }

    /// Why the lease's holder is known to be gone, or `None` while it may still be working.
    pub fn why_stale(&self, lease: &Lease, now: i64) -> Option<String> {
        let same_host = !self.host.is_empty() && lease.host == self.host;
        if same_host && !self.boot_id.is_empty() && lease.boot_id == self.boot_id {
            return match process_start_time(lease.pid) {
                Some(start) if start == lease.start_time => None,
                _ => Some(format!("the registering process {} is gone", lease.pid)),
            };
        }
        (now > lease.expires_at).then(|| {
            format!(
                "the registering process {} on {} stopped renewing its lease",
                lease.pid,
                if lease.host.is_empty() {
                    "an unknown host"
                } else {
                    &lease.host
                }
            )
        })
    }
}

/// A lease as one line of text, for a marker object in the store (`images upload` has no
/// catalog record to hold one): pid, host, process table, start time and expiry, separated
/// by tabs. [`parse_lease_note`] reads it back.
pub fn lease_note(lease: &Lease) -> String {
    format!(
        "lease\t{}\t{}\t{}\t{}\t{}",
        lease.pid, lease.host, lease.boot_id, lease.start_time, lease.expires_at
    )
}

/// The lease in a line [`lease_note`] wrote; `None` for anything else.
pub fn parse_lease_note(text: &str) -> Option<Lease> {
    let fields: Vec<&str> = text.split('\t').collect();
    let [tag, pid, host, boot_id, start_time, expires_at] = fields.as_slice() else {
        return None;
    };
    if *tag != "lease" {
        return None;
    }
    Some(Lease {
        pid: pid.parse().ok()?,
        host: host.to_string(),
        boot_id: boot_id.to_string(),
        start_time: start_time.parse().ok()?,
        expires_at: expires_at.parse().ok()?,
    })
}

/// This process's process table: the boot id and the pid namespace, or `None` if either is
/// unknown (then every lease is judged by its expiry).
fn process_table_id() -> Option<String> {
    let boot = read_trimmed(Path::new("/proc/sys/kernel/random/boot_id"))?;
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{boot}/{}", namespace.to_string_lossy()))
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat` field 22), `None` if
/// there is no such process. A zombie still counts as present until reaped.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 on; the start time is field 22, the 20th of them.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_notes_read_back_and_nothing_else_parses() {
        let lease = HostIdentity::current().lease_for_self(1234);
        assert_eq!(parse_lease_note(&lease_note(&lease)), Some(lease));
        for bad in [
            "",
            "lease",
            "lease\t1\th\tb\t2",
            "lease\tx\th\tb\t2\t3",
            "other\t1\th\tb\t2\t3",
        ] {
            assert_eq!(parse_lease_note(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn own_lease_is_live_and_a_reaped_child_is_stale() {
        let here = HostIdentity::current();
        if here.boot_id.is_empty() {
            // The rule of tests/common/oracle.rs, which unit tests cannot reach: a skip is a
            // failure when CI asks for every test to run.
            let why = "/proc/sys/kernel/random/boot_id not readable";
            assert!(
                std::env::var_os("IMGPACK_REQUIRE_ORACLES").is_none_or(|v| v.is_empty() || v == "0"),
                "{why} (IMGPACK_REQUIRE_ORACLES is set)"
            );
            println!("skipped: {why}");
            return;
        }
        let lease = here.lease_for_self(1000);
        assert_eq!(here.why_stale(&lease, 1_000_000), None);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = Lease { pid, ..lease.clone() };
        assert!(here.why_stale(&dead, 0).unwrap().contains("is gone"));
        let reused = Lease {
            start_time: lease.start_time + 1,
            ..lease.clone()
        };
        assert!(here.why_stale(&reused, 0).is_some());
        // Another boot or pid namespace under our host name: maybe this machine rebooted,
        // maybe another machine or container of the same name; only the expiry can tell.
        for boot_id in ["another-boot".to_string(), format!("{}x", here.boot_id)] {
            let elsewhere = Lease {
                boot_id,
                ..lease.clone()
            };
            assert_eq!(here.why_stale(&elsewhere, elsewhere.expires_at), None);
            assert!(here.why_stale(&elsewhere, elsewhere.expires_at + 1).is_some());
        }
        let elsewhere = Lease {
            host: "other-host".to_string(),
            ..lease
        };
        assert_eq!(here.why_stale(&elsewhere, elsewhere.expires_at), None);
        assert!(here.why_stale(&elsewhere, elsewhere.expires_at + 1).is_some());
    }
}
