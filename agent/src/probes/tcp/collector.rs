//! What the TCP probe remembers between intervals, and how one interval's observations (a
//! sock_diag dump per namespace, close events from the ring buffer) become `tcp_link` rows.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use gopher_common::{LinkClosed, LinkInfo, OWNER_KNOWN, OWNER_NO_ENTRY};

use super::{
    CLOSE_WAIT, CLOSING, FIN_WAIT1, FIN_WAIT2, LAST_ACK, bpf,
    closed::ClosedEvents,
    data_only,
    diag::{self, Counters, DiagSocket, TCP_LISTEN},
    ip_from_words, key,
    links::{Links, Observed, ROLE_CLIENT, ROLE_SERVER},
    netns::Namespaces,
    normalize,
    owners::{self, Owner},
    to_row,
};
use crate::{
    imdb::Row,
    probes::now_ms,
    selfmetrics::{self, SelfMetrics},
};

/// Intervals a new socket whose owner is only guessed (not yet accepted, or not found in
/// /proc) waits for its real owner before it is keyed to the guess for good.
const OWNER_PATIENCE: u8 = 2;
/// How often stale `LINKS` entries are looked for.
const SWEEP_EVERY: Duration = Duration::from_mins(1);

pub struct Collector {
    links: Links,
    namespaces: Namespaces,
    /// Socket inode → owner, for inodes seen live (pruned to those).
    owners: HashMap<u64, Owner>,
    /// /proc walks for owners, with back-off for sockets whose owner is not found.
    resolver: owners::Resolver,
    /// (netns inode, port) → listening socket inode.
    listeners: HashMap<(u64, u16), u64>,
    /// Whether a tracked socket's `bytes_acked` counts its SYN, fixed when first seen so that a
    /// later LRU eviction of its eBPF entry cannot move its counters.
    syn_acked: HashMap<u64, bool>,
    /// New sockets waiting for a real owner, with the intervals waited.
    waiting: HashMap<u64, u8>,
    /// tgid → process name (`/proc/<tgid>/comm`), for tgids seen last interval.
    names: HashMap<u32, String>,
    last_ns_refresh: Instant,
    /// Cookies in the eBPF `LINKS` map that were not live at the last sweep.
    unseen_at_sweep: HashSet<u64>,
    last_sweep: Instant,
    metrics: Arc<SelfMetrics>,
    lost_seen: u64,
    /// Set once the first dump's closes were applied; see [`Collector::drain`].
    primed: bool,
}

impl Collector {
    pub fn new(metrics: Arc<SelfMetrics>) -> Self {
        // At 0 from the start: the shipped alert's increase() then sees the very first loss.
        metrics.counter(selfmetrics::EBPF_EVENTS_LOST, &[("probe", "tcp")]);
        Self {
            links: Links::default(),
            namespaces: Namespaces::default(),
            owners: HashMap::default(),
            resolver: owners::Resolver::default(),
            listeners: HashMap::default(),
            syn_acked: HashMap::default(),
            waiting: HashMap::default(),
            names: HashMap::default(),
            last_ns_refresh: Instant::now(),
            unseen_at_sweep: HashSet::default(),
            last_sweep: Instant::now(),
            metrics,
            lost_seen: 0,
            primed: false,
        }
    }

    fn count_error(&self) {
        self.metrics
            .counter(selfmetrics::PROBE_ERRORS, &[("probe", "tcp")])
            .inc();
    }

