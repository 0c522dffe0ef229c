//! The native TCP link probe: eBPF for per-connection events, sock_diag for live counters.
//!
//! Every interval it dumps each network namespace's TCP sockets (tcp_info) and drains the close
//! events the eBPF programs emitted, then folds both into `tcp_link` rows (see `links.rs`).
//! Nothing runs per packet or per send/recv call.

mod bpf;
mod diag;
mod links;
mod netns;
mod owners;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use gopher_common::{LinkClosed, LinkInfo, OWNER_KNOWN};
use tokio::io::{Interest, unix::AsyncFd};

use self::{
    diag::{Counters, DiagSocket, TCP_LISTEN},
    links::{LinkKey, LinkRow, Links, Observed, ROLE_CLIENT, ROLE_SERVER},
    netns::Namespaces,
    owners::Owner,
};
use super::{Probe, ProbeContext, ProbeFuture, now_ms};
use crate::{
    imdb::{FieldMeta, FieldType, Row, TableMeta},
    selfmetrics,
};

pub const TABLE: &str = "tcp_link";

/// Field order is the row's positional order.
const FIELDS: &[(&str, FieldType, &str)] = &[
    (
        "tgid",
        FieldType::Key,
        "process (thread group) id owning the local end",
    ),
    (
        "role",
        FieldType::Key,
        "role of the local end: 0 server, 1 client",
    ),
    ("client_ip", FieldType::Key, "client address"),
    ("server_ip", FieldType::Key, "server address"),
    ("server_port", FieldType::Key, "server port"),
    (
        "protocol",
        FieldType::Key,
        "address family: 2 IPv4, 10 IPv6",
    ),
    (
        "netns",
        FieldType::Key,
        "network namespace inode of the local end",
    ),
    (
        "process_name",
        FieldType::Label,
        "command name of the owning process",
    ),
    (
        "link_count",
        FieldType::Gauge,
        "open TCP connections of this link",
    ),
    (
        "rx_bytes",
        FieldType::Counter,
        "bytes received (tcp_info bytes_received)",
    ),
    (
        "tx_bytes",
        FieldType::Counter,
        "bytes sent and acknowledged (tcp_info bytes_acked)",
    ),
    ("packets_in", FieldType::Counter, "segments received"),
    ("packets_out", FieldType::Counter, "segments sent"),
    (
        "retran_packets",
        FieldType::Counter,
        "segments retransmitted",
    ),
    (
        "lost_packets",
        FieldType::Gauge,
        "segments currently presumed lost (tcp_info lost)",
    ),
    (
        "rtt",
        FieldType::Gauge,
        "smoothed round-trip time in microseconds",
    ),
];

pub fn table_meta() -> TableMeta {
    TableMeta {
        name: TABLE.to_owned(),
        description: "TCP links per process and peer (gala-gopher tcp_link)".to_owned(),
        fields: FIELDS
            .iter()
            .map(|(name, ty, d)| FieldMeta {
                name: (*name).to_owned(),
                ty: *ty,
                description: (*d).to_owned(),
            })
            .collect(),
    }
}

pub struct TcpProbe {
    /// Capacity of the eBPF map of live sockets.
    pub max_links: u32,
}

impl Default for TcpProbe {
    fn default() -> Self {
        Self { max_links: 65536 }
    }
}

impl Probe for TcpProbe {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn tables(&self) -> Vec<TableMeta> {
        vec![table_meta()]
    }

    fn run(&self, ctx: ProbeContext) -> ProbeFuture {
        let max_links = self.max_links;
        Box::pin(async move { run(ctx, max_links).await })
    }
}

async fn run(mut ctx: ProbeContext, max_links: u32) -> anyhow::Result<()> {
    let mut programs = bpf::load(max_links)?;
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, until dropped, and
    // the AsyncFd owns the ring buffer.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(programs.take_closed()?, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("polling the CLOSED ring buffer: {e}"))?;
    tracing::info!(cgroup = %programs.cgroup.display(), "tcp probe attached");
    let mut state = Collector::new(Arc::clone(&ctx.metrics));
    ctx.state.running();
    let mut tick = tokio::time::interval(ctx.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = ctx.stop.changed() => {
                if changed.is_err() || *ctx.stop.borrow() {
                    break;
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the CLOSED ring buffer")?;
                state.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let rows = state.collect(&programs, ring.get_mut(), ctx.record_timeout);
                if ctx.rows.send(rows).await.is_err() {
                    break;
                }
            }
        }
    }
    tracing::info!("tcp probe detaching");
    drop(ring);
    drop(programs);
    Ok(())
}

/// Everything the probe remembers between intervals.
struct Collector {
    links: Links,
    namespaces: Namespaces,
    /// Socket inode → owner, for inodes seen live (pruned to those).
    owners: HashMap<u64, Owner>,
    /// (netns inode, port) → listening socket inode.
    listeners: HashMap<(u64, u16), u64>,
    metrics: Arc<crate::selfmetrics::SelfMetrics>,
    lost_seen: u64,
}

