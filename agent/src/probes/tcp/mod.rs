//! The native TCP link probe: eBPF for per-connection events, sock_diag for live counters.
//!
//! Every interval it dumps each network namespace's TCP sockets (tcp_info) and applies the close
//! events the eBPF programs emitted (drained by a thread of their own, `closed.rs`, so that a
//! slow interval loses none), then folds both into `tcp_link` rows (see `links.rs`).
//! Nothing runs per packet or per send/recv call.

mod bpf;
mod closed;
mod collector;
mod diag;
mod entries;
mod key;
mod links;
mod netns;
mod owners;
pub mod policy;
#[cfg(test)]
mod scan_bench;
mod table;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use self::{
    closed::ClosedEvents,
    collector::Collector,
    diag::Counters,
    links::{Key, LinkRow, ROLE_SERVER},
    owners::Owner,
    policy::Policy,
};
use super::{Probe, ProbeContext, ProbeFuture};
use crate::{
    imdb::{FieldMeta, FieldType, Row, TableMeta},
    selfmetrics::{EBPF_EVENTS_LOST, EBPF_MAP_FULL, PROBE_COLLECT_SECONDS, PROBE_ROWS},
};

pub const TABLE: &str = "tcp_link";

/// How often drained close events are applied between intervals (keeps the queue short; the
/// drain thread itself never waits for this).
const APPLY_EVERY: Duration = Duration::from_millis(250);

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
    // Last, so that every earlier field keeps its position.
    (
        "start_time",
        FieldType::Unknown,
        "when this link's counters started from 0, ms since the Unix epoch (Kafka only; a \
         new value means the counters restarted: agent restart, probe rebuild, link forgotten)",
    ),
];

// TODO(p1-store merge): register `policy.max_rows()` as tcp_link's own record cap in the
// table meta once the store has a per-table override, so that `imdb.max_records_num` (default
// 1024) does not refuse tcp_link rows below the probe's series cap.
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
    /// Record client owners with cgroup connect hooks even where sockops could do it.
    pub connect_hooks: bool,
    /// Series cap, client aggregation, filters.
    pub policy: Policy,
}

impl Default for TcpProbe {
    fn default() -> Self {
        Self {
            max_links: 65536,
            connect_hooks: false,
            policy: Policy::default(),
        }
    }
}

const KNOWN_PARAMS: &str = "max_links, connect_hooks, max_series, client_prefix_v4, \
     client_prefix_v6, aggregate_clients, include_ports, exclude_ports, include_cidrs, \
     exclude_cidrs, include_processes, exclude_processes";

impl TcpProbe {
    /// Builds the probe from its `[probes.params]` table; unknown keys and out-of-range values
    /// are refused with the key named.
    pub fn from_params(params: &toml::Table) -> anyhow::Result<Self> {
        let mut probe = Self::default();
        for (k, v) in params {
            match k.as_str() {
                "max_links" => {
                    let n = v
                        .as_integer()
                        .filter(|n| (1024..=4_194_304).contains(n))
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "probes[tcp].params.max_links: expected an integer from 1024 to \
                                 4194304 (live sockets tracked in the kernel), found {v}"
                            )
                        })?;
                    probe.max_links = n as u32;
                }
                "connect_hooks" => {
                    probe.connect_hooks = v.as_bool().ok_or_else(|| {
                        anyhow::anyhow!(
                            "probes[tcp].params.connect_hooks: expected true or false, found {v}"
                        )
                    })?;
                }
                other => {
                    if !probe.policy.set(other, v)? {
                        anyhow::bail!(
                            "probes[tcp].params.{other}: unknown parameter (known: {KNOWN_PARAMS})"
                        );
                    }
                }
            }
        }
        Ok(probe)
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
        let (max_links, connect_hooks) = (self.max_links, self.connect_hooks);
        let policy = self.policy.clone();
        Box::pin(async move { run(ctx, max_links, connect_hooks, policy).await })
    }
}

