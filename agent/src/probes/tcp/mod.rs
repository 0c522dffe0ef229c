//! The native TCP link probe: eBPF for per-connection events, an eBPF socket iterator (or
//! sock_diag where it cannot load) for live counters.
//!
//! Every interval it reads each network namespace's TCP sockets (`iter.rs`, else `diag.rs`)
//! and applies the close
//! events the eBPF programs emitted (drained by a thread of their own, `closed.rs`, so that a
//! slow interval loses none), then folds both into `tcp_link` rows (see `links.rs`).
//! Nothing runs per packet or per send/recv call.

mod bpf;
#[allow(dead_code, reason = "its users, the tracing programs, land next")]
mod btf;
mod closed;
mod collector;
mod diag;
mod entries;
mod iter;
mod key;
mod links;
mod netns;
mod owners;
mod params;
mod pieces;
pub mod policy;
#[cfg(test)]
mod scan_bench;
mod table;

use std::{net::IpAddr, time::Duration};

use self::{
    closed::ClosedEvents,
    collector::Collector,
    diag::Counters,
    links::{Key, LinkKey, LinkRow, ROLE_SERVER},
    owners::Owner,
    pieces::{Rows, send_delta},
    policy::Policy,
};
use super::{ParamError, Probe, ProbeContext, ProbeFuture};
use crate::{
    imdb::{Batch, FieldMeta, FieldType, Row, TableMeta, Value},
    selfmetrics::{
        EBPF_EVENTS_LOST, EBPF_MAP_FULL, PROBE_COLLECT_SECONDS, PROBE_ROWS, TCP_SOCKET_SOURCE,
    },
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

/// The table's definition; its record cap in the store is the probe's own bound on rows
/// (`max_series` plus the aggregate rows, see `policy.rs`), not `imdb.max_records_num`, which
/// is sized for small tables.
pub fn table_meta(policy: &Policy) -> TableMeta {
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
        max_records: Some(policy.max_rows() as usize),
    }
}

pub struct TcpProbe {
    /// Capacity of the eBPF map of live sockets.
    pub max_links: u32,
    /// Record client owners with cgroup connect hooks even where sockops could do it.
    pub connect_hooks: bool,
    /// Read live sockets with the eBPF socket iterator where it loads (else sock_diag).
    pub socket_iterator: bool,
    /// Series cap, client aggregation, filters.
    pub policy: Policy,
}

impl Default for TcpProbe {
    fn default() -> Self {
        Self {
            max_links: 65536,
            connect_hooks: false,
            socket_iterator: true,
            policy: Policy::default(),
        }
    }
}

impl TcpProbe {
    /// Builds the probe from its `[probes.params]` table; unknown keys and out-of-range values
    /// are refused with the key named (`params.rs`).
    pub fn from_params(table: &toml::Table) -> Result<Self, ParamError> {
        params::probe(table)
    }
}

impl Probe for TcpProbe {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn tables(&self) -> Vec<TableMeta> {
        vec![table_meta(&self.policy)]
    }

    fn run(&self, ctx: ProbeContext) -> ProbeFuture {
        let (max_links, connect_hooks, socket_iterator) =
            (self.max_links, self.connect_hooks, self.socket_iterator);
        let policy = self.policy.clone();
        Box::pin(async move { run(ctx, max_links, connect_hooks, socket_iterator, policy).await })
    }
}

