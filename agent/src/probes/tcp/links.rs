//! Folds per-socket observations into per-link records (gala-gopher's `tcp_link` rows).
//!
//! A link is (netns, process, role, client_ip, server_ip, server_port, family); many sockets can
//! share one. Counters are cumulative since the agent started watching: the final counters of
//! closed sockets are banked per link and the live sockets' current counters added on top, so
//! every counter only grows. A socket keeps the link it was first assigned to ("sticky") so that
//! a late-resolved owner never moves bytes from one series to another.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::net::IpAddr;

use super::diag::Counters;

pub const ROLE_SERVER: u8 = 0;
pub const ROLE_CLIENT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkKey {
    pub netns: u64,
    pub tgid: u32,
    pub role: u8,
    pub client_ip: IpAddr,
    pub server_ip: IpAddr,
    pub server_port: u16,
}

impl LinkKey {
    /// Address family as gala-gopher's `protocol` field reports it (2 = IPv4, 10 = IPv6).
    pub fn family(&self) -> u8 {
        if self.server_ip.is_ipv4() { 2 } else { 10 }
    }
}

/// One socket as seen now, with the link it belongs to.
#[derive(Debug, Clone)]
pub struct Observed {
    pub cookie: u64,
    pub key: LinkKey,
    pub comm: String,
    /// Data-only counters (sequence-space SYN/FIN already taken out).
    pub counters: Counters,
}

#[derive(Debug, Clone)]
struct Live {
    key: LinkKey,
    counters: Counters,
    /// Dumps in a row this socket was missing from.
    missed: u8,
}

/// Counters banked for a socket that vanished without a close event, so that a late event
/// (or a reappearance) adds only what is new.
#[derive(Debug, Clone)]
struct Vanished {
    key: LinkKey,
    counters: Counters,
    epoch: u64,
}

#[derive(Debug, Clone, Default)]
struct Banked {
    comm: String,
    bytes_received: u64,
    bytes_acked: u64,
    segs_in: u64,
    segs_out: u64,
    total_retrans: u64,
    last_srtt_us: u32,
    last_change_ms: u64,
}

/// A finished row, ready to become `tcp_link` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRow {
    pub key: LinkKey,
    pub process_name: String,
    pub link_count: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub retran_packets: u64,
    pub lost_packets: u64,
    pub rtt_us: u64,
}

/// A socket missing from this many dumps in a row is taken as closed without an event.
const MISSES_BEFORE_GONE: u8 = 2;
/// Dumps a closed cookie is remembered for (a dump racing with a close may still list it).
const TOMBSTONE_DUMPS: u64 = 3;
/// Dumps a vanished socket's banked counters are remembered for, awaiting a late close event.
const VANISHED_DUMPS: u64 = 20;

#[derive(Default)]
pub struct Links {
    live: HashMap<u64, Live>,
    banked: HashMap<LinkKey, Banked>,
    /// Cookies whose close was applied, with the dump epoch, so a racing dump cannot revive them.
    closed: HashMap<u64, u64>,
    vanished: HashMap<u64, Vanished>,
    epoch: u64,
}

impl Links {
    /// The link a socket already belongs to, if it is being tracked.
    pub fn key_of(&self, cookie: u64) -> Option<&LinkKey> {
        self.live.get(&cookie).map(|l| &l.key)
    }

    /// A socket reached CLOSE with these final counters.
    pub fn close(&mut self, sock: Observed, now_ms: u64) {
        let mut counters = sock.counters;
        let key = if let Some(l) = self.live.remove(&sock.cookie) {
            l.key
        } else if let Some(v) = self.vanished.remove(&sock.cookie) {
            counters = minus(&counters, &v.counters);
            v.key
        } else {
            sock.key
        };
        self.bank(key, &sock.comm, &counters, now_ms);
        self.closed.insert(sock.cookie, self.epoch);
    }

