//! Folds per-socket observations into per-link records (gala-gopher's `tcp_link` rows).
//!
//! A link is (netns, process, role, client_ip, server_ip, server_port, family); many sockets can
//! share one. Counters are cumulative since the agent started watching: the final counters of
//! closed sockets are banked per link and the live sockets' current counters added on top, so
//! every counter only grows. A socket keeps the link it was first assigned to ("sticky") so that
//! a late-resolved owner never moves bytes from one series to another.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

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
    pub counters: Counters,
}

#[derive(Debug, Clone)]
struct Live {
    key: LinkKey,
    counters: Counters,
    seen: u64,
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

#[derive(Default)]
pub struct Links {
    live: HashMap<u64, Live>,
    banked: HashMap<LinkKey, Banked>,
    /// Cookies whose close was applied, so a dump that raced with the close cannot revive them.
    closed: HashMap<u64, u64>,
    epoch: u64,
}

impl Links {
    /// The link a socket already belongs to, if it is being tracked.
    pub fn key_of(&self, cookie: u64) -> Option<&LinkKey> {
        self.live.get(&cookie).map(|l| &l.key)
    }

    /// A socket reached CLOSE with these final counters.
    pub fn close(&mut self, sock: Observed, now_ms: u64) {
        let key = self.live.remove(&sock.cookie).map_or(sock.key, |l| l.key);
        self.bank(key, &sock.comm, &sock.counters, now_ms);
        self.closed.insert(sock.cookie, now_ms);
    }

    /// Applies one full dump of live sockets. Sockets tracked before but absent now closed
    /// without an event (they predate the agent, or their event was lost): their last counters
    /// are banked, which loses at most what moved since the previous dump.
    pub fn observe(&mut self, socks: Vec<Observed>, now_ms: u64) {
        self.epoch += 1;
        for sock in socks {
            if self.closed.contains_key(&sock.cookie) {
                continue;
            }
            let live = self.live.entry(sock.cookie).or_insert_with(|| Live {
                key: sock.key.clone(),
                counters: Counters::default(),
                seen: 0,
            });
            live.counters = sock.counters;
            live.seen = self.epoch;
            let banked = self.banked.entry(live.key.clone()).or_default();
            banked.last_change_ms = now_ms;
            if banked.comm.is_empty() || !sock.comm.is_empty() {
                banked.comm = sock.comm;
            }
        }
        let epoch = self.epoch;
        let gone: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, l)| l.seen != epoch)
            .map(|(c, _)| *c)
            .collect();
        for cookie in gone {
            if let Some(l) = self.live.remove(&cookie) {
                self.bank(l.key, "", &l.counters, now_ms);
            }
        }
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
        b.last_srtt_us = c.srtt_us;
        b.last_change_ms = now_ms;
    }

    /// Forgets links with no live socket and no change for `idle_ms`, and closed-cookie
    /// tombstones older than that.
    pub fn prune(&mut self, now_ms: u64, idle_ms: u64) {
        let live_keys: HashSet<&LinkKey> = self.live.values().map(|l| &l.key).collect();
        self.banked.retain(|k, b| {
            live_keys.contains(k) || now_ms.saturating_sub(b.last_change_ms) < idle_ms
        });
        self.closed
            .retain(|_, at| now_ms.saturating_sub(*at) < idle_ms.max(60_000));
    }

    pub fn rows(&self) -> Vec<LinkRow> {
        let mut rows: HashMap<&LinkKey, LinkRow> = HashMap::new();
        let mut srtt: HashMap<&LinkKey, (u64, u64)> = HashMap::new();
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
        l.observe(vec![obs(1, 80, 100), obs(2, 80, 50)], 0);
        l.close(obs(1, 80, 120), 1);
        l.observe(vec![obs(2, 80, 70)], 2);
        let rows = l.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].tx_bytes, 190);
        assert_eq!(rows[0].link_count, 1);
        assert_eq!(rows[0].process_name, "curl");
    }

    #[test]
    fn counters_never_go_back_when_a_socket_vanishes_without_event() {
        let mut l = Links::default();
        l.observe(vec![obs(1, 80, 100)], 0);
        l.observe(vec![], 1);
        assert_eq!(l.rows()[0].tx_bytes, 100);
        assert_eq!(l.rows()[0].link_count, 0);
    }

    #[test]
    fn a_socket_keeps_its_first_link() {
        let mut l = Links::default();
        l.observe(vec![obs(1, 80, 10)], 0);
        let mut moved = obs(1, 80, 20);
        moved.key.tgid = 7;
        l.observe(vec![moved.clone()], 1);
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
        l.observe(vec![obs(1, 80, 10)], 1);
        assert_eq!(l.rows()[0].tx_bytes, 10);
        assert_eq!(l.rows()[0].link_count, 0);
    }

    #[test]
    fn idle_links_are_pruned() {
        let mut l = Links::default();
        l.close(obs(1, 80, 10), 0);
        l.observe(vec![obs(2, 81, 5)], 0);
        l.prune(10_000, 5_000);
        let rows = l.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key.server_port, 81);
    }
}
