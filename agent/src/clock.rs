//! The agent's two clocks.
//!
//! The table store ages records on [`mono_ms`], milliseconds since the agent started, read from
//! `Instant` (CLOCK_MONOTONIC): a wall-clock step (NTP, a VM resumed after hours) must neither
//! expire every record at once nor keep stale ones for the length of the step. What leaves the
//! agent with a date on it (Kafka's `timestamp`) is wall-clock time: [`wall_of`] turns a
//! monotonic reading into it, as of now.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call (made early in `main`, so: since the agent started).
pub fn mono_ms() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The wall-clock time at which [`mono_ms`] read `mono`, given that it reads `mono_now` when
/// the wall clock reads `wall_now`.
pub fn wall_of(mono: u64, mono_now: u64, wall_now: u64) -> u64 {
    wall_now.saturating_sub(mono_now.saturating_sub(mono))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_mapped_to_wall_time() {
        let a = mono_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = mono_ms();
        assert!(b >= a + 5, "{a} {b}");
        assert_eq!(wall_of(900, 1000, 5000), 4900);
        assert_eq!(wall_of(1000, 1000, 5000), 5000);
        assert_eq!(wall_of(0, 10_000, 5000), 0, "saturates");
    }
}