    /// Applies one dump of live sockets. `complete` is false when part of the dump failed: then
    /// absence means nothing. A socket absent from complete dumps several times in a row closed
    /// without an event (it predates the agent, or its event was lost): its last counters are
    /// banked, which loses at most what moved since the last dump that listed it.
    pub fn observe(&mut self, socks: Vec<Observed>, complete: bool, now_ms: u64) {
        self.epoch += 1;
        let mut seen = HashSet::with_capacity_and_hasher(socks.len(), rustc_hash::FxBuildHasher);
        for sock in socks {
            if self.closed.contains_key(&sock.cookie) {
                continue;
            }
            seen.insert(sock.cookie);
            let mut counters = sock.counters;
            let key = match self.vanished.remove(&sock.cookie) {
                // Back after a gap long enough to bank it: count only what is new since.
                Some(v) => {
                    self.unbank(&v.key, &v.counters);
                    v.key
                }
                None => sock.key.clone(),
            };
            let live = self.live.entry(sock.cookie).or_insert_with(|| Live {
                key,
                counters: Counters::default(),
                missed: 0,
            });
            counters.srtt_us = sock.counters.srtt_us;
            live.counters = counters;
            live.missed = 0;
            let banked = self.banked.entry(live.key.clone()).or_default();
            banked.last_change_ms = now_ms;
            if !sock.comm.is_empty() {
                banked.comm = sock.comm;
            }
        }
        if complete {
            let mut gone = Vec::new();
            for (cookie, l) in &mut self.live {
                if !seen.contains(cookie) {
                    l.missed += 1;
                    if l.missed >= MISSES_BEFORE_GONE {
                        gone.push(*cookie);
                    }
                }
            }
            for cookie in gone {
                if let Some(l) = self.live.remove(&cookie) {
                    self.bank(l.key.clone(), "", &l.counters, now_ms);
                    let v = Vanished {
                        key: l.key,
                        counters: l.counters,
                        epoch: self.epoch,
                    };
                    self.vanished.insert(cookie, v);
                }
            }
        }
        let epoch = self.epoch;
        self.closed.retain(|_, at| epoch - *at < TOMBSTONE_DUMPS);
        self.vanished
            .retain(|_, v| epoch - v.epoch < VANISHED_DUMPS);
    }

    fn bank(&mut self, key: LinkKey, comm: &str, c: &Counters, now_ms: u64) {
        let b = self.banked.entry(key).or_default();
        if !comm.is_empty() {
            comm.clone_into(&mut b.comm);
        }
        b.bytes_received += c.bytes_received;
        b.bytes_acked += c.bytes_acked;
        b.segs_in += u64::from(c.segs_in);
        b.segs_out += u64::from(c.segs_out);
        b.total_retrans += u64::from(c.total_retrans);
        if c.srtt_us != 0 {
            b.last_srtt_us = c.srtt_us;
        }
        b.last_change_ms = now_ms;
    }

    fn unbank(&mut self, key: &LinkKey, c: &Counters) {
        if let Some(b) = self.banked.get_mut(key) {
            b.bytes_received = b.bytes_received.saturating_sub(c.bytes_received);
            b.bytes_acked = b.bytes_acked.saturating_sub(c.bytes_acked);
            b.segs_in = b.segs_in.saturating_sub(u64::from(c.segs_in));
            b.segs_out = b.segs_out.saturating_sub(u64::from(c.segs_out));
            b.total_retrans = b.total_retrans.saturating_sub(u64::from(c.total_retrans));
        }
    }

    /// Forgets links with no live socket and no change for `idle_ms` (never when `None`).
    pub fn prune(&mut self, now_ms: u64, idle_ms: Option<u64>) {
        let Some(idle_ms) = idle_ms else { return };
        let live_keys: HashSet<&LinkKey> = self.live.values().map(|l| &l.key).collect();
        self.banked.retain(|k, b| {
            live_keys.contains(k) || now_ms.saturating_sub(b.last_change_ms) < idle_ms
        });
    }