    /// Applies every close event written so far (those still in the ring buffer included).
    ///
    /// A socket without an eBPF entry still reports its close (its entry did not fit in a full
    /// map), but so does one established under an earlier agent: the callback flags it set
    /// outlive it. Before the first dump, such a socket was never seen live by this agent and
    /// its counters would be lifetime totals, so these events are skipped then; afterwards,
    /// every older socket is tracked from the dump and one that is not was born since.
    pub fn drain(&mut self, closed: &ClosedEvents) {
        let now = now_ms();
        closed.pump();
        for ev in closed.take() {
            if !self.primed
                && ev.info.owner == OWNER_NO_ENTRY
                && self.links.key_of(ev.cookie).is_none()
            {
                continue;
            }
            if self.namespaces.inode_of_cookie(ev.netns_cookie).is_none()
                && self.last_ns_refresh.elapsed() > Duration::from_secs(1)
            {
                // A namespace born since the last refresh: learn it before keying (at most
                // once a second: a namespace already gone cannot be learnt).
                self.refresh_namespaces();
            }
            let sock = self.closed_event(&ev);
            self.links.close(sock, now);
        }
    }

    fn closed_event(&mut self, ev: &LinkClosed) -> Observed {
        let netns = self
            .namespaces
            .inode_of_cookie(ev.netns_cookie)
            .unwrap_or(0);
        let family = ev.family as u8;
        let local = normalize(ip_from_words(family, ev.local_ip));
        let remote = normalize(ip_from_words(family, ev.remote_ip));
        let role = ev.info.role;
        let (local_port, remote_port) = (ev.local_port as u16, ev.remote_port as u16);
        let owner = if ev.info.owner == OWNER_KNOWN {
            let comm = self.name_of(ev.info.tgid, &ev.info.comm);
            Some(Owner {
                tgid: ev.info.tgid,
                comm,
            })
        } else {
            self.listener_owner(netns, role, local_port)
        };
        let s = &ev.stats;
        let raw = Counters {
            bytes_received: s.bytes_received,
            bytes_acked: s.bytes_acked,
            segs_in: s.segs_in,
            segs_out: s.segs_out,
            total_retrans: s.total_retrans,
            lost: s.lost_out,
            srtt_us: s.srtt_us,
        };
        let old = ev.old_state;
        let we_sent_fin = matches!(old, FIN_WAIT1 | FIN_WAIT2 | CLOSING | LAST_ACK);
        let fin_received = matches!(old, CLOSE_WAIT | LAST_ACK | CLOSING)
            || (matches!(old, FIN_WAIT1 | FIN_WAIT2) && ev.info.fin_seen == 1);
        let syn_acked = self
            .syn_acked
            .remove(&ev.cookie)
            .unwrap_or(ev.info.syn_acked == 1);
        self.waiting.remove(&ev.cookie);
        Observed {
            cookie: ev.cookie,
            key: key(
                netns,
                owner.as_ref(),
                role,
                local,
                local_port,
                remote,
                remote_port,
            ),
            comm: owner.map(|o| o.comm).unwrap_or_default(),
            counters: data_only(
                raw,
                syn_acked,
                we_sent_fin && ev.all_acked == 1,
                fin_received,
            ),
        }
    }

    /// The process name of `tgid`: its main thread's comm from /proc (the eBPF side sees the
    /// calling thread's name, which for thread pools differs per thread and would split one
    /// process's links over many series); the eBPF name only once the process is gone.
    fn name_of(&mut self, tgid: u32, fallback: &[u8; 16]) -> String {
        if let Some(n) = self.names.get(&tgid) {
            return n.clone();
        }
        let name = owners::comm(tgid);
        let name = if name.is_empty() {
            comm_str(fallback)
        } else {
            name
        };
        self.names.insert(tgid, name.clone());
        name
    }

    fn listener_owner(&self, netns: u64, role: u8, port: u16) -> Option<Owner> {
        if role != ROLE_SERVER {
            return None;
        }
        let inode = self.listeners.get(&(netns, port))?;
        self.owners.get(inode).cloned()
    }

