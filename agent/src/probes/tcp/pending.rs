//! The collector's bookkeeping for new sockets still without an owner (`collector.rs`), and
//! its self-metrics: kept apart so that the interval's logic reads on its own.

use std::sync::Arc;

use super::diag::{Counters, DiagSocket};
use crate::telemetry::{self, Counter, SelfMetrics};

/// Intervals a new socket whose owner is only guessed (not yet accepted, or not found in
/// /proc) waits for its real owner before it is keyed to the guess for good.
pub const OWNER_PATIENCE: u8 = 2;

/// A new socket still without a known owner.
pub struct Waiting {
    pub waited: u8,
    /// Listed in this walk.
    pub seen: bool,
    /// Its last full reading (its base fixed at first sight): the iterator reports it
    /// "unchanged" until it moves, and then this is what it still reads.
    pub last: Pending,
}

/// A new socket of this dump that needs an owner from /proc.
#[derive(Clone)]
pub struct Pending {
    pub sock: DiagSocket,
    pub netns: u64,
    pub role: u8,
    /// Its reading (FIN-adjusted), and the reading its counters count from.
    pub counters: Counters,
    pub base: Counters,
}

pub struct Metrics {
    pub errors: Counter,
    pub lost: Counter,
    pub aggregated: Counter,
    pub excluded: Counter,
    pub netns_open: Counter,
    pub netns_dump: Counter,
    pub resets_unattributed: Counter,
}

impl Metrics {
    pub fn new(metrics: &Arc<SelfMetrics>) -> Self {
        let tcp = [("probe", "tcp")];
        Self {
            errors: metrics.counter(telemetry::PROBE_ERRORS, &tcp),
            lost: metrics.counter(telemetry::EBPF_EVENTS_LOST, &tcp),
            aggregated: metrics.counter(telemetry::TCP_LINKS_AGGREGATED, &[]),
            excluded: metrics.counter(telemetry::TCP_SOCKETS_EXCLUDED, &[]),
            netns_open: metrics.counter(telemetry::TCP_NETNS_ERRORS, &[("reason", "open")]),
            netns_dump: metrics.counter(telemetry::TCP_NETNS_ERRORS, &[("reason", "dump")]),
            resets_unattributed: metrics.counter(telemetry::TCP_RESETS_UNATTRIBUTED, &[]),
        }
    }
}