impl Collector {
    fn new(metrics: Arc<crate::selfmetrics::SelfMetrics>) -> Self {
        Self {
            links: Links::default(),
            namespaces: Namespaces::default(),
            owners: HashMap::new(),
            listeners: HashMap::new(),
            metrics,
            lost_seen: 0,
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let now = now_ms();
        let mut unknown_ns = false;
        while let Some(item) = ring.next() {
            if item.len() < size_of::<LinkClosed>() {
                continue;
            }
            // SAFETY: the eBPF side writes exactly a LinkClosed; read_unaligned copes with the
            // ring buffer's 8-byte alignment.
            let ev: LinkClosed = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if self.namespaces.inode_of_cookie(ev.netns_cookie).is_none() && !unknown_ns {
                // A namespace born since the last refresh: learn it before keying.
                self.namespaces.refresh();
                unknown_ns = true;
            }
            let sock = self.closed_event(&ev);
            self.links.close(sock, now);
        }
    }

    fn closed_event(&self, ev: &LinkClosed) -> Observed {
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
            Some(Owner {
                tgid: ev.info.tgid,
                comm: comm_str(&ev.info.comm),
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
                ev.info.syn_acked == 1,
                we_sent_fin && ev.all_acked == 1,
                fin_received,
            ),
        }
    }

    fn listener_owner(&self, netns: u64, role: u8, port: u16) -> Option<Owner> {
        if role != ROLE_SERVER {
            return None;
        }
        let inode = self.listeners.get(&(netns, port))?;
        self.owners.get(inode).cloned()
    }

    /// Every namespace's listening and link-carrying TCP sockets, with the namespace inode.
    fn dump_all(&mut self) -> Vec<(u64, DiagSocket)> {
        for (path, e) in self.namespaces.refresh() {
            tracing::debug!(path = %path.display(), "cannot open sock_diag in namespace: {e}");
        }
        let mut dumped: Vec<(u64, DiagSocket)> = Vec::new();
        for ns in self.namespaces.by_inode.values() {
            for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                let mut socks = Vec::new();
                if let Err(e) = diag::dump(&ns.diag, family, &mut socks) {
                    tracing::warn!(netns = ns.inode, family, "sock_diag dump failed: {e}");
                    self.metrics
                        .counter(selfmetrics::PROBE_ERRORS, &[("probe", "tcp")])
                        .inc();
                }
                dumped.extend(socks.into_iter().map(|s| (ns.inode, s)));
            }
        }
        dumped
    }

    fn collect(
        &mut self,
        programs: &bpf::Programs,
        ring: &mut RingBuf<MapData>,
        record_timeout: Duration,
    ) -> Vec<Row> {
        let dumped = self.dump_all();
        // Closes that happened before the dump are already in the ring: apply them first so
        // that a socket missing from the dump is recognised as closed with final counters.
        self.drain(ring);

        self.listeners.clear();
        for (ns, s) in &dumped {
            if s.state == TCP_LISTEN {
                self.listeners.insert((*ns, s.local_port), s.inode);
            }
        }
        let bpf_links = programs.links().ok();
        let info_of = |cookie: u64| -> Option<LinkInfo> {
            bpf_links.as_ref().and_then(|m| m.get(&cookie, 0).ok())
        };

        // Resolve owners of new sockets the eBPF side could not attribute (server sockets
        // before close, connections older than the agent), and of listeners (fallback).
        let mut infos: HashMap<u64, Option<LinkInfo>> = HashMap::new();
        let mut wanted: HashSet<u64> = HashSet::new();
        for (_, s) in &dumped {
            if s.inode == 0 || self.owners.contains_key(&s.inode) {
                continue;
            }
            if s.state == TCP_LISTEN {
                wanted.insert(s.inode);
            } else if self.links.key_of(s.cookie).is_none() {
                let info = info_of(s.cookie);
                if info.is_none_or(|i| i.owner != OWNER_KNOWN) {
                    wanted.insert(s.inode);
                }
                infos.insert(s.cookie, info);
            }
        }
        self.owners.extend(owners::scan(&wanted));
        let live_inodes: HashSet<u64> = dumped.iter().map(|(_, s)| s.inode).collect();
        self.owners.retain(|ino, _| live_inodes.contains(ino));

        let mut observed = Vec::with_capacity(dumped.len());
        for (ns, s) in &dumped {
            if s.state == TCP_LISTEN {
                continue;
            }
            let Some(counters) = s.counters else { continue };
            let info = match infos.get(&s.cookie) {
                Some(i) => *i,
                None => info_of(s.cookie),
            };
            let role = match info {
                Some(i) => i.role,
                None if self.listeners.contains_key(&(*ns, s.local_port)) => ROLE_SERVER,
                None => ROLE_CLIENT,
            };
            let owner = match info {
                Some(i) if i.owner == OWNER_KNOWN => Some(Owner {
                    tgid: i.tgid,
                    comm: comm_str(&i.comm),
                }),
                _ => self
                    .owners
                    .get(&s.inode)
                    .cloned()
                    .or_else(|| self.listener_owner(*ns, role, s.local_port)),
            };
            let local = normalize(s.local);
            let remote = normalize(s.remote);
            // Without eBPF knowledge (older than the agent) an active open is the client side.
            let syn_acked = info.map_or(role == ROLE_CLIENT, |i| i.syn_acked == 1);
            let state = u32::from(s.state);
            let counters = data_only(
                counters,
                syn_acked,
                state == FIN_WAIT2,
                matches!(state, CLOSE_WAIT | LAST_ACK | CLOSING),
            );
            observed.push(Observed {
                cookie: s.cookie,
                key: key(
                    *ns,
                    owner.as_ref(),
                    role,
                    local,
                    s.local_port,
                    remote,
                    s.remote_port,
                ),
                comm: owner.map(|o| o.comm).unwrap_or_default(),
                counters,
            });
        }
        let now = now_ms();
        self.links.observe(observed, now);
        self.links
            .prune(now, (record_timeout.as_millis() as u64).max(1000));

        let lost = programs.lost();
        if lost > self.lost_seen {
            self.metrics
                .counter(selfmetrics::EBPF_EVENTS_LOST, &[("probe", "tcp")])
                .add(lost - self.lost_seen);
            self.lost_seen = lost;
        }
        self.links.rows().into_iter().map(to_row).collect()
    }
}

