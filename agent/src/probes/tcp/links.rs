//! What the TCP probe remembers between intervals: one small entry per socket, one per link,
//! and the deltas that turn socket readings into `tcp_link` rows.
//!
//! A link is (netns, process, role, client_ip, server_ip, server_port, family); many sockets can
//! share one. Each socket remembers its last reading; a new reading adds only the difference to
//! its link's totals, so an unchanged socket costs one lookup and one compare, and a link's row
//! is rebuilt only when one of its sockets moved. A socket keeps the link it was first assigned
//! to ("sticky") so that a late-resolved owner never moves bytes from one series to another.
//!
//! **Counters count from when this probe instance first saw the link.** A socket created after
//! the probe started counts from zero (the caller passes a zero base); a socket that was already
//! open (after an agent restart, a probe rebuild or a reload) contributes only what it moves
//! from its first reading on: its reading then is the base. So `increase()` across a restart
//! never counts a connection's lifetime again. Each row carries `start_time`, the wall time its
//! counters started, so a consumer can tell a restart from traffic. The kernel's 32-bit segment
//! and retransmission counters are widened here: each reading adds its difference modulo 2^32.
//!
//! Time is monotonic (`Instant`): a wall-clock step neither prunes every link nor freezes
//! pruning.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::time::{Duration, Instant};

use super::{
    cookie_hash::CookieHash, diag::Counters, policy::Policy, recent::Recent, table::Table,
    walk::WalkOrder,
};

use super::key::octets;
pub use super::key::{Delta, Key, LinkKey, LinkRow, ROLE_CLIENT, ROLE_SERVER};

use super::{
    entries::{AGGREGATE, DIRTY, EXCLUDED, IDLE_LISTED, Link, PINNED, Sock, VANISHED},
    srtt_hist::{Live, SrttHists},
};

/// Whether a dumped socket was known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Tracked,
    /// Closed already (a dump racing with its close).
    Closed,
    New,
}

/// A socket missing from this many dumps in a row is taken as closed without an event.
const MISSES_BEFORE_GONE: u8 = 2;
/// Dumps a closed cookie is remembered for (a dump racing with a close may still list it).
const TOMBSTONE_DUMPS: u64 = 3;
/// Dumps a vanished socket is remembered for, awaiting a late close event.
const VANISHED_DUMPS: u8 = 20;

/// A closed socket: the dump epoch (mod 2^32) of its close and its link ([`NO_LINK`]: none).
#[derive(Debug, Clone, Copy)]
struct Tomb {
    epoch: u32,
    link: u32,
}

const NO_LINK: u32 = u32::MAX;

pub struct Links {
    policy: Policy,
    socks: Table<Sock>,
    table: Table<Link>,
    /// Cookies of tracked sockets whose close was applied, so that a racing dump cannot
    /// revive them, and a reset sent after the close finds its link; hashed keeping cookie
    /// order (see `cookie_hash.rs`). Sockets no dump listed go to `recent`.
    closed: std::collections::HashMap<u64, Tomb, CookieHash>,
    /// The same for closes of sockets never listed: nearly every close under churn.
    recent: Recent,
    /// The largest cookie ever tracked: a greater one is in neither `socks` nor `closed`.
    max_tracked: u64,
    hists: SrttHists,
    /// tgid → (process name, links of that tgid).
    names: HashMap<u32, (Box<str>, u32)>,
    dirty: Vec<u32>,
    /// The link a new socket of each role (client, server) was last keyed to (`link_for`).
    last_link: [Option<LastLink>; 2],
    /// Links whose last socket left: the only ones `prune` may forget (see `Link::flags`).
    idle: Vec<u32>,
    order: WalkOrder,
    removed: Vec<LinkKey>,
    epoch: u64,
    start: Instant,
    /// The last `now` given and its [`Links::secs`].
    now_secs: (Instant, u32),
    start_wall_ms: u64,
    individual: u32,
    aggregates: u32,
    /// Sockets folded into aggregate rows by the cap, and left out by the filters (cumulative).
    pub aggregated: u64,
    pub excluded: u64,
}

/// A link's live sockets and their RTT sum (the `srtt` histogram's count and sum).
fn live(l: &Link) -> Live {
    (l.live, if l.live > 0 { l.srtt } else { 0 })
}

fn secs(start: Instant, now: Instant) -> u32 {
    u32::try_from(now.saturating_duration_since(start).as_secs()).unwrap_or(u32::MAX)
}

