//! Read-only memory maps that survive the file being truncated under them.
//!
//! A memory map reflects its file as it changes. When another process truncates the file, the
//! kernel removes the lost pages from every map of it, and the next touch of one raises SIGBUS,
//! whose default action kills the process: an upload cut short by its uploader would take the
//! whole converter down. [`Mapping`] closes that hole. Every live map registers its address range
//! in a small fixed table ([`GUARDED`]); a process-wide SIGBUS handler, installed once, looks the
//! faulting address up there and, when it falls inside a registered map, puts an anonymous page
//! of zeros over the lost page (`mmap` with `MAP_FIXED`), marks the map as damaged and returns,
//! so the faulting read carries on with zeros. The reader then asks [`Mapping::is_damaged`] and
//! turns the zeros into an error, exactly as a short `pread` would be. A fault anywhere else is
//! handed to the handler that was installed before (the Rust runtime's stack-overflow handler,
//! or the default action), so real bugs still crash as they should.
//!
//! What remains is what every way of reading a file that another process writes shares: bytes
//! changed (not removed) during the read may be read torn, in either read mode.

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::release_batch::ReleaseBatch;

/// How many maps may be live at once (one per raw input being read; `batch` reads a few).
const SLOTS: usize = 64;

/// `start` of a free slot.
const FREE: usize = 0;
/// `start` of a slot being filled in or emptied: matches no address.
const BUSY: usize = usize::MAX;

/// One registered map: `[start, end)` and whether a page of it was replaced by zeros.
struct Slot {
    /// Odd while the slot is being filled in or emptied (a sequence lock): the handler reads
    /// `start` and `end` between two equal, even loads of it, so it never pairs one map's
    /// start with another's end.
    generation: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
    damaged: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // a template for the array below, never used itself
const EMPTY_SLOT: Slot = Slot {
    generation: AtomicUsize::new(0),
    start: AtomicUsize::new(FREE),
    end: AtomicUsize::new(0),
    damaged: AtomicBool::new(false),
};

/// The live maps. Read by the signal handler, so only atomics: no lock, no allocation.
static GUARDED: [Slot; SLOTS] = [EMPTY_SLOT; SLOTS];

/// The SIGBUS action that was in place before ours, to chain to; set once, before ours is
/// installed, so the handler only ever reads it.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Our own SIGBUS action, kept to put back after a previous handler that resets the action
/// (Rust's runtime does) has handled a SIGBUS that was sent rather than faulted.
static OURS: OnceLock<libc::sigaction> = OnceLock::new();

/// The page size, read before the handler can run (`sysconf` is not async-signal-safe).
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

/// A read-only memory map of a whole file, guarded against truncation (see the module doc).
pub struct Mapping {
    map: memmap2::Mmap,
    slot: usize,
    /// Finished ranges not yet released (see [`Mapping::release`]).
    finished: Mutex<ReleaseBatch>,
}

impl Mapping {
    /// Maps `file` read-only, guarded, and advises the kernel that it will be read sequentially.
    /// Fails if the SIGBUS handler cannot be installed or 64 maps are already live.
    pub fn map(file: &File) -> io::Result<Mapping> {
        install_handler()?;
        // SAFETY: memmap2's only unsafety is that the file may change underneath the map while
        // it is alive. Removed pages (truncation) are handled by the guard registered below,
        // before any byte of the map is read. Bytes another process changes are seen as they
        // are at each moment of reading, so two reads of the same bytes may differ (unlike a
        // `pread` copy): the chunk encoder, which reads a borrowed payload twice (crc, then
        // zstd), checks the crc again afterwards and refuses a chunk that changed.
        let map = unsafe { memmap2::MmapOptions::new().map(file)? };
        let _ = map.advise(memmap2::Advice::Sequential);
        let slot = register(map.as_ptr() as usize, map.len())?;
        Ok(Mapping {
            map,
            slot,
            finished: Mutex::new(ReleaseBatch::default()),
        })
    }

    /// The mapped bytes. After a truncation, lost pages read as zeros: check
    /// [`Mapping::is_damaged`] after using them.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Whether a page of the map was lost to truncation (and replaced with zeros) since it was
    /// made. Once true, stays true.
    pub fn is_damaged(&self) -> bool {
        GUARDED[self.slot].damaged.load(Ordering::Acquire)
    }

    /// Asks the kernel to read `range` ahead of use (without waiting).
    pub fn will_need(&self, offset: usize, len: usize) {
        let len = len.min(self.map.len().saturating_sub(offset));
        let _ = self.map.advise_range(memmap2::Advice::WillNeed, offset, len);
    }

