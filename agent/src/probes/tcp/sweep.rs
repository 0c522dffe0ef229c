//! Drops `LINKS` entries whose socket was not live at two sweeps a minute apart (the sockops
//! hooks only: the destroy hooks remove every entry when its socket is destroyed).
//!
//! The eBPF side removes entries at CLOSE; what it cannot see is a connect that failed before
//! TCP started (fallback connect hooks) or a socket whose callbacks another program switched
//! off. Left there, such entries would fill the map (65,536) on a long-running node. A
//! connection still in SYN_SENT after a minute merely loses its eBPF owner record.

use std::time::{Duration, Instant};

use rustc_hash::FxHashSet as HashSet;

use super::bpf;

const SWEEP_EVERY: Duration = Duration::from_mins(1);

pub struct Sweeper {
    /// Cookies in the eBPF `LINKS` map that were not live at the last sweep.
    unseen: HashSet<u64>,
    last: Instant,
}

impl Default for Sweeper {
    fn default() -> Self {
        Self {
            unseen: HashSet::default(),
            last: Instant::now(),
        }
    }
}

impl Sweeper {
    /// Once a minute: forgets the entries not `live` now nor at the last sweep.
    pub fn sweep(&mut self, programs: &mut bpf::Programs, live: impl Fn(u64) -> bool) {
        if self.last.elapsed() < SWEEP_EVERY {
            return;
        }
        self.last = Instant::now();
        let unseen: HashSet<u64> = programs
            .link_cookies()
            .into_iter()
            .filter(|&c| !live(c))
            .collect();
        let stale: Vec<u64> = unseen.intersection(&self.unseen).copied().collect();
        if !stale.is_empty() {
            let n = programs.forget(&stale);
            tracing::debug!(
                removed = n,
                "swept LINKS entries of sockets gone without CLOSE"
            );
        }
        self.unseen = unseen;
    }
}