impl Links {
    pub fn new(policy: Policy, start: Instant, start_wall_ms: u64) -> Self {
        Self {
            policy,
            socks: Table::default(),
            table: Table::default(),
            closed: std::collections::HashMap::default(),
            recent: Recent::default(),
            max_tracked: 0,
            hists: SrttHists::default(),
            names: HashMap::default(),
            dirty: Vec::new(),
            last_link: [None; 2],
            idle: Vec::new(),
            order: WalkOrder::default(),
            removed: Vec::new(),
            epoch: 0,
            start,
            now_secs: (start, 0),
            start_wall_ms,
            individual: 0,
            aggregates: 0,
            aggregated: 0,
            excluded: 0,
        }
    }

    #[cfg(test)]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The process name recorded for `tgid`, while it has links.
    pub fn name(&self, tgid: u32) -> Option<&str> {
        self.names
            .get(&tgid)
            .map(|(n, _)| &**n)
            .filter(|n| !n.is_empty())
    }

    pub fn is_tracked(&self, cookie: u64) -> bool {
        self.socks.find(&cookie).is_some()
    }

    pub fn sizes(&self) -> (usize, usize) {
        (self.socks.len(), self.table.len())
    }

    /// Heap bytes of the socket and link tables.
    pub fn heap_bytes(&self) -> usize {
        self.socks.heap_bytes()
            + self.table.heap_bytes()
            + self.closed.capacity() * 17
            + self.recent.heap_bytes()
            + self.hists.heap_bytes()
            + self.names.capacity() * 41
            + (self.dirty.capacity() + self.idle.capacity()) * 4
            + self.order.heap_bytes()
    }

    /// Seconds since `start` at `now`, computed once per `now` (a drain passes one to every
    /// event).
    fn secs(&mut self, now: Instant) -> u32 {
        if self.now_secs.0 != now {
            self.now_secs = (now, secs(self.start, now));
        }
        self.now_secs.1
    }

    fn touch(&mut self, li: u32, now: Instant) {
        let now = self.secs(now);
        let l = self.table.get_mut(li);
        l.changed_s = now;
        if l.flags & DIRTY == 0 {
            l.flags |= DIRTY;
            self.dirty.push(li);
        }
        // Every change that takes a link's last socket away touches it.
        if l.live == 0 && l.flags & IDLE_LISTED == 0 {
            l.flags |= IDLE_LISTED;
            self.idle.push(li);
        }
    }

    /// Starts a dump: sockets listed from here on are seen in this epoch.
    pub fn begin_dump(&mut self) {
        self.epoch += 1;
        self.order.begin();
    }

    /// A listed socket's slot: where the last dump's order says, else from the index.
    fn find_listed(&mut self, cookie: u64) -> Option<u32> {
        let socks = &self.socks;
        let guess = self
            .order
            .guesses()
            .find(|&(_, si)| socks.contains_index(si) && socks.get(si).cookie == cookie);
        let si = if let Some((pos, si)) = guess {
            self.order.matched(pos);
            si
        } else {
            self.socks.find(&cookie)?
        };
        self.order.listed(si);
        Some(si)
    }

    /// A dumped socket's reading (data-only counters). Known sockets are updated here.
    pub fn update(&mut self, cookie: u64, c: &Counters, now: Instant) -> Seen {
        let Some(si) = self.find_listed(cookie) else {
            return if self.was_closed(cookie) {
                Seen::Closed
            } else {
                Seen::New
            };
        };
        let s = self.socks.get_mut(si);
        s.seen = self.epoch as u8;
        if s.flags & EXCLUDED != 0 || (s.flags & VANISHED == 0 && s.same(c)) {
            return Seen::Tracked;
        }
        let mut s = *s;
        let l = self.table.get_mut(s.link);
        let (before, was) = (live(l), s.srtt);
        let back = s.flags & VANISHED != 0;
        if back {
            // Back after a gap long enough to be taken as gone: count only what is new.
            s.flags &= !VANISHED;
            l.join(&s);
        }
        l.absorb(&mut s, c, true);
        let after = live(l);
        let out = (!back).then_some(was);
        self.hists.change(s.link, before, after, out, Some(s.srtt));
        *self.socks.get_mut(si) = s;
        self.touch(s.link, now);
        Seen::Tracked
    }