async fn run(
    mut ctx: ProbeContext,
    max_links: u32,
    connect_hooks: bool,
    socket_iterator: bool,
    policy: Policy,
) -> anyhow::Result<()> {
    let mut programs = bpf::load(max_links, connect_hooks)?;
    let lost = ctx.metrics.counter(EBPF_EVENTS_LOST, &[("probe", "tcp")]);
    let closed = ClosedEvents::start(programs.take_closed()?, lost)?;
    tracing::info!(cgroup = %programs.cgroup.display(), "tcp probe attached");
    let mut state = Collector::new(&ctx.metrics, policy);
    let source = if socket_iterator {
        match iter::TcpIter::load(&mut programs) {
            Ok(it) => {
                state.use_iterator(it);
                tracing::info!("tcp probe reads sockets with the eBPF socket iterator");
                "iterator"
            }
            Err(e) => {
                tracing::info!(
                    "tcp probe reads sockets with sock_diag: the eBPF socket iterator is \
                     unavailable ({e:#})"
                );
                "sock_diag"
            }
        }
    } else {
        tracing::info!("tcp probe reads sockets with sock_diag (socket_iterator = false)");
        "sock_diag"
    };
    for s in ["iterator", "sock_diag"] {
        ctx.metrics
            .gauge(TCP_SOCKET_SOURCE, &[("source", s)])
            .set(f64::from(u8::from(s == source)));
    }
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
    // The store ages records by `record_timeout`; refreshed every interval, a link's record
    // outlives it only while the interval is well below the timeout. Otherwise every batch
    // carries every link (and replaces the table), as a plain table would be filled.
    let always_full =
        !ctx.record_timeout.is_zero() && ctx.interval.saturating_mul(2) > ctx.record_timeout;
    let mut first = true;
    loop {
        tokio::select! {
            changed = ctx.stop.changed() => {
                if changed.is_err() || *ctx.stop.borrow() {
                    break;
                }
            }
            _ = apply_tick.tick() => state.drain(&closed),
            _ = tick.tick() => {
                // Only what changed goes to the store, which counts the other links as
                // refreshed. The first delta of this run holds every link and replaces what
                // an earlier run of the probe left.
                let full = always_full || first;
                // sock_diag dumps and /proc reads block: keep them off the async workers' queue.
                let started = std::time::Instant::now();
                let d = tokio::task::block_in_place(|| {
                    state.collect(&mut programs, &closed, idle, !full)
                });
                first = false;
                collect_seconds.set(started.elapsed().as_secs_f64());
                let map_full = programs.links_full();
                links_full.add(map_full.saturating_sub(links_full_seen));
                links_full_seen = links_full_seen.max(map_full);
                let rows = if full {
                    Rows::All(state.link_ids())
                } else {
                    Rows::Changed(d.changed)
                };
                if send_delta(&ctx.rows, &state, rows, &d.removed, full, &rows_sent)
                    .await
                    .is_err()
                {
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

// TCP states, shared with the eBPF programs.
use gopher_common::{
    TCP_CLOSE_WAIT as CLOSE_WAIT, TCP_CLOSING as CLOSING, TCP_FIN_WAIT1 as FIN_WAIT1,
    TCP_FIN_WAIT2 as FIN_WAIT2, TCP_LAST_ACK as LAST_ACK,
};

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

/// The key fields of a link's record, in meta order (also what a delta's `removed` holds).
pub(crate) fn key_values(k: &LinkKey) -> Vec<Value> {
    let mut v = Vec::with_capacity(FIELDS.len());
    v.extend([
        Value::from(k.tgid),
        Value::from(k.role),
        Value::from(k.client_ip.to_string()),
        Value::from(k.server_ip.to_string()),
        Value::from(k.server_port),
        Value::from(k.family()),
        Value::from(k.netns),
    ]);
    v
}

/// A link's row: numbers stay numbers (the store packs them; sinks write them).
pub(crate) fn to_row(r: LinkRow) -> Row {
    let mut values = key_values(&r.key);
    values.extend([
        Value::from(r.process_name),
        Value::from(r.link_count),
        Value::from(r.rx_bytes),
        Value::from(r.tx_bytes),
        Value::from(r.packets_in),
        Value::from(r.packets_out),
        Value::from(r.retran_packets),
        Value::from(r.lost_packets),
        Value::from(r.rtt_us),
        Value::from(r.start_ms),
    ]);
    Row {
        table: TABLE.to_owned(),
        values,
    }
}

/// One interval's changes as a delta of the table the probe owns: `changed` rows are written,
/// `removed` links dropped, and with `refresh_rest` every other record counts as refreshed
/// (unchanged links need not be sent; Kafka still gets every live link once per pass).
pub(crate) fn delta(
    changed: Vec<Row>,
    removed: &[LinkKey],
    refresh_rest: bool,
    replace: bool,
    more: bool,
) -> Batch {
    Batch::TableDelta {
        table: TABLE.to_owned(),
        upserts: changed.into_iter().map(|r| r.values).collect(),
        removed: removed.iter().map(key_values).collect(),
        refresh_rest,
        replace,
        more,
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
    ip_from_bytes(family, b)
}

/// The address of `family` (AF_INET or AF_INET6) in `b`, 16 bytes in network order as the
/// kernel keeps them (IPv4 in the first four).
pub(crate) fn ip_from_bytes(family: u8, b: [u8; 16]) -> IpAddr {
    key::from_octets(i32::from(family) != libc::AF_INET, b)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

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

    fn link(port: u16, rx: u64) -> LinkRow {
        LinkRow {
            key: key(
                1,
                None,
                ROLE_CLIENT,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                1,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                port,
            )
            .link_key(),
            process_name: "curl".into(),
            link_count: 1,
            rx_bytes: rx,
            tx_bytes: 0,
            packets_in: 0,
            packets_out: 0,
            retran_packets: 0,
            lost_packets: 0,
            rtt_us: 0,
            start_ms: 0,
        }
    }

    #[test]
    fn meta_matches_row_width() {
        let meta = table_meta(&Policy::default());
        assert_eq!(meta.fields.len(), to_row(link(2, 0)).values.len());
    }

    #[test]
    fn deltas_write_remove_and_refresh_links_in_the_store() {
        use crate::imdb::{Limits, Store};
        let mut store = Store::new(Limits::default());
        let policy = Policy::default();
        store.register(table_meta(&policy)).unwrap();
        let batch = delta(
            vec![to_row(link(80, 5)), to_row(link(443, 7))],
            &[],
            false,
            true,
            false,
        );
        assert_eq!(store.apply(batch, 1), 0);
        // 443 is gone, 80 unchanged (not sent): refreshed.
        let gone = link(443, 7).key;
        assert_eq!(store.apply(delta(vec![], &[gone], true, false, false), 2), 0);
        let snap = store.snapshot();
        let t = &snap.tables[0];
        assert_eq!(t.records.len(), 1);
        assert_eq!(t.records[0].updated_ms, 2);
        let row = &t.texts()[0];
        assert_eq!(
            row[..10],
            [
                "0",
                "1",
                "127.0.0.1",
                "127.0.0.1",
                "80",
                "2",
                "1",
                "curl",
                "1",
                "5"
            ]
        );
        assert_eq!(
            store.table(TABLE).unwrap().max_records,
            Some(policy.max_rows() as usize)
        );
    }
}
