//! One interval of the TCP probe: socket dumps of every namespace (the eBPF iterator, else
//! sock_diag), streamed chunk by chunk into the link state (`links.rs`), owners for the few new
//! sockets the eBPF side could not attribute, and the close events from the ring buffer
//! (`closes.rs`).
//!
//! Cost follows the work: a socket already tracked costs a table lookup and a compare; only
//! new sockets are looked up in the eBPF map (and, when unattributed, in /proc). Nothing
//! holds a list of every socket.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use gopher_common::{OWNER_KNOWN, ROLE_UNKNOWN};

use super::{
    bpf,
    closed::ClosedEvents,
    data_only,
    diag::{self, Counters, DiagSocket},
    ip_from_words,
    iter::{self, TcpIter},
    key,
    links::{Delta, Links, ROLE_CLIENT, ROLE_SERVER, Seen},
    netns::Namespaces,
    normalize,
    owners::{self, Owner, comm_str, shrink},
    policy::Policy,
    role,
    seqspace::{fin_adjusted, fresh_base},
    sweep::Sweeper,
    to_row,
};
use crate::{
    clock::wall_ms,
    imdb::Row,
    telemetry::{self, Counter, SelfMetrics},
};

/// Intervals a new socket whose owner is only guessed (not yet accepted, or not found in
/// /proc) waits for its real owner before it is keyed to the guess for good.
const OWNER_PATIENCE: u8 = 2;

/// The process name of `tgid`, appended to `out`: its main thread's comm from /proc (the eBPF
/// side sees the calling thread's name, which for thread pools differs per thread and would
/// split one process's links over many series); the eBPF name only once the process is gone.
/// A tgid that already has links keeps the name it was first recorded with (no /proc read).
fn name_into(links: &Links, tgid: u32, fallback: &[u8; 16], out: &mut String) {
    if let Some(n) = links.name(tgid) {
        out.push_str(n);
        return;
    }
    let name = owners::comm(tgid);
    if name.is_empty() {
        out.push_str(&comm_str(fallback));
    } else {
        out.push_str(&name);
    }
}

/// A new socket still without a known owner.
struct Waiting {
    waited: u8,
    role: u8,
    /// The reading its counters count from (fixed at first sight).
    base: Counters,
    seen: bool,
}

/// A new socket of this dump that needs an owner from /proc.
struct Pending {
    sock: DiagSocket,
    netns: u64,
    role: u8,
    counters: Counters,
    base: Counters,
}

struct Metrics {
    errors: Counter,
    lost: Counter,
    aggregated: Counter,
    excluded: Counter,
    netns_open: Counter,
    netns_dump: Counter,
    resets_unattributed: Counter,
}

pub struct Collector {
    links: Links,
    namespaces: Namespaces,
    /// Listening socket inode → owner (the fallback for unattributed server sockets).
    owners: HashMap<u64, Owner>,
    /// /proc walks for owners, with back-off for sockets whose owner is not found.
    resolver: owners::Resolver,
    /// (netns inode, port) → listening socket inode.
    listeners: HashMap<(u64, u16), u64>,
    /// The ephemeral port range, read at each dump (see `role.rs`).
    ephemeral: (u16, u16),
    waiting: HashMap<u64, Waiting>,
    pending: Vec<Pending>,
    /// A process name being keyed, kept between sockets for its room.
    comm: String,
    /// The process whose name `comm` holds, while a drain applies its events.
    comm_of: Option<u32>,
    buf: Vec<u8>,
    last_ns_refresh: Instant,
    sweeper: Sweeper,
    metrics: Metrics,
    lost_seen: u64,
    aggregated_seen: u64,
    excluded_seen: u64,
    /// Set once the first dump's closes were applied; see [`Collector::drain`].
    primed: bool,
    /// Namespaces this probe run has dumped completely at least once. Only a socket in a
    /// namespace's first dump can predate the probe; any other was born since.
    dumped_ns: HashSet<u64>,
    /// Namespaces that existed at this probe run's first dump (reachable or not). One created
    /// since holds only sockets born since: its first dump counts them from zero, like any
    /// later dump (a server socket has no eBPF entry while it is live).
    ns_at_start: HashSet<u64>,
    /// The socket iterator, when it loaded; sock_diag otherwise.
    iter: Option<TcpIter>,
}