    /// Leaves a new socket out before its owner is looked for when its port or peer address
    /// alone excludes it. Returns whether it did.
    pub fn exclude_by_address(&mut self, cookie: u64, key: &Key) -> bool {
        if self.policy.admits_address(key.port, key.peer()) {
            return false;
        }
        self.excluded += 1;
        let mut s = Sock::new(cookie, &Counters::default(), u32::MAX, self.epoch as u8);
        s.flags = EXCLUDED;
        self.insert_sock(s);
        true
    }

    /// Starts tracking a live socket first seen now. `base` is the reading its counters count
    /// from: zero for a socket opened since the probe started (the SYN aside), its current
    /// reading for one that was already open.
    pub fn track(
        &mut self,
        cookie: u64,
        key: Key,
        comm: &str,
        c: &Counters,
        base: &Counters,
        now: Instant,
    ) {
        let mut s = Sock::new(cookie, base, u32::MAX, self.epoch as u8);
        let Some(li) = self.link_for(key, comm, now) else {
            s.flags = EXCLUDED;
            self.insert_sock(s);
            return;
        };
        s.link = li;
        let l = self.table.get_mut(li);
        let before = live(l);
        l.join(&s);
        l.absorb(&mut s, c, true);
        let after = live(l);
        self.hists.change(li, before, after, None, Some(s.srtt));
        self.insert_sock(s);
        self.touch(li, now);
    }

    /// A tracked socket reached CLOSE with these final (data-only) counters. Returns false
    /// when the socket is unknown: then the caller keys it and calls [`Links::close_new`].
    pub fn close(&mut self, cookie: u64, c: &Counters, now: Instant) -> bool {
        if cookie > self.max_tracked {
            // Born since the last dump (nearly every close under churn): neither tracked nor
            // tombstoned, so neither hash is searched.
            return self.recent.get(cookie).is_some();
        }
        let Some(si) = self.socks.find(&cookie) else {
            return self.was_closed(cookie);
        };
        let mut s = self.socks.remove(si);
        let link = if s.flags & EXCLUDED == 0 {
            s.link
        } else {
            NO_LINK
        };
        self.tomb(cookie, link);
        if link == NO_LINK {
            return true;
        }
        let l = self.table.get_mut(s.link);
        if s.flags & VANISHED == 0 {
            let (before, was) = (live(l), s.srtt);
            l.absorb(&mut s, c, true);
            l.leave(&s, c.srtt_us);
            let after = live(l);
            self.hists.change(s.link, before, after, Some(was), None);
        } else {
            l.absorb(&mut s, c, false);
            if l.live == 0 && c.srtt_us != 0 {
                l.srtt = u64::from(c.srtt_us);
            }
        }
        self.touch(s.link, now);
        true
    }

    /// A socket never seen live closed: all of `c - base` is new.
    pub fn close_new(
        &mut self,
        cookie: u64,
        key: Key,
        comm: &str,
        c: &Counters,
        base: &Counters,
        now: Instant,
    ) {
        let Some(li) = self.link_for(key, comm, now) else {
            self.recent.insert(cookie, NO_LINK);
            return;
        };
        self.recent.insert(cookie, li);
        let mut s = Sock::new(cookie, base, li, 0);
        let l = self.table.get_mut(li);
        l.absorb(&mut s, c, false);
        if l.live == 0 && c.srtt_us != 0 {
            l.srtt = u64::from(c.srtt_us);
        }
        self.touch(li, now);
    }

    fn insert_sock(&mut self, s: Sock) {
        self.max_tracked = self.max_tracked.max(s.cookie);
        self.socks.insert(s);
    }

    /// Whether the socket's close was applied (and remembered).
    fn was_closed(&self, cookie: u64) -> bool {
        self.closed.contains_key(&cookie) || self.recent.get(cookie).is_some()
    }

    fn tomb(&mut self, cookie: u64, link: u32) {
        let epoch = self.epoch as u32;
        self.closed.insert(cookie, Tomb { epoch, link });
    }