// TCP states (include/net/tcp_states.h).
const FIN_WAIT1: u32 = 4;
const FIN_WAIT2: u32 = 5;
const CLOSE_WAIT: u32 = 8;
const LAST_ACK: u32 = 9;
const CLOSING: u32 = 11;

/// The kernel's byte counters count sequence space: an active open's SYN is in `bytes_acked`,
/// our acknowledged FIN too, and the peer's FIN in `bytes_received`. Users compare tx_bytes
/// with what their process wrote, so those are taken out.
fn data_only(mut c: Counters, syn_acked: bool, fin_acked: bool, fin_received: bool) -> Counters {
    c.bytes_acked = c
        .bytes_acked
        .saturating_sub(u64::from(syn_acked) + u64::from(fin_acked));
    c.bytes_received = c.bytes_received.saturating_sub(u64::from(fin_received));
    c
}

fn key(
    netns: u64,
    owner: Option<&Owner>,
    role: u8,
    local: IpAddr,
    local_port: u16,
    remote: IpAddr,
    remote_port: u16,
) -> LinkKey {
    let tgid = owner.map_or(0, |o| o.tgid);
    if role == ROLE_SERVER {
        LinkKey {
            netns,
            tgid,
            role,
            client_ip: remote,
            server_ip: local,
            server_port: local_port,
        }
    } else {
        LinkKey {
            netns,
            tgid,
            role,
            client_ip: local,
            server_ip: remote,
            server_port: remote_port,
        }
    }
}

fn to_row(r: LinkRow) -> Row {
    let k = &r.key;
    Row {
        table: TABLE.to_owned(),
        values: vec![
            k.tgid.to_string(),
            k.role.to_string(),
            k.client_ip.to_string(),
            k.server_ip.to_string(),
            k.server_port.to_string(),
            k.family().to_string(),
            k.netns.to_string(),
            r.process_name,
            r.link_count.to_string(),
            r.rx_bytes.to_string(),
            r.tx_bytes.to_string(),
            r.packets_in.to_string(),
            r.packets_out.to_string(),
            r.retran_packets.to_string(),
            r.lost_packets.to_string(),
            r.rtt_us.to_string(),
        ],
    }
}

/// Dual-stack sockets show IPv4 peers as `::ffff:a.b.c.d`; the traffic is IPv4, so is the row.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn ip_from_words(family: u8, words: [u32; 4]) -> IpAddr {
    // The words hold network-order bytes as the kernel stored them.
    let mut b = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    if i32::from(family) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

fn comm_str(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_become_ipv4() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(normalize(mapped), IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(normalize(v6), v6);
    }

    #[test]
    fn kernel_words_decode_to_addresses() {
        let w = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(
            ip_from_words(2, [w, 0, 0, 0]),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        let one = u32::from_ne_bytes([0, 0, 0, 1]);
        assert_eq!(
            ip_from_words(10, [0, 0, 0, one]),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
    }

    #[test]
    fn meta_matches_row_width() {
        assert_eq!(
            table_meta().fields.len(),
            to_row(LinkRow {
                key: key(
                    1,
                    None,
                    ROLE_CLIENT,
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    1,
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    2
                ),
                process_name: String::new(),
                link_count: 0,
                rx_bytes: 0,
                tx_bytes: 0,
                packets_in: 0,
                packets_out: 0,
                retran_packets: 0,
                lost_packets: 0,
                rtt_us: 0,
            })
            .values
            .len()
        );
    }
}
