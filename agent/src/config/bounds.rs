//! Bounds and conversions every section reader shares; apart from `model.rs` (which reads the
//! sections) so that the sections need not import the file that imports them.

use std::time::Duration;

/// Longest period accepted for any interval, here and over the control channel: defined with
/// the probes' settings (configuration reads probe vocabulary; probes never read configuration).
pub use crate::probes::settings::MAX_INTERVAL_SECS;
/// [`MAX_INTERVAL_SECS`] for the readers' integer ranges.
pub(super) const MAX_INTERVAL: i64 = MAX_INTERVAL_SECS as i64;

/// A validated (non-negative) number of seconds, or `default` when the key is absent.
pub(super) fn secs(v: Option<i64>, default: Duration) -> Duration {
    v.map_or(default, |s| Duration::from_secs(s.unsigned_abs()))
}