    /// Every namespace's listening and link-carrying TCP sockets, with the namespace inode, and
    /// whether every dump succeeded.
    fn dump_all(&mut self) -> (Vec<(u64, DiagSocket)>, bool) {
        self.refresh_namespaces();
        let mut dumped: Vec<(u64, DiagSocket)> = Vec::new();
        // A namespace that exists but cannot be opened has sockets we do not see.
        let mut complete = self.namespaces.unreachable().next().is_none();
        let mut broken = Vec::new();
        for ns in self.namespaces.by_inode.values() {
            for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                let mut socks = Vec::new();
                if let Err(e) = diag::dump(&ns.diag, family, &mut socks) {
                    tracing::warn!(netns = ns.inode, family, "sock_diag dump failed: {e}");
                    complete = false;
                    broken.push(ns.inode);
                }
                dumped.extend(socks.into_iter().map(|s| (ns.inode, s)));
            }
        }
        for inode in broken {
            // A socket left mid-dump would answer the next request with stale messages: the
            // next refresh opens a fresh one.
            self.namespaces.by_inode.remove(&inode);
            self.count_error();
        }
        (dumped, complete)
    }

    /// Learns new namespaces and closes vanished ones; a namespace that newly cannot be opened
    /// is logged and counted once (`netns` retries it every full re-walk, quietly).
    fn refresh_namespaces(&mut self) {
        for f in self.namespaces.refresh() {
            tracing::warn!(
                path = %f.path.display(),
                netns = f.inode,
                reason = f.reason,
                "cannot open sock_diag in network namespace: {}; its sockets are not dumped \
                 and dumps are incomplete until it opens or vanishes",
                f.error
            );
            self.count_error();
        }
        self.last_ns_refresh = Instant::now();
    }

    /// Drops `LINKS` entries whose socket was not live at two sweeps a minute apart. The eBPF
    /// side removes entries at CLOSE; what it cannot see is a connect that failed before TCP
    /// started (fallback connect hooks) or a socket whose callbacks another program switched
    /// off. A connection still in SYN_SENT after a minute merely loses its eBPF owner record.
    fn sweep(&mut self, programs: &mut bpf::Programs, live: &HashSet<u64>) {
        if self.last_sweep.elapsed() < SWEEP_EVERY {
            return;
        }
        self.last_sweep = Instant::now();
        let unseen: HashSet<u64> = programs
            .link_cookies()
            .into_iter()
            .filter(|c| !live.contains(c))
            .collect();
        let stale: Vec<u64> = unseen
            .intersection(&self.unseen_at_sweep)
            .copied()
            .collect();
        if !stale.is_empty() {
            let n = programs.forget(&stale);
            tracing::debug!(
                removed = n,
                "swept LINKS entries of sockets gone without CLOSE"
            );
        }
        self.unseen_at_sweep = unseen;
    }

    /// One interval: dump, apply closes, attribute, fold, and render rows.
    pub fn collect(
        &mut self,
        programs: &mut bpf::Programs,
        closed: &ClosedEvents,
        idle: Option<Duration>,
    ) -> Vec<Row> {
        let (dumped, complete) = self.dump_all();
        // Closes that happened before the dump are already in the ring or the queue: apply them
        // first so that a socket missing from the dump is recognised as closed with final counters.
        self.drain(closed);
        self.primed = true;

        self.listeners.clear();
        for (ns, s) in &dumped {
            if s.state == TCP_LISTEN {
                self.listeners.insert((*ns, s.local_port), s.inode);
            }
        }
        let bpf_links = programs.links().ok();
        let infos: HashMap<u64, LinkInfo> = dumped
            .iter()
            .filter(|(_, s)| s.state != TCP_LISTEN && self.links.key_of(s.cookie).is_none())
            .filter_map(|(_, s)| Some((s.cookie, bpf_links.as_ref()?.get(&s.cookie, 0).ok()?)))
            .collect();
        self.resolve_owners(&dumped, &infos);

        let mut observed = Vec::with_capacity(dumped.len());
        let mut live_cookies =
            HashSet::with_capacity_and_hasher(dumped.len(), rustc_hash::FxBuildHasher);
        for (ns, s) in &dumped {
            if s.state == TCP_LISTEN {
                continue;
            }
            live_cookies.insert(s.cookie);
            if let Some(o) = self.observe_socket(*ns, s, infos.get(&s.cookie)) {
                observed.push(o);
            }
        }
        if complete {
            self.sweep(programs, &live_cookies);
        }
        self.syn_acked.retain(|c, _| live_cookies.contains(c));
        self.waiting.retain(|c, _| live_cookies.contains(c));
        let now = now_ms();
        self.links.observe(observed, complete, now);
        self.links.prune(now, idle.map(|d| d.as_millis() as u64));

        let lost = programs.lost();
        if lost > self.lost_seen {
            self.metrics
                .counter(selfmetrics::EBPF_EVENTS_LOST, &[("probe", "tcp")])
                .add(lost - self.lost_seen);
            self.lost_seen = lost;
        }
        let rows = self.links.rows();
        let used: HashSet<u32> = rows.iter().map(|r| r.key.tgid).collect();
        self.names.retain(|t, _| used.contains(t));
        rows.into_iter().map(to_row).collect()
    }

    /// Finds owners of new sockets the eBPF side could not attribute (server sockets before
    /// close, connections older than the agent) and of listeners (the fallback), reading
    /// /proc only when some are unknown.
    fn resolve_owners(&mut self, dumped: &[(u64, DiagSocket)], infos: &HashMap<u64, LinkInfo>) {
        let mut wanted = std::collections::HashSet::new();
        for (_, s) in dumped {
            if s.inode == 0 || self.owners.contains_key(&s.inode) {
                continue;
            }
            let attributed = infos.get(&s.cookie).is_some_and(|i| i.owner == OWNER_KNOWN);
            let tracked = self.links.key_of(s.cookie).is_some();
            if s.state == TCP_LISTEN || (!tracked && !attributed) {
                wanted.insert(s.inode);
            }
        }
        self.owners
            .extend(self.resolver.resolve(wanted.into_iter()));
        let live_inodes: HashSet<u64> = dumped.iter().map(|(_, s)| s.inode).collect();
        self.owners.retain(|ino, _| live_inodes.contains(ino));
        self.resolver.retain(|ino| live_inodes.contains(&ino));
    }

    /// Turns one dumped socket into an observation, or None while its owner is still a guess.
    fn observe_socket(
        &mut self,
        ns: u64,
        s: &DiagSocket,
        info: Option<&LinkInfo>,
    ) -> Option<Observed> {
        let counters = s.counters?;
        let tracked = self.links.key_of(s.cookie).is_some();
        let role = match info {
            Some(i) => i.role,
            None if self.listeners.contains_key(&(ns, s.local_port)) => ROLE_SERVER,
            None => ROLE_CLIENT,
        };
        let exact = match info {
            Some(i) if i.owner == OWNER_KNOWN => Some(Owner {
                tgid: i.tgid,
                comm: self.name_of(i.tgid, &i.comm),
            }),
            _ => self.owners.get(&s.inode).cloned(),
        };
        let owner = if tracked {
            None // keyed already; the key is sticky
        } else if exact.is_some() {
            exact
        } else {
            let waited = self.waiting.entry(s.cookie).or_insert(0);
            if *waited < OWNER_PATIENCE {
                *waited += 1;
                return None;
            }
            self.listener_owner(ns, role, s.local_port)
        };
        // Without eBPF knowledge (older than the agent) an active open is the client side.
        let syn_acked = *self
            .syn_acked
            .entry(s.cookie)
            .or_insert_with(|| info.map_or(role == ROLE_CLIENT, |i| i.syn_acked == 1));
        let state = u32::from(s.state);
        let counters = data_only(
            counters,
            syn_acked,
            state == FIN_WAIT2,
            matches!(state, CLOSE_WAIT | LAST_ACK | CLOSING),
        );
        let local = normalize(s.local);
        let remote = normalize(s.remote);
        let comm = owner.as_ref().map(|o| o.comm.clone()).unwrap_or_default();
        Some(Observed {
            cookie: s.cookie,
            key: key(
                ns,
                owner.as_ref(),
                role,
                local,
                s.local_port,
                remote,
                s.remote_port,
            ),
            comm,
            counters,
        })
    }
}

fn comm_str(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}