async fn run(
    mut ctx: ProbeContext,
    max_links: u32,
    connect_hooks: bool,
    policy: Policy,
) -> anyhow::Result<()> {
    let mut programs = bpf::load(max_links, connect_hooks)?;
    let lost = ctx.metrics.counter(EBPF_EVENTS_LOST, &[("probe", "tcp")]);
    let closed = ClosedEvents::start(programs.take_closed()?, lost)?;
    tracing::info!(cgroup = %programs.cgroup.display(), "tcp probe attached");
    let mut state = Collector::new(&ctx.metrics, policy);
    let collect_seconds = ctx
        .metrics
        .gauge(PROBE_COLLECT_SECONDS, &[("probe", "tcp")]);
    ctx.state.running();
    let mut tick = tokio::time::interval(ctx.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut apply_tick = tokio::time::interval(APPLY_EVERY);
    apply_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let rows_sent = ctx.metrics.counter(PROBE_ROWS, &[("probe", "tcp")]);
    let links_full = ctx
        .metrics
        .counter(EBPF_MAP_FULL, &[("probe", "tcp"), ("map", "links")]);
    let mut links_full_seen = 0;
    // A link with no open connection is kept while its record would live in the store, and
    // at least two intervals so that a short connection is always reported once.
    let idle = (!ctx.record_timeout.is_zero()).then(|| ctx.record_timeout.max(2 * ctx.interval));
    loop {
        tokio::select! {
            changed = ctx.stop.changed() => {
                if changed.is_err() || *ctx.stop.borrow() {
                    break;
                }
            }
            _ = apply_tick.tick() => state.drain(&closed),
            _ = tick.tick() => {
                // sock_diag dumps and /proc reads block: keep them off the async workers' queue.
                let started = std::time::Instant::now();
                let rows = tokio::task::block_in_place(|| {
                    // The delta (changed rows, forgotten links) is what the store will take;
                    // until it does, every row is sent every interval.
                    let _delta = state.collect(&mut programs, &closed, idle);
                    state.rows()
                });
                collect_seconds.set(started.elapsed().as_secs_f64());
                let full = programs.links_full();
                links_full.add(full.saturating_sub(links_full_seen));
                links_full_seen = links_full_seen.max(full);
                rows_sent.add(rows.len() as u64);
                if ctx.rows.send(rows).await.is_err() {
                    break;
                }
            }
        }
    }
    tracing::info!("tcp probe detaching");
    drop(closed);
    drop(programs);
    Ok(())
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
pub(crate) fn data_only(
    mut c: Counters,
    syn_acked: bool,
    fin_acked: bool,
    fin_received: bool,
) -> Counters {
    c.bytes_acked = c
        .bytes_acked
        .saturating_sub(u64::from(syn_acked) + u64::from(fin_acked));
    c.bytes_received = c.bytes_received.saturating_sub(u64::from(fin_received));
    c
}

pub(crate) fn key(
    netns: u64,
    owner: Option<&Owner>,
    role: u8,
    local: IpAddr,
    local_port: u16,
    remote: IpAddr,
    remote_port: u16,
) -> Key {
    let tgid = owner.map_or(0, |o| o.tgid);
    if role == ROLE_SERVER {
        Key::new(netns, tgid, role, remote, local, local_port)
    } else {
        Key::new(netns, tgid, role, local, remote, remote_port)
    }
}

pub(crate) fn to_row(r: LinkRow) -> Row {
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
            r.start_ms.to_string(),
        ],
    }
}

/// Dual-stack sockets show IPv4 peers as `::ffff:a.b.c.d`; the traffic is IPv4, so is the row.
pub(crate) fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

pub(crate) fn ip_from_words(family: u8, words: [u32; 4]) -> IpAddr {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::tcp::links::ROLE_CLIENT;

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
                )
                .link_key(),
                process_name: String::new(),
                link_count: 0,
                rx_bytes: 0,
                tx_bytes: 0,
                packets_in: 0,
                packets_out: 0,
                retran_packets: 0,
                lost_packets: 0,
                rtt_us: 0,
                start_ms: 0,
            })
            .values
            .len()
        );
    }
}
