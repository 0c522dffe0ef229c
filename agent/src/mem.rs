//! The allocator's share of the agent's memory: glibc malloc tuned at start, and freed memory
//! handed back to the kernel after the peaks that leave it behind.
//!
//! Measured at 20 k idle `tcp_link` links (bench/README.md, "Where the memory goes"), glibc's
//! defaults kept about as much freed memory resident as the agent actually used:
//! - each thread that allocates gets an arena of its own (up to 8 per CPU), and memory freed in
//!   one arena is never reused by another;
//! - the mmap threshold is dynamic: once a large buffer (a /metrics body, a full batch of rows)
//!   is freed, every later allocation up to 32 MiB comes from an arena instead of its own
//!   mapping, and stays there;
//! - an arena only gives back the free space at its top, so the holes a peak leaves between
//!   long-lived records (the store's, the link state's) stay resident for good.
//!
//! [`tune`] fixes the first two at start (two arenas, a fixed 128 KiB mmap threshold: a large
//! buffer is unmapped when freed), and [`trim`] the third: when the arenas hold more than
//! [`TRIM_ABOVE`] of free space, `malloc_trim(0)` returns their free pages (the kernel takes
//! the pages, the addresses stay valid). The agent calls it once a second, but only when the
//! resident set grew since it last looked (or every 30 s): measuring the free space walks every
//! free chunk (`mallinfo2`, ~7 ms at 100 k idle links), which done every second was a fifth of
//! the idle agent's CPU (perf, 100 k links). Other C libraries: both are no-ops.

/// Free bytes in the arenas worth a `malloc_trim`: below this, what would come back is not
/// worth walking the heap for.
pub const TRIM_ABOVE: usize = 1 << 20;

/// Allocations at least this large get their own mapping (returned to the kernel when freed).
const MMAP_THRESHOLD: i32 = 128 << 10;
/// Arenas: two threads may allocate at the same time without waiting (the agent's async
/// workers are two; its threads allocate little and rarely at once), and freed memory stays
/// reusable by every thread.
const ARENAS: i32 = 2;

/// Sets the allocator's options. Call first thing in `main`, before any thread starts (an
/// arena limit set later leaves the arenas made so far).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        // Also fixes the trim threshold (glibc stops adjusting both once either is set).
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Free bytes the arenas hold (freed, not yet returned), or None where unknown.
pub fn free_bytes() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Returns the arenas' free pages to the kernel when they hold more than [`TRIM_ABOVE`];
/// returns the free bytes seen before (0 when nothing was done).
pub fn trim() -> usize {
    let Some(free) = free_bytes().filter(|&f| f > TRIM_ABOVE) else {
        return 0;
    };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim releases free pages only; allocated memory is untouched.
    unsafe {
        libc::malloc_trim(0);
    }
    free
}

/// How often the allocator's free memory is checked (and handed back when there is enough).
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Ticks of [`trim_every`] after which the free memory is looked at even though the resident
/// set did not grow.
const CHECK_AT_LEAST_EVERY: u32 = 30;

/// Whether [`trim_every`] looks at the free memory this tick. Reading it (`mallinfo2`) walks
/// every free chunk of every arena: about 7 ms at 100 k idle links, a fifth of the agent's CPU
/// when done every second. Memory worth handing back comes from a peak, and a peak grows the
/// resident set; so only then, or every [`CHECK_AT_LEAST_EVERY`] ticks, or when the resident
/// set is unknown.
fn worth_checking(resident: Option<usize>, after_last_check: usize, ticks_since: u32) -> bool {
    resident.is_none_or(|r| r > after_last_check) || ticks_since >= CHECK_AT_LEAST_EVERY
}

/// Resident pages of this process (`/proc/self/statm`), None where unknown.
fn resident_pages() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// Hands the memory a peak left free (a tcp collection and its batch, a scrape's render) back
/// to the kernel within `period` of it ([`trim`]).
pub async fn trim_every(period: std::time::Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut after_last_check, mut ticks_since) = (0, 0);
    loop {
        tick.tick().await;
        ticks_since += 1;
        if !worth_checking(resident_pages(), after_last_check, ticks_since) {
            continue;
        }
        let started = std::time::Instant::now();
        let free = trim();
        ticks_since = 0;
        after_last_check = resident_pages().unwrap_or(0);
        if free > 0 {
            tracing::debug!(
                free,
                trim_us = started.elapsed().as_micros() as u64,
                "returned free heap memory to the kernel"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident anonymous memory of this process, bytes.
    fn rss_anon() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    #[test]
    fn free_memory_is_looked_at_after_growth_or_now_and_then() {
        assert!(worth_checking(Some(101), 100, 1), "grown");
        assert!(!worth_checking(Some(100), 100, 1), "same");
        assert!(
            !worth_checking(Some(90), 100, CHECK_AT_LEAST_EVERY - 1),
            "shrunk"
        );
        assert!(
            worth_checking(Some(90), 100, CHECK_AT_LEAST_EVERY),
            "long enough"
        );
        assert!(worth_checking(None, 100, 1), "unknown");
        assert!(resident_pages().is_some_and(|p| p > 0));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trim_gives_back_the_holes_a_peak_leaves() {
        // Many small allocations (below any mmap threshold), every other one kept: the freed
        // ones are holes between live chunks, which only a trim returns.
        let mut v: Vec<Box<[u8; 1000]>> = (0..40_000).map(|_| Box::new([1u8; 1000])).collect();
        let kept: Vec<Box<[u8; 1000]>> = v
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| i % 8 == 0)
            .map(|_| Box::new([2u8; 1000]))
            .collect();
        drop(v);
        let free = free_bytes().unwrap_or(0);
        assert!(free > 30_000_000, "freed bytes stay in the arena: {free}");
        let before = rss_anon();
        assert!(trim() > TRIM_ABOVE);
        let after = rss_anon();
        assert!(
            before.saturating_sub(after) > 20_000_000,
            "trim returned {} of {free} free bytes (RssAnon {before} -> {after})",
            before.saturating_sub(after)
        );
        assert!(kept.iter().all(|b| b[999] == 2), "live memory untouched");
    }
}