    /// Drops this process's page-table entries for a range it has finished reading. The pages
    /// stay in the page cache; only the map's share of them goes, so the process's resident
    /// size stays at what it works on instead of growing to the whole file, and the kernel
    /// has no page tables to tear down at the end. Ranges are released in batches of
    /// [`ReleaseBatch::BYTES`] (one TLB flush per batch, not per range), so up to that much of
    /// finished ranges stays mapped meanwhile. Only a hint: errors are ignored.
    pub fn release(&self, offset: usize, len: usize) {
        // Never past the map: memmap2 checks the offset and the length but not their sum, and
        // MADV_DONTNEED past the map would drop whatever memory follows it.
        let len = len.min(self.map.len().saturating_sub(offset));
        let runs = match self.finished.lock() {
            Ok(mut finished) => finished.add(offset, len),
            Err(_) => None, // a worker panicked; nothing to gain from releasing now
        };
        for (offset, len) in runs.into_iter().flatten() {
            // SAFETY: MADV_DONTNEED's hazard is losing private modifications; this map is
            // read-only and shared, so a later touch of the range reads the file's bytes again
            // (or zeros, for a page the SIGBUS guard replaced, as before). A range some worker
            // is still reading cannot be here: only finished ranges are added.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unregister before memmap2 unmaps, so no other map placed at these addresses later is
        // mistaken for this one.
        let slot = &GUARDED[self.slot];
        slot.generation.fetch_add(1, Ordering::SeqCst);
        slot.start.store(BUSY, Ordering::SeqCst);
        slot.end.store(0, Ordering::SeqCst);
        slot.damaged.store(false, Ordering::SeqCst);
        slot.generation.fetch_add(1, Ordering::SeqCst);
        slot.start.store(FREE, Ordering::SeqCst);
    }
}

/// Claims a free slot for `[start, start + len)`.
fn register(start: usize, len: usize) -> io::Result<usize> {
    for (index, slot) in GUARDED.iter().enumerate() {
        if slot
            .start
            .compare_exchange(FREE, BUSY, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            slot.generation.fetch_add(1, Ordering::SeqCst);
            slot.damaged.store(false, Ordering::SeqCst);
            slot.end.store(start.saturating_add(len), Ordering::SeqCst);
            // An empty file maps nothing (memmap2 maps one dummy byte); `start` is never 0 here.
            slot.start.store(start.max(1), Ordering::SeqCst);
            slot.generation.fetch_add(1, Ordering::SeqCst);
            return Ok(index);
        }
    }
    Err(io::Error::other(format!(
        "more than {SLOTS} memory-mapped inputs are open at once"
    )))
}

/// Installs [`on_sigbus`] for SIGBUS once per process, keeping the previous action to chain to.
fn install_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if let Ok(page) = usize::try_from(page) {
            if page.is_power_of_two() {
                PAGE_SIZE.store(page, Ordering::SeqCst);
            }
        }
        // SAFETY: a zeroed sigaction is a valid "default action, no flags, empty mask".
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: as above.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads the current SIGBUS action into `previous`, a valid sigaction.
        if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) } != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        let _ = PREVIOUS.set(previous);
        let _ = OURS.set(action);
        // SAFETY: `action` is fully initialised and `on_sigbus` only does work that is safe in
        // a signal handler on Linux: atomics, and the raw system calls mmap (not on POSIX's
        // async-signal-safe list, but a plain system call on Linux), sigaction and raise, or
        // it calls the previous handler.
        if unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        Ok(())
    });
    (*result)
        .map_err(io::Error::from_raw_os_error)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot install the SIGBUS handler: {e}")))
}

