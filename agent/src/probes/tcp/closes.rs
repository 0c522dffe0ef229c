//! Close events from the ring buffer applied to the link state (a submodule of `collector.rs`,
//! whose fields it reads; kept apart so that each file does one job): a socket's final
//! counters, keyed to its tracked link, or to a new one when the socket was never dumped live.

use std::time::{Duration, Instant};

use gopher_common::{EVENT_RESET, LinkClosed, OWNER_KNOWN, ROLE_UNKNOWN};
// TCP states, shared with the eBPF programs.
use gopher_common::{
    TCP_CLOSE_WAIT as CLOSE_WAIT, TCP_CLOSING as CLOSING, TCP_FIN_WAIT1 as FIN_WAIT1,
    TCP_FIN_WAIT2 as FIN_WAIT2, TCP_LAST_ACK as LAST_ACK,
};

use super::{
    ClosedEvents, Collector, Counters, Owner, ROLE_CLIENT, ROLE_SERVER, data_only, fresh_base,
    ip_from_words, key, name_into, normalize, role,
};

impl Collector {
    /// Applies every close event written so far (those still in the ring buffer included).
    ///
    /// A socket the eBPF side did not see start (`born` 0) still reports its close: its entry
    /// did not fit in a full map, it was established under an earlier agent (whose sockops
    /// flags outlive it), or, with the destroy hook, any socket not `connect()`ed under the
    /// probe (server sockets, whose start no hook sees, included). Before the first dump such
    /// a socket was never seen live by this agent and its counters may be lifetime totals, so
    /// these events are skipped then (a server socket born and closed in the moment before the
    /// first dump goes uncounted; its client end, when watched, still counts); afterwards,
    /// every older socket is known from the dump (tracked, or waiting for its owner with the
    /// reading it counts from) and one that is not was born since.
    pub fn drain(&mut self, closed: &ClosedEvents) {
        let now = Instant::now();
        // The last namespace found, for the events after it (nearly all from the same one):
        // valid for this drain, as long as no refresh changes the namespaces.
        let mut last_ns = None;
        self.comm_of = None;
        closed.drain_with(|ev| self.apply(ev, now, &mut last_ns));
    }

    /// One event: a close (its socket's reset bits ride along), or a reset alone (one sent
    /// after its socket's close, or of a socket without an eBPF entry).
    fn apply(&mut self, ev: &LinkClosed, now: Instant, last_ns: &mut Option<(u64, u64)>) {
        let close = ev.kind != EVENT_RESET;
        let unprimed = !self.primed && ev.info.born == 0;
        if close && unprimed && !self.links.is_tracked(ev.cookie) {
            return;
        }
        if close {
            self.closed_event(ev, now, last_ns);
        }
        if ev.info.rst != 0 && !self.links.reset(ev.cookie, ev.info.rst, now) {
            self.metrics.resets_unattributed.inc();
        }
    }

    /// Applies one close event: the socket's final counters. `now` is read once per drain (on
    /// a VM a clock read costs about as much as applying an event); `last_ns` is the drain's
    /// last (netns cookie, inode) found.
    fn closed_event(&mut self, ev: &LinkClosed, now: Instant, last_ns: &mut Option<(u64, u64)>) {
        // Two map lookups, with their cache misses, were a fair share of what an event cost
        // under churn: most events come from the namespace of the event before.
        let mut netns = match *last_ns {
            Some((cookie, inode)) if cookie == ev.netns_cookie => Some(inode),
            _ => self.namespaces.inode_of_cookie(ev.netns_cookie),
        };
        if netns.is_none() && self.last_ns_refresh.elapsed() > Duration::from_secs(1) {
            // A namespace born since the last refresh: learn it before keying (at most
            // once a second: a namespace already gone cannot be learnt).
            self.refresh_namespaces();
            netns = self.namespaces.inode_of_cookie(ev.netns_cookie);
        }
        *last_ns = netns.map(|inode| (ev.netns_cookie, inode));
        let raw = Counters::from(&ev.stats);
        let old = ev.old_state;
        let we_sent_fin = matches!(old, FIN_WAIT1 | FIN_WAIT2 | CLOSING | LAST_ACK);
        let fin_received = matches!(old, CLOSE_WAIT | LAST_ACK | CLOSING)
            || (matches!(old, FIN_WAIT1 | FIN_WAIT2) && ev.info.fin_seen == 1);
        let c = data_only(raw, false, we_sent_fin && ev.all_acked == 1, fin_received);
        let waited = if self.waiting.is_empty() {
            None
        } else {
            self.waiting.remove(&ev.cookie)
        };
        if self.links.close(ev.cookie, &c, now) {
            return;
        }
        // Never keyed. A socket still waiting for its owner counts from the reading it was
        // first seen with; any other was born since the probe started, so all of it is new.
        let netns = netns.unwrap_or(0);
        let family = ev.family as u8;
        let local = normalize(ip_from_words(family, ev.local_ip));
        let remote = normalize(ip_from_words(family, ev.remote_ip));
        let (local_port, remote_port) = (ev.local_port as u16, ev.remote_port as u16);
        let (role, syn_acked) = if ev.info.role == ROLE_UNKNOWN {
            // An active open's `bytes_acked` counts its SYN. A socket a dump saw and left
            // waiting for its owner had its role decided then, with its listener at hand.
            let role = waited.as_ref().map_or_else(
                || self.unrecorded_role(netns, local_port, remote_port),
                |w| w.role,
            );
            (role, role == ROLE_CLIENT)
        } else {
            (ev.info.role, ev.info.syn_acked == 1)
        };
        // The name goes into a buffer kept between events: a close is applied thousands of
        // times a second under churn, and its link's name is known already nearly every time.
        // Events come in runs of one process: the buffer may hold its name already.
        let mut comm = std::mem::take(&mut self.comm);
        let known = ev.info.owner == OWNER_KNOWN;
        if !known {
            self.comm_of = None;
        }
        let tgid = if known {
            if self.comm_of != Some(ev.info.tgid) {
                comm.clear();
                name_into(&self.links, ev.info.tgid, &ev.info.comm, &mut comm);
                self.comm_of = Some(ev.info.tgid);
            }
            ev.info.tgid
        } else if let Some(o) = self.listener_owner(netns, role, local_port) {
            comm.clear();
            comm.push_str(&o.comm);
            o.tgid
        } else {
            comm.clear();
            0
        };
        // A key holds the owner's tgid only (none: 0).
        let owner = Owner {
            tgid,
            comm: String::new(),
        };
        let k = key(
            netns,
            Some(&owner),
            role,
            local,
            local_port,
            remote,
            remote_port,
        );
        let base = waited.map_or_else(|| fresh_base(syn_acked), |w| w.base);
        self.links.close_new(ev.cookie, k, &comm, &c, &base, now);
        self.comm = comm;
    }

    /// The role of a socket the eBPF side has no role for (`role.rs`).
    pub(super) fn unrecorded_role(&self, netns: u64, local_port: u16, remote_port: u16) -> u8 {
        let listening = self.listeners.contains_key(&(netns, local_port));
        role::unrecorded(listening, local_port, remote_port, self.ephemeral)
    }

    pub(super) fn listener_owner(&self, netns: u64, role: u8, port: u16) -> Option<&Owner> {
        if role != ROLE_SERVER {
            return None;
        }
        let inode = self.listeners.get(&(netns, port))?;
        self.owners.get(inode)
    }
}