impl Collector {
    pub fn new(metrics: &Arc<SelfMetrics>, policy: Policy) -> Self {
        let tcp = [("probe", "tcp")];
        Self {
            links: Links::new(policy, Instant::now(), wall_ms()),
            namespaces: Namespaces::default(),
            owners: HashMap::default(),
            resolver: owners::Resolver::default(),
            listeners: HashMap::default(),
            ephemeral: role::ephemeral_range(),
            waiting: HashMap::default(),
            pending: Vec::new(),
            comm: String::new(),
            comm_of: None,
            buf: Vec::new(),
            last_ns_refresh: Instant::now(),
            sweeper: Sweeper::default(),
            metrics: Metrics {
                errors: metrics.counter(telemetry::PROBE_ERRORS, &tcp),
                lost: metrics.counter(telemetry::EBPF_EVENTS_LOST, &tcp),
                aggregated: metrics.counter(telemetry::TCP_LINKS_AGGREGATED, &[]),
                excluded: metrics.counter(telemetry::TCP_SOCKETS_EXCLUDED, &[]),
                netns_open: metrics.counter(telemetry::TCP_NETNS_ERRORS, &[("reason", "open")]),
                netns_dump: metrics.counter(telemetry::TCP_NETNS_ERRORS, &[("reason", "dump")]),
                resets_unattributed: metrics.counter(telemetry::TCP_RESETS_UNATTRIBUTED, &[]),
            },
            lost_seen: 0,
            aggregated_seen: 0,
            excluded_seen: 0,
            primed: false,
            dumped_ns: HashSet::default(),
            ns_at_start: HashSet::default(),
            iter: None,
        }
    }

    /// Reads sockets through the iterator from now on instead of sock_diag.
    pub fn use_iterator(&mut self, it: TcpIter) {
        self.iter = Some(it);
    }

    /// Learns new namespaces and closes vanished ones. A namespace that newly cannot be opened
    /// is logged and counted once (`netns` retries it quietly at every full re-walk). Returns
    /// the inodes of every namespace that cannot be opened now: their sockets are unknown this
    /// time, not gone.
    fn refresh_namespaces(&mut self) -> HashSet<u32> {
        for f in self.namespaces.refresh() {
            tracing::warn!(
                path = %f.path.display(),
                netns = f.inode,
                reason = f.reason,
                "cannot open sock_diag in network namespace: {}; its sockets are not dumped \
                 until it opens or vanishes",
                f.error
            );
            self.metrics.netns_open.inc();
            self.metrics.errors.inc();
        }
        self.last_ns_refresh = Instant::now();
        self.namespaces
            .unreachable()
            .map(|inode| u32::try_from(inode).unwrap_or(u32::MAX))
            .collect()
    }

    /// Dumps every namespace's listeners, then streams its link-carrying sockets into the
    /// link state, from the socket iterator when it loaded, else from sock_diag. Returns the
    /// inodes of namespaces whose dump is incomplete.
    fn dump_all(&mut self, bpf: Option<&bpf::Entries<'_>>, now: Instant) -> (HashSet<u32>, usize) {
        let mut failed = self.refresh_namespaces();
        let mut namespaces = std::mem::take(&mut self.namespaces);
        if !self.primed {
            self.ns_at_start = namespaces
                .by_inode
                .keys()
                .copied()
                .chain(failed.iter().map(|&i| u64::from(i)))
                .collect();
        }
        let mut buf = std::mem::take(&mut self.buf);
        let mut broken = Vec::new();
        // A socket the eBPF side does not know is a server if one listens on its port in its
        // namespace (and its owner is the listener's, as a last resort): both sources hand a
        // namespace's listeners over before its other sockets.
        self.listeners.clear();
        self.ephemeral = role::ephemeral_range();
        self.links.begin_dump();
        let mut dumped = 0;
        let all: Vec<_> = namespaces.by_inode.values().collect();
        // Iterators are made a batch of namespaces at a time (one thread visits them), and
        // only that many are open at once: thousands of namespaces stay within LimitNOFILE.
        for batch in all.chunks(iter::OPEN_AT_ONCE) {
            let mut walks: HashMap<u64, std::io::Result<OwnedFd>> =
                self.iter.as_ref().map_or_else(HashMap::default, |it| {
                    let list: Vec<_> = batch
                        .iter()
                        .map(|ns| (ns.inode, ns.diag.as_raw_fd()))
                        .collect();
                    it.open(&list).into_iter().collect()
                });
            for ns in batch {
                let first =
                    !self.dumped_ns.contains(&ns.inode) && self.ns_at_start.contains(&ns.inode);
                let mut on = |s: &DiagSocket| {
                    if u32::from(s.state) == gopher_common::TCP_LISTEN {
                        self.listeners.insert((ns.inode, s.local_port), s.inode);
                    } else {
                        dumped += 1;
                        self.on_socket(ns.inode, s, bpf, first, now);
                    }
                };
                let r = match walks.remove(&ns.inode) {
                    Some(walk) => walk.and_then(|fd| iter::read(fd, &mut buf, &mut on)),
                    None => diag::dump_sockets(&ns.diag, &mut buf, &mut on),
                };
                if let Err(e) = r {
                    let source = if self.iter.is_some() {
                        "socket iterator"
                    } else {
                        "sock_diag"
                    };
                    tracing::warn!(netns = ns.inode, "{source} dump failed: {e}");
                    broken.push(ns.inode);
                } else {
                    self.dumped_ns.insert(ns.inode);
                }
            }
        }
        self.dumped_ns
            .retain(|inode| namespaces.by_inode.contains_key(inode));
        let unreachable = &failed;
        self.ns_at_start.retain(|inode| {
            namespaces.by_inode.contains_key(inode)
                || u32::try_from(*inode).is_ok_and(|i| unreachable.contains(&i))
        });
        for inode in broken {
            // A socket left mid-dump would answer the next request with stale messages: the
            // next refresh opens a fresh one.
            if namespaces.by_inode.remove(&inode).is_some() {
                self.metrics.netns_dump.inc();
                self.metrics.errors.inc();
            }
            failed.insert(u32::try_from(inode).unwrap_or(u32::MAX));
        }
        self.namespaces = namespaces;
        self.buf = buf;
        (failed, dumped)
    }

