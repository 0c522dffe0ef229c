//! Drains the `CLOSED` ring buffer, on a thread of its own whenever the collector is late.
//!
//! A collection (sock_diag dumps of every namespace, /proc scans) can take seconds on a busy
//! node, and at 10 k connections/s the 4 MiB ring holds about a second of close events: draining
//! it only from the task that also collects lost events whenever an interval ran long. So a
//! dedicated thread moves events from the ring into a bounded in-memory queue when the
//! collector has not taken them for [`LATE`], or when the eBPF side wakes it (edge-triggered
//! epoll: the ring is half full). Otherwise the collector reads the ring itself, every event
//! in place ([`ClosedEvents::drain_with`]): a queue written and read back was a third of the
//! agent's time under churn. An event the full queue cannot take is counted in
//! `gopher_ebpf_events_lost_total{probe="tcp"}`, like one the ring had no room for.
//!
//! Both read the ring under its mutex, the queue first, so once `drain_with` returns, every
//! event the kernel wrote before the call was applied, in order: the collector relies on that
//! to apply closes that happened before its dump.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use gopher_common::LinkClosed;

use crate::telemetry::Counter;

/// How often the drain thread looks whether the collector is late.
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// The collector is late once it has not taken the events for this long (it takes them every
/// 250 ms between intervals, `APPLY_EVERY` in `mod.rs`).
const LATE: Duration = Duration::from_millis(600);
/// Events the queue holds at most (144 B each: 37 MiB when full). At 20 k events/s (10 k
/// loopback connections/s, both ends here) that is 13 s of closes for the collector to be late.
const QUEUE_MAX: usize = 1 << 18;
/// Events' worth of room a buffer always keeps between drains (~0.6 MB). Above it, a buffer
/// keeps twice what its last use needed and is only cut once it holds four times that
/// ([`keep_room`]): a steady churn of more than a few thousand connections a second then
/// reuses the same memory, where cutting back to a fixed size at every drain had the
/// allocator shrink and regrow it (above glibc's mmap threshold: `mremap` and a page fault
/// per 4 KiB, about a tenth of the agent's time at 15 k connections/s), while a burst's room
/// is still given back once it is over.
const KEEP_EVENTS: usize = 4096;

/// Empties `buf`, whose last use held `used` events, keeping room as [`KEEP_EVENTS`] says.
fn keep_room(buf: &mut Vec<LinkClosed>, used: usize) {
    buf.clear();
    let want = used.max(KEEP_EVENTS / 2) * 2;
    if buf.capacity() > want * 2 {
        buf.shrink_to(want);
    }
}

struct Shared {
    ring: Mutex<RingBuf<MapData>>,
    queue: Mutex<Vec<LinkClosed>>,
    /// When the collector last took the events, in ms since `start`.
    taken_ms: AtomicU64,
    start: Instant,
    stop: AtomicBool,
    lost: Counter,
}

pub struct ClosedEvents {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ClosedEvents {
    /// Starts the drain thread. `lost` counts events the full queue had to drop.
    pub fn start(ring: RingBuf<MapData>, lost: Counter) -> anyhow::Result<Self> {
        let epoll = Epoll::new(&ring).context("watching the CLOSED ring buffer")?;
        let shared = Arc::new(Shared {
            ring: Mutex::new(ring),
            queue: Mutex::new(Vec::new()),
            taken_ms: AtomicU64::new(0),
            start: Instant::now(),
            stop: AtomicBool::new(false),
            lost,
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("tcp-closed".to_owned())
                .spawn(move || {
                    while !shared.stop.load(Ordering::Relaxed) {
                        let woken = epoll.wait(LOOK_EVERY);
                        if woken || shared.collector_late() {
                            pump(&shared);
                        }
                    }
                })
                .context("starting the close-event drain thread")?
        };
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands every event written so far to `apply`, oldest first: those the drain thread
    /// queued while the collector was late, then those still in the ring, read in place (the
    /// queue keeps its room, see [`KEEP_EVENTS`]).
    pub fn drain_with(&self, mut apply: impl FnMut(&LinkClosed)) {
        let shared = &self.shared;
        let mut ring = lock(&shared.ring);
        // No pump runs while the ring is held: the queue stays empty once taken.
        let mut queued = std::mem::take(&mut *lock(&shared.queue));
        for ev in &queued {
            apply(ev);
        }
        let used = queued.len();
        keep_room(&mut queued, used);
        *lock(&shared.queue) = queued;
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<LinkClosed>() {
                // SAFETY: the eBPF side writes exactly a LinkClosed; read_unaligned copes with
                // the ring buffer's 8-byte alignment.
                apply(&unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<LinkClosed>()) });
            }
        }
        drop(ring);
        shared.taken_ms.store(shared.ms(), Ordering::Relaxed);
    }
}