    pub fn rows(&self) -> Vec<LinkRow> {
        let mut rows: HashMap<&LinkKey, LinkRow> = HashMap::default();
        let mut srtt: HashMap<&LinkKey, (u64, u64)> = HashMap::default();
        for (key, b) in &self.banked {
            rows.insert(
                key,
                LinkRow {
                    key: key.clone(),
                    process_name: b.comm.clone(),
                    link_count: 0,
                    rx_bytes: b.bytes_received,
                    tx_bytes: b.bytes_acked,
                    packets_in: b.segs_in,
                    packets_out: b.segs_out,
                    retran_packets: b.total_retrans,
                    lost_packets: 0,
                    rtt_us: u64::from(b.last_srtt_us),
                },
            );
        }
        for l in self.live.values() {
            let Some(row) = rows.get_mut(&l.key) else {
                continue;
            };
            let c = &l.counters;
            row.link_count += 1;
            row.rx_bytes += c.bytes_received;
            row.tx_bytes += c.bytes_acked;
            row.packets_in += u64::from(c.segs_in);
            row.packets_out += u64::from(c.segs_out);
            row.retran_packets += u64::from(c.total_retrans);
            row.lost_packets += u64::from(c.lost);
            let s = srtt.entry(&l.key).or_default();
            s.0 += u64::from(c.srtt_us);
            s.1 += 1;
        }
        // RTT of a link is the mean over its live sockets, else the last closed one's.
        for (key, (sum, n)) in srtt {
            if let Some(row) = rows.get_mut(key) {
                row.rtt_us = sum / n;
            }
        }
        let mut out: Vec<LinkRow> = rows.into_values().collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

/// What moved between an earlier reading `b` and a later one `a` of the same socket.
fn minus(a: &Counters, b: &Counters) -> Counters {
    Counters {
        bytes_received: a.bytes_received.saturating_sub(b.bytes_received),
        bytes_acked: a.bytes_acked.saturating_sub(b.bytes_acked),
        segs_in: a.segs_in.saturating_sub(b.segs_in),
        segs_out: a.segs_out.saturating_sub(b.segs_out),
        total_retrans: a.total_retrans.saturating_sub(b.total_retrans),
        lost: a.lost,
        srtt_us: a.srtt_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(port: u16) -> LinkKey {
        LinkKey {
            netns: 1,
            tgid: 42,
            role: ROLE_CLIENT,
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            server_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            server_port: port,
        }
    }

    fn obs(cookie: u64, port: u16, tx: u64) -> Observed {
        Observed {
            cookie,
            key: key(port),
            comm: "curl".into(),
            counters: Counters {
                bytes_acked: tx,
                srtt_us: 100,
                ..Counters::default()
            },
        }
    }

    #[test]
    fn live_and_closed_sockets_sum_per_link() {
        let mut l = Links::default();
        l.observe(vec![obs(1, 80, 100), obs(2, 80, 50)], true, 0);
        l.close(obs(1, 80, 120), 1);
        l.observe(vec![obs(2, 80, 70)], true, 2);
        let rows = l.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].tx_bytes, 190);
        assert_eq!(rows[0].link_count, 1);
        assert_eq!(rows[0].process_name, "curl");
    }

    #[test]
    fn a_socket_missing_from_one_dump_is_not_banked() {
        let mut l = Links::default();
        l.observe(vec![obs(1, 80, 100)], true, 0);
        l.observe(vec![], true, 1);
        l.observe(vec![obs(1, 80, 150)], true, 2);
        assert_eq!(l.rows()[0].tx_bytes, 150);
        assert_eq!(l.rows()[0].link_count, 1);
    }

    #[test]
    fn incomplete_dumps_say_nothing_about_absence() {
        let mut l = Links::default();
        l.observe(vec![obs(1, 80, 100)], true, 0);
        for t in 1..5 {
            l.observe(vec![], false, t);
        }
        assert_eq!(l.rows()[0].link_count, 1);
    }

    #[test]
    fn vanished_sockets_keep_their_counters_and_late_events_add_only_the_rest() {
        let mut l = Links::default();
        l.observe(vec![obs(1, 80, 100)], true, 0);
        l.observe(vec![], true, 1);
        l.observe(vec![], true, 2);
        assert_eq!((l.rows()[0].tx_bytes, l.rows()[0].link_count), (100, 0));
        l.close(obs(1, 80, 130), 3);
        assert_eq!(l.rows()[0].tx_bytes, 130);
    }

    #[test]
    fn a_vanished_socket_that_reappears_is_not_counted_twice() {
        let mut l = Links::default();
        l.observe(vec![obs(1, 80, 100)], true, 0);
        l.observe(vec![], true, 1);
        l.observe(vec![], true, 2);
        l.observe(vec![obs(1, 80, 140)], true, 3);
        assert_eq!((l.rows()[0].tx_bytes, l.rows()[0].link_count), (140, 1));
        l.close(obs(1, 80, 150), 4);
        assert_eq!((l.rows()[0].tx_bytes, l.rows()[0].link_count), (150, 0));
    }

    #[test]
    fn a_socket_keeps_its_first_link() {
        let mut l = Links::default();
        l.observe(vec![obs(1, 80, 10)], true, 0);
        let mut moved = obs(1, 80, 20);
        moved.key.tgid = 7;
        l.observe(vec![moved.clone()], true, 1);
        l.close(moved, 2);
        let rows = l.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key.tgid, 42);
        assert_eq!(rows[0].tx_bytes, 20);
    }

    #[test]
    fn a_stale_dump_does_not_revive_a_closed_socket() {
        let mut l = Links::default();
        l.close(obs(1, 80, 10), 0);
        l.observe(vec![obs(1, 80, 10)], true, 1);
        assert_eq!(l.rows()[0].tx_bytes, 10);
        assert_eq!(l.rows()[0].link_count, 0);
    }

    #[test]
    fn idle_links_are_pruned_unless_told_never() {
        let mut l = Links::default();
        l.close(obs(1, 80, 10), 0);
        l.observe(vec![obs(2, 81, 5)], true, 0);
        l.prune(10_000, None);
        assert_eq!(l.rows().len(), 2);
        l.prune(10_000, Some(5_000));
        let rows = l.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key.server_port, 81);
    }
}