/// The SIGBUS handler: replaces a lost page of a guarded map with zeros, or chains.
extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo for a handler installed with SA_SIGINFO;
    // si_addr is the faulting address for a fault and meaningless (but readable) otherwise.
    let (address, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    // si_code > 0 means the kernel raised it for a fault; kill() and friends give <= 0.
    if code > 0 {
        for slot in &GUARDED {
            let generation = slot.generation.load(Ordering::SeqCst);
            let start = slot.start.load(Ordering::SeqCst);
            let end = slot.end.load(Ordering::SeqCst);
            let consistent = generation % 2 == 0 && slot.generation.load(Ordering::SeqCst) == generation;
            if !consistent || start == FREE || start == BUSY || address < start {
                continue;
            }
            if address < end {
                let page = address & !(PAGE_SIZE.load(Ordering::Relaxed) - 1);
                // Marked first, so no thread can read the zeros and still find the map intact.
                slot.damaged.store(true, Ordering::SeqCst);
                // SAFETY: `page` is a page of a live map this module registered (its owner is
                // mid-read on it, so it cannot be unmapped now); replacing it with a private
                // anonymous zero page changes no memory Rust owns besides the map's bytes.
                let replaced = unsafe {
                    libc::mmap(
                        page as *mut c_void,
                        PAGE_SIZE.load(Ordering::Relaxed),
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if replaced != libc::MAP_FAILED {
                    return; // the faulting read resumes and reads zeros
                }
            }
        }
    }
    chain(signal, info, context);
}

/// Hands a SIGBUS that is not ours to the action installed before ours.
fn chain(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    let previous = PREVIOUS.get().map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    let flags = PREVIOUS.get().map_or(0, |p| p.sa_flags);
    // SAFETY: the kernel passed a valid siginfo.
    let sent = unsafe { (*info).si_code } <= 0;
    if previous == libc::SIG_IGN && sent {
        return; // a SIGBUS sent with kill() was ignored before us, and still is
    }
    if previous != libc::SIG_DFL && previous != libc::SIG_IGN {
        if flags & libc::SA_SIGINFO != 0 {
            // SAFETY: the previous action was installed with SA_SIGINFO, so its handler has
            // this signature; we call it as the kernel would have.
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
                unsafe { std::mem::transmute(previous) };
            handler(signal, info, context);
        } else {
            // SAFETY: without SA_SIGINFO the previous handler takes only the signal number.
            let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(previous) };
            handler(signal);
        }
        // A sent SIGBUS has been dealt with as it would have been without us; if the handler
        // reset the action on its way (Rust's runtime resets it to the default for anything
        // but a stack overflow), the guard must stay, or the next truncation kills the process.
        // A fault is left as the handler left it, so that re-executing the instruction ends the
        // process as it should.
        if sent {
            if let Some(ours) = OURS.get() {
                // SAFETY: sigaction is async-signal-safe and `ours` is a fully initialised
                // action (the one installed in `install_handler`).
                unsafe { libc::sigaction(libc::SIGBUS, ours, std::ptr::null_mut()) };
            }
        }
        return;
    }
    // Default action: restore it and let the signal happen again, which ends the process as it
    // would have without us. A fault re-executes the faulting instruction; a sent signal is
    // re-raised.
    // SAFETY: a zeroed sigaction is the default action; sigaction and raise are
    // async-signal-safe.
    unsafe {
        let default: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
        if sent {
            libc::raise(signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn truncation_under_the_map_reads_zeros_and_marks_it_damaged() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![0xA5u8; 1 << 20]).unwrap();
        let map = Mapping::map(&file).unwrap();
        assert_eq!(map.bytes()[100], 0xA5);
        assert!(!map.is_damaged());
        file.set_len(4096).unwrap();
        // Without the guard this read would kill the test process with SIGBUS.
        let tail = &map.bytes()[512 << 10..];
        assert!(tail.iter().all(|&b| b == 0));
        assert!(map.is_damaged());
        assert_eq!(
            map.bytes()[100],
            0xA5,
            "bytes still in the file are read as they are"
        );
    }

    #[test]
    fn a_sent_sigbus_handled_by_the_previous_handler_leaves_the_guard_installed() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[1u8; 8192]).unwrap();
        let _map = Mapping::map(&file).unwrap();
        let previous = PREVIOUS.get().expect("installed").sa_sigaction;
        // Rust's runtime installs a SIGBUS handler (for stack overflows) in every test binary;
        // with the default action instead, the raise below would (rightly) end the process.
        assert_ne!(
            previous,
            libc::SIG_DFL,
            "expected Rust's SIGBUS handler before ours"
        );
        // SAFETY: raise sends this thread a SIGBUS; the handlers above deal with it.
        unsafe { libc::raise(libc::SIGBUS) };
        // SAFETY: a zeroed sigaction is valid to be overwritten with the current action.
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads the current SIGBUS action into `now`.
        let read = unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut now) };
        assert_eq!(read, 0);
        assert_eq!(
            now.sa_sigaction, on_sigbus as *const () as usize,
            "the guard was uninstalled"
        );
    }

    #[test]
    fn slots_are_freed_when_maps_are_dropped() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[1u8; 8192]).unwrap();
        for _ in 0..SLOTS * 2 {
            let map = Mapping::map(&file).unwrap();
            assert!(!map.is_damaged());
        }
    }
}