impl Shared {
    fn ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn collector_late(&self) -> bool {
        self.ms()
            .saturating_sub(self.taken_ms.load(Ordering::Relaxed))
            >= u64::try_from(LATE.as_millis()).unwrap_or(u64::MAX)
    }
}

impl Drop for ClosedEvents {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // Wakes within DRAIN_EVERY; a panicked drain thread has nothing left to clean up.
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads the ring straight into the queue (a read buffer appended to the queue was a second
/// copy). The collector's `drain_with` waits for a pump under way: at most a ring's worth of
/// events, a few milliseconds.
fn pump(shared: &Shared) {
    let mut ring = lock(&shared.ring);
    let mut queue = lock(&shared.queue);
    let mut lost = 0;
    while let Some(item) = ring.next() {
        if item.len() < size_of::<LinkClosed>() {
            continue;
        }
        if queue.len() < QUEUE_MAX {
            // SAFETY: the eBPF side writes exactly a LinkClosed; read_unaligned copes with the
            // ring buffer's 8-byte alignment.
            queue.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<LinkClosed>()) });
        } else {
            lost += 1;
        }
    }
    drop(queue);
    drop(ring);
    if lost > 0 {
        shared.lost.add(lost);
    }
}

/// An edge-triggered epoll instance on the ring buffer's fd: it reports the eBPF side's forced
/// wake-ups only, not every event (level-triggered polling of a ring that always holds some
/// events would spin).
struct Epoll(OwnedFd);

impl Epoll {
    fn new(ring: &RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned right away.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let epoll = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both fds are open; ev outlives the call. The ring's fd outlives the epoll
        // registration: the kernel drops it when either closes.
        let rc = unsafe {
            libc::epoll_ctl(
                epoll.0.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                ring.as_fd().as_raw_fd(),
                &raw mut ev,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(epoll)
    }

    /// Sleeps until a wake-up or `timeout`, whichever comes first; true on a wake-up.
    fn wait(&self, timeout: Duration) -> bool {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: valid epoll fd and one-element buffer. An error (EINTR) counts as a wake-up:
        // it only drains early.
        unsafe { libc::epoll_wait(self.0.as_raw_fd(), &raw mut ev, 1, ms) != 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: usize, cap: usize) -> Vec<LinkClosed> {
        let mut v = Vec::with_capacity(cap);
        v.resize(n, LinkClosed::reset(1, 0));
        v
    }

    #[test]
    fn a_steady_churn_keeps_its_room() {
        // 7,000 events a drain, as at 15 k connections/s: no shrink, no regrowth.
        let mut v = filled(7_000, 8_192);
        keep_room(&mut v, 7_000);
        assert!(v.is_empty());
        assert_eq!(v.capacity(), 8_192);
    }

    #[test]
    fn a_burst_gives_its_room_back_once_it_is_over() {
        let mut v = filled(200_000, 200_000);
        keep_room(&mut v, 200_000);
        assert!(v.capacity() >= 200_000, "kept while in use");
        keep_room(&mut v, 100);
        assert!(v.capacity() <= 2 * KEEP_EVENTS, "{}", v.capacity());
        assert!(v.capacity() >= KEEP_EVENTS);
    }
}