    /// One dumped socket: updates a tracked one, keys a new one whose owner the eBPF side
    /// recorded, and leaves the rest for the owner lookup after the dump.
    fn on_socket(
        &mut self,
        netns: u64,
        s: &DiagSocket,
        bpf: Option<&bpf::Entries<'_>>,
        first_dump: bool,
        now: Instant,
    ) {
        let Some(raw) = s.counters else { return };
        let c = fin_adjusted(raw, s.state);
        if self.links.update(s.cookie, &c, now) != Seen::New {
            return;
        }
        let (role, base) = if let Some(w) = self.waiting.get_mut(&s.cookie) {
            w.seen = true;
            (w.role, w.base)
        } else {
            let info = bpf.and_then(|m| m.get(s.cookie));
            let role = match info {
                Some(i) if i.role != ROLE_UNKNOWN => i.role,
                _ => self.unrecorded_role(netns, s.local_port, s.remote_port),
            };
            if self
                .links
                .exclude_by_address(s.cookie, &Self::socket_key(netns, s, role, None))
            {
                return;
            }
            // An entry in this probe instance's LINKS map means the socket opened since the
            // probe started: all of it counts. Without one, a socket in its namespace's first
            // dump predates the probe (an agent restart, a probe rebuild) and counts from this
            // first reading. Any later one was born since: its entry is gone because it closed
            // while the dump was read (its close event follows), or did not fit the map.
            // (An entry made at a release or a reset, `born` 0, says nothing of the socket's
            // start.)
            let base = match info {
                Some(i) if i.born == 1 => fresh_base(i.syn_acked == 1),
                _ if first_dump => c,
                _ => fresh_base(role == ROLE_CLIENT),
            };
            if let Some(i) = info.filter(|i| i.owner == OWNER_KNOWN) {
                let mut comm = std::mem::take(&mut self.comm);
                comm.clear();
                name_into(&self.links, i.tgid, &i.comm, &mut comm);
                let owner = Owner {
                    tgid: i.tgid,
                    comm: String::new(),
                };
                let k = Self::socket_key(netns, s, role, Some(&owner));
                self.links.track(s.cookie, k, &comm, &c, &base, now);
                self.comm = comm;
                return;
            }
            (role, base)
        };
        self.pending.push(Pending {
            sock: s.clone(),
            netns,
            role,
            counters: c,
            base,
        });
    }

    fn socket_key(
        netns: u64,
        s: &DiagSocket,
        role: u8,
        owner: Option<&Owner>,
    ) -> super::links::Key {
        key(
            netns,
            owner,
            role,
            normalize(s.local),
            s.local_port,
            normalize(s.remote),
            s.remote_port,
        )
    }