    /// A reset of the socket `cookie` (`gopher_common::RST_*` bits), counted on the link the
    /// socket is (live) or was (closed since the last few dumps) counted in. Returns false when
    /// no link is known for it (a socket never seen: the reset is not attributable).
    pub fn reset(&mut self, cookie: u64, bits: u8, now: Instant) -> bool {
        let li = if let Some(si) = self.socks.find(&cookie) {
            let s = self.socks.get(si);
            if s.flags & EXCLUDED != 0 {
                return true;
            }
            s.link
        } else if let Some(link) = self
            .closed
            .get(&cookie)
            .map(|t| t.link)
            .or_else(|| self.recent.get(cookie))
        {
            if link == NO_LINK {
                return true;
            }
            link
        } else {
            return false;
        };
        if !self.table.contains_index(li) {
            return false;
        }
        let l = self.table.get_mut(li);
        if bits & gopher_common::RST_SENT != 0 {
            l.send_rsts += 1;
        }
        if bits & gopher_common::RST_RECEIVED != 0 {
            l.receive_rsts += 1;
        }
        self.touch(li, now);
        true
    }

    /// Ends a dump. A socket absent from this many dumps in a row closed without an event (it
    /// predates the probe, or its event was lost): it leaves its link with what it had moved
    /// by its last reading. Sockets whose namespace could not be dumped this time (`failed`,
    /// namespace inodes) are not missing: nothing is known about them.
    pub fn end_dump(&mut self, failed: &HashSet<u32>, now: Instant) {
        let epoch = self.epoch as u8;
        for si in self.socks.indices() {
            let mut s = *self.socks.get(si);
            let age = epoch.wrapping_sub(s.seen);
            if age == 0 {
                continue;
            }
            if s.flags & EXCLUDED != 0 {
                if age >= MISSES_BEFORE_GONE {
                    self.socks.remove(si);
                }
                continue;
            }
            let l = self.table.get_mut(s.link);
            if s.flags & VANISHED == 0 {
                if !failed.is_empty() && (failed.contains(&l.key.netns) || l.key.netns == 0) {
                    self.socks.get_mut(si).seen = epoch;
                    continue;
                }
                if age < MISSES_BEFORE_GONE {
                    continue;
                }
                let before = live(l);
                l.leave(&s, 0);
                let after = live(l);
                self.hists.change(s.link, before, after, Some(s.srtt), None);
                s.flags |= VANISHED;
                *self.socks.get_mut(si) = s;
                self.touch(s.link, now);
            } else if age >= MISSES_BEFORE_GONE + VANISHED_DUMPS {
                self.socks.remove(si);
                continue;
            }
            self.table.get_mut(s.link).flags |= PINNED;
        }
        let epoch = self.epoch as u32;
        self.closed
            .retain(|_, t| u64::from(epoch.wrapping_sub(t.epoch)) < TOMBSTONE_DUMPS);
        if self.closed.capacity() > 1024 && self.closed.len() * 4 < self.closed.capacity() {
            self.closed.shrink_to_fit();
        }
        self.socks.compact();
        self.hists.shrink();
    }

    /// Forgets links with no live socket and no change for `idle` (never when `None`). Only
    /// the links whose last socket left are looked at: at 100 k idle links, walking them all
    /// was a tenth of the agent's CPU.
    pub fn prune(&mut self, now: Instant, idle: Option<Duration>) {
        let Some(idle) = idle else { return };
        let now = secs(self.start, now);
        let mut list = std::mem::take(&mut self.idle);
        list.retain(|&li| {
            if !self.table.contains_index(li) {
                return false;
            }
            let l = self.table.get_mut(li);
            if l.flags & IDLE_LISTED == 0 {
                // Its slot went to a link listed under another entry, or to none.
                return false;
            }
            if l.live > 0 {
                l.flags &= !(IDLE_LISTED | PINNED);
                return false;
            }
            if l.flags & PINNED != 0 {
                l.flags &= !PINNED;
                return true;
            }
            if u64::from(now.saturating_sub(l.changed_s)) < idle.as_secs() {
                return true;
            }
            let l = self.table.remove(li);
            if l.flags & AGGREGATE != 0 {
                self.aggregates -= 1;
            } else {
                self.individual -= 1;
            }
            if let Some(n) = self.names.get_mut(&l.key.tgid) {
                n.1 -= 1;
                if n.1 == 0 {
                    self.names.remove(&l.key.tgid);
                }
            }
            self.removed.push(l.key.link_key());
            false
        });
        self.idle = list;
        self.table.compact();
    }
}

#[path = "links_keying.rs"]
mod keying;
use keying::LastLink;

#[path = "links_rows.rs"]
mod rows;

#[cfg(test)]
#[path = "links_tests.rs"]
mod tests;