    /// Finds owners of this dump's unattributed new sockets in /proc, in one scan (with the
    /// listeners they may fall back to), and keys those sockets; the others wait a little for
    /// a better owner. Nothing new, no scan: idle links cost no /proc walk.
    fn resolve_pending(&mut self, now: Instant) {
        if self.iter.is_some() {
            // The iterator reads inodes of listeners only: sock_diag gives the others'.
            let ns = &self.namespaces.by_inode;
            let socks = self.pending.iter_mut().filter_map(|p| {
                let fd = &ns.get(&p.netns)?.diag;
                (p.sock.inode == 0).then_some((fd, &mut p.sock))
            });
            diag::fill_inodes(socks, &mut self.buf);
        }
        let mut wanted = std::collections::HashSet::new();
        for p in &self.pending {
            if p.sock.inode != 0 {
                wanted.insert(p.sock.inode);
            }
            if p.role == ROLE_SERVER
                && let Some(&ino) = self.listeners.get(&(p.netns, p.sock.local_port))
                && !self.owners.contains_key(&ino)
            {
                wanted.insert(ino);
            }
        }
        if !wanted.is_empty() {
            let found = self.resolver.resolve(wanted.iter().copied());
            self.owners.extend(found);
        }
        // Remember the back-off only for sockets still looked for.
        self.resolver.retain(|ino| wanted.contains(&ino));
        self.waiting.retain(|_, w| std::mem::take(&mut w.seen));
        for p in std::mem::take(&mut self.pending) {
            let exact = self.owners.get(&p.sock.inode).cloned();
            let owner = if exact.is_some() {
                exact
            } else {
                let w = self.waiting.entry(p.sock.cookie).or_insert(Waiting {
                    waited: 0,
                    role: p.role,
                    base: p.base,
                    seen: false,
                });
                if w.waited < OWNER_PATIENCE {
                    w.waited += 1;
                    continue;
                }
                self.listener_owner(p.netns, p.role, p.sock.local_port)
                    .cloned()
            };
            self.waiting.remove(&p.sock.cookie);
            let k = Self::socket_key(p.netns, &p.sock, p.role, owner.as_ref());
            let comm = owner.map(|o| o.comm).unwrap_or_default();
            self.links
                .track(p.sock.cookie, k, &comm, &p.counters, &p.base, now);
        }
        let listening: HashSet<u64> = self.listeners.values().copied().collect();
        self.owners.retain(|ino, _| listening.contains(ino));
        // The first interval after a start looks up every socket at once: give that room back.
        shrink(&mut self.owners);
        shrink(&mut self.waiting);
    }

    /// One interval: dump and apply, owners, closes, ageing; returns what changed (the changed
    /// rows only when `rows`: a caller about to send every row needs none).
    pub fn collect(
        &mut self,
        programs: &mut bpf::Programs,
        closed: &ClosedEvents,
        idle: Option<Duration>,
        rows: bool,
    ) -> Delta {
        let now = Instant::now();
        let cpu = diag::thread_cpu();
        let (failed, dumped) = {
            let bpf_links = programs.entries().ok();
            self.dump_all(bpf_links.as_ref(), now)
        };
        let dump_cpu = diag::thread_cpu().since(cpu);
        let dump_time = now.elapsed();
        self.resolve_pending(now);
        // Closes that happened before the dump are already in the ring or the queue: apply
        // them before absence is judged, so that a socket missing from the dump is recognised
        // as closed with final counters.
        self.drain(closed);
        self.primed = true;
        self.links.end_dump(&failed, now);
        // The destroy hooks remove every entry themselves, and keep some for sockets no dump
        // lists (in CLOSE, held by their process): nothing to sweep there.
        if failed.is_empty() && programs.hooks != bpf::Hooks::Destroy {
            let (links, waiting) = (&self.links, &self.waiting);
            self.sweeper.sweep(programs, |c| {
                links.is_tracked(c) || waiting.contains_key(&c)
            });
        }
        self.links.prune(now, idle);

        let lost = programs.lost();
        if lost > self.lost_seen {
            self.metrics.lost.add(lost - self.lost_seen);
            self.lost_seen = lost;
        }
        self.metrics
            .aggregated
            .add(self.links.aggregated - self.aggregated_seen);
        self.aggregated_seen = self.links.aggregated;
        self.metrics
            .excluded
            .add(self.links.excluded - self.excluded_seen);
        self.excluded_seen = self.links.excluded;
        let delta = self.links.take_delta_with(rows);
        let (socks, links) = self.links.sizes();
        tracing::debug!(
            dumped,
            socks,
            links,
            changed = delta.changed.len(),
            removed = delta.removed.len(),
            state_bytes = self.links.heap_bytes(),
            dump_us = dump_time.as_micros() as u64,
            dump_sys_us = dump_cpu.sys.as_micros() as u64,
            dump_user_us = dump_cpu.user.as_micros() as u64,
            collect_us = now.elapsed().as_micros() as u64,
            collect_cpu_us = {
                let c = diag::thread_cpu().since(cpu);
                (c.user + c.sys).as_micros() as u64
            },
            "tcp collect"
        );
        delta
    }

    /// Every link's index: the full listing, built piece by piece with [`Collector::rows_of`].
    pub fn link_ids(&self) -> Vec<u32> {
        self.links.ids()
    }

    /// The rows of the links at `ids` (a piece of [`Collector::link_ids`]).
    pub fn rows_of(&self, ids: &[u32]) -> Vec<Row> {
        self.links.rows_of(ids).into_iter().map(to_row).collect()
    }
}

#[path = "closes.rs"]
mod closes;
