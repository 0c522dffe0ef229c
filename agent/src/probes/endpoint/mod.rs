//! The `endpoint` probe: listener health, one `endpoint_tcp` row per listening socket's owner
//! and address (gala-gopher's `endpoint` entity, its `listen` table, with its field names where
//! it has one).
//!
//! Every interval it dumps the LISTEN sockets of every network namespace with sock_diag
//! (`listen.rs`): how full each accept queue is, its limit, and the drops the kernel counted on
//! the listener. The saturation gauge is the point: an accept queue near its limit means the
//! process accepts too slowly, before any connection is refused. Owners come from
//! `/proc/<pid>/fd` (walked only for listeners not seen before, with the tcp probe's back-off for
//! sockets nobody holds), namespaces from the tcp probe's discovery: one netlink dump per namespace and interval, in
//! proportion to the number of listeners. What no socket read shows (SYN-ACK retransmissions,
//! passive opens, handshakes dropped at a full accept queue) is counted per listener by eBPF
//! programs on per-connection events (`events.rs`); nothing runs per packet of an established
//! connection. Where they cannot load, the rest goes on (those counters stay 0, the failure is
//! counted in `gopher_probe_errors_total`).
//! gala-gopher's `listendrop` and `syn_overflow`, which no hook of this kernel sees, are
//! derived from `sk_drops` and the counted overflows (`drops.rs` says exactly what they hold).
//! Failed handshakes (`passive_open_failed`) are those the eBPF programs saw start (a request
//! socket made) that sock_diag no longer shows and that made no child socket.
//!
//! Sockets of one owner on the same address and port (`SO_REUSEPORT` groups) are one row: their
//! queues, limits and drops add up. A counter of a row is the sum over its live sockets, so it
//! restarts (as a Prometheus counter may) when a listener closes and another opens.

mod connect;
mod drops;
mod events;
mod listen;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use gopher_common::{ListenerCounts, ListenerKey};
use serde::{Deserialize, Deserializer};

use super::{
    ParamError, Probe, ProbeContext, ProbeFuture,
    params::{self, int_in},
    tcp::{
        netns::Namespaces,
        owners::{Owner, Resolver},
    },
};
use crate::{
    imdb::{Batch, FieldMeta, FieldType, TableMeta, Value},
    telemetry::{Counter, EBPF_MAP_FULL, PROBE_ERRORS, PROBE_ROWS},
};

pub const TABLE: &str = "endpoint_tcp";
const AF_INET6: u16 = 10;
pub use connect::TABLE as CONNECT_TABLE;

/// Field order is the row's positional order.
const FIELDS: &[(&str, FieldType, &str)] = &[
    (
        "tgid",
        FieldType::Key,
        "process (thread group) id holding the listening socket (0: none found)",
    ),
    ("s_addr", FieldType::Key, "address the socket listens on"),
    ("s_port", FieldType::Key, "port the socket listens on"),
    (
        "netns",
        FieldType::Key,
        "network namespace inode of the socket",
    ),
    ("comm", FieldType::Label, "command name of the process"),
    (
        "accept_queue",
        FieldType::Gauge,
        "connections completed and waiting for accept() (sock_diag idiag_rqueue)",
    ),
    (
        "accept_queue_limit",
        FieldType::Gauge,
        "most connections the accept queue holds: the listen() backlog, capped by net.core.somaxconn (idiag_wqueue)",
    ),
    (
        "sk_drops",
        FieldType::Counter,
        "segments the listener dropped (its sk_drops): SYNs and handshake ACKs refused at a full \
         accept or SYN queue or without memory (the listener's share of TcpExtListenDrops), and \
         segments of handshakes in progress it discarded (a retransmitted SYN)",
    ),
    (
        "retran_synacks",
        FieldType::Counter,
        "SYN-ACKs the listener retransmitted (a handshake's final ACK late or lost)",
    ),
    (
        "passive_open",
        FieldType::Counter,
        "connections the listener opened: handshakes completed into a new socket (its share of \
         TcpPassiveOpens)",
    ),
    (
        "accept_overflow",
        FieldType::Counter,
        "handshakes dropped when they completed because the accept queue was full: the final \
         ACK refused (drop reason TCP_LISTEN_OVERFLOW; the peer retries it at each SYN-ACK \
         retransmission)",
    ),
    (
        "listendrop",
        FieldType::Counter,
        "the listener's listen drops (tcp_listendrop: its share of TcpExtListenDrops): SYNs \
         refused at a full SYN or accept queue or without memory, and accept_overflow; derived \
         as sk_drops - accept_overflow, so it also holds what else sk_drops counts (a \
         retransmitted SYN of a handshake in progress, a RST to the listener)",
    ),
    (
        "syn_overflow",
        FieldType::Counter,
        "SYNs the listener refused: at a full SYN queue without SYN cookies, at a full accept \
         queue (also TcpExtListenOverflows), or without memory; derived as listendrop - \
         accept_overflow (SYNs answered with a SYN cookie are not refused and not counted)",
    ),
    (
        "passive_open_failed",
        FieldType::Counter,
        "handshakes that started on the listener (a SYN queued: a request socket made) and \
         ended without a connection: SYN-ACK retries exhausted (also after final ACKs refused \
         at a full accept queue), a RST or ICMP error to the SYN-ACK",
    ),
];

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct EndpointParams {
    #[serde(deserialize_with = "max_listeners")]
    max_listeners: Option<u32>,
}

fn max_listeners<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let what = "an integer from 1 to 1000000 (endpoint_tcp rows)";
    int_in(&toml::Value::deserialize(d)?, 1..=1_000_000, what).map(|n| Some(n as u32))
}

pub struct EndpointProbe {
    /// Rows kept at most; the store refuses more, counted in
    /// `gopher_rows_dropped_total{reason="record_limit"}`.
    pub max_listeners: u32,
}

impl EndpointProbe {
    /// Builds the probe from its `[probes.params]`; an unknown or out-of-range key is refused
    /// by name.
    pub fn from_params(table: &toml::Table) -> Result<Self, ParamError> {
        let p: EndpointParams = params::parse("endpoint", table)?;
        Ok(Self {
            max_listeners: p.max_listeners.unwrap_or(4096),
        })
    }
}

impl Probe for EndpointProbe {
    fn name(&self) -> &'static str {
        "endpoint"
    }

    fn tables(&self) -> Vec<TableMeta> {
        let max = Some(self.max_listeners as usize);
        vec![
            meta(
                TABLE,
                "TCP listening sockets: accept queue fill and limit, drops, SYN-ACK \
                 retransmissions, passive opens and failed ones, accept-queue overflows, \
                 listen drops, SYNs refused",
                FIELDS,
                max,
            ),
            meta(
                CONNECT_TABLE,
                "TCP clients per process and destination: handshakes started, refused, timed \
                 out; connections reset by either side",
                connect::FIELDS,
                Some(gopher_common::HEALTH_CONNECTS as usize),
            ),
        ]
    }

    fn run(&self, ctx: ProbeContext) -> ProbeFuture {
        Box::pin(run(ctx))
    }
}

fn meta(
    name: &str,
    description: &str,
    fields: &[(&str, FieldType, &str)],
    max_records: Option<usize>,
) -> TableMeta {
    TableMeta {
        name: name.to_owned(),
        description: description.to_owned(),
        fields: fields
            .iter()
            .map(|(name, ty, help)| FieldMeta {
                name: (*name).to_owned(),
                ty: *ty,
                description: (*help).to_owned(),
            })
            .collect(),
        max_records,
    }
}

/// The whole table every interval: what is gone from the kernel is gone from it.
fn replace(table: &str, upserts: Vec<Vec<Value>>) -> Batch {
    Batch::TableDelta {
        table: table.to_owned(),
        upserts,
        removed: Vec::new(),
        refresh_rest: false,
        replace: true,
        more: false,
    }
}

/// Identity of a row: owner, address, port, namespace.
type RowKey = (u32, IpAddr, u16, u64);

#[derive(Default)]
struct Sums {
    comm: String,
    events: ListenerCounts,
    /// `false` where the kernel cannot count accept-queue overflows (no drop reason for them).
    overflows: bool,
    accept_queue: u64,
    accept_queue_limit: u64,
    drops: Option<u64>,
    /// `listendrop` and `syn_overflow`, where `drops` and the overflows are both counted.
    derived: Option<drops::Derived>,
    /// Failed handshakes, where they are followed.
    failed: Option<u64>,
}

/// What survives from one interval to the next.
#[derive(Default)]
struct State {
    namespaces: Namespaces,
    owners: HashMap<u64, Owner>,
    resolver: Resolver,
    buf: Vec<u8>,
    /// The eBPF counters, where they loaded.
    events: Option<events::Events>,
    /// Keeps the derived counters from going back (`drops.rs`).
    ratchet: drops::Ratchet<RowKey>,
    /// Handshakes that failed, per live listener, since the probe started (or the listener
    /// appeared).
    failed: HashMap<ListenerKey, u64>,
}

impl State {
    /// One interval: every listener of every namespace, folded into rows.
    fn collect(&mut self, errors: &Counter) -> BTreeMap<RowKey, Sums> {
        for f in self.namespaces.refresh() {
            errors.inc();
            tracing::warn!(
                netns = f.inode,
                path = %f.path.display(),
                reason = f.reason,
                "endpoint probe cannot read a network namespace: {}",
                f.error
            );
        }
        let mut found = Vec::new();
        for ns in self.namespaces.by_inode.values() {
            let r = listen::dump(&ns.diag, &mut self.buf, |l| found.push((ns.inode, l)));
            if let Err(e) = r {
                errors.inc();
                tracing::warn!(
                    netns = ns.inode,
                    "endpoint probe: sock_diag dump failed: {e}"
                );
            }
        }
        let unknown = found
            .iter()
            .map(|(_, l)| l.inode)
            .filter(|i| *i != 0 && !self.owners.contains_key(i));
        let new = self
            .resolver
            .resolve(unknown.collect::<Vec<_>>().into_iter());
        self.owners.extend(new);
        let live: HashSet<u64> = found.iter().map(|(_, l)| l.inode).collect();
        self.owners.retain(|i, _| live.contains(i));
        self.resolver.retain(|i| live.contains(&i));
        let keys: HashMap<u64, ListenerKey> = found
            .iter()
            .map(|(netns, l)| {
                let cookie = self.namespaces.by_inode.get(netns).map_or(0, |n| n.cookie);
                (l.inode, listener_key(cookie, l))
            })
            .collect();
        let overflows = self.events.as_ref().is_some_and(|e| e.overflows);
        let events = self.events.as_mut().map(|e| {
            let live: std::collections::HashSet<ListenerKey> = keys.values().copied().collect();
            let counts = e.listeners(|k| owning_listener(&live, k).is_some());
            let mut by_listener: HashMap<ListenerKey, ListenerCounts> = HashMap::new();
            for (k, c) in counts {
                if let Some(l) = owning_listener(&live, &k) {
                    let sum = by_listener.entry(l).or_default();
                    *sum = add(*sum, &c);
                }
            }
            by_listener
        });
        let reqs = self.count_failed(&keys, errors);
        let mut rows: BTreeMap<RowKey, Sums> = BTreeMap::new();
        for (netns, l) in found {
            let owner = self.owners.get(&l.inode);
            let key = (owner.map_or(0, |o| o.tgid), l.local, l.port, netns);
            let s = rows.entry(key).or_default();
            if let Some(o) = owner {
                s.comm.clone_from(&o.comm);
            }
            if let (Some(r), Some(k)) = (&events, keys.get(&l.inode)) {
                s.events = add(s.events, &r.get(k).copied().unwrap_or_default());
            }
            if reqs {
                let n = keys.get(&l.inode).and_then(|k| self.failed.get(k));
                s.failed = Some(s.failed.unwrap_or(0) + n.copied().unwrap_or(0));
            }
            s.overflows = overflows;
            s.accept_queue += u64::from(l.accept_queue);
            s.accept_queue_limit += u64::from(l.accept_queue_limit);
            if let Some(d) = l.drops {
                s.drops = Some(s.drops.unwrap_or(0) + u64::from(d));
            }
        }
        for (key, s) in &mut rows {
            if let (Some(d), true) = (s.drops, s.overflows) {
                s.derived = Some(self.ratchet.apply(*key, d, s.events.accept_overflow));
            }
        }
        self.ratchet.retain(|k| rows.contains_key(k));
        rows
    }

    /// Counts the handshakes that failed since the last interval, per live listener (`keys`:
    /// the live listeners by inode); `false` where handshakes are not followed.
    fn count_failed(&mut self, keys: &HashMap<u64, ListenerKey>, errors: &Counter) -> bool {
        if let Some(e) = self.events.as_mut().filter(|e| e.reqs) {
            let (namespaces, buf) = (&self.namespaces, &mut self.buf);
            // After `REQS` is read: request sockets alive now.
            let failed = e.failed_handshakes(|| {
                let mut alive = HashSet::new();
                for ns in namespaces.by_inode.values() {
                    if let Err(e) = listen::pending(&ns.diag, ns.cookie, buf, &mut alive) {
                        errors.inc();
                        tracing::warn!(
                            netns = ns.inode,
                            "endpoint probe: sock_diag dump of handshakes failed: {e}"
                        );
                    }
                }
                alive
            });
            let live: HashSet<ListenerKey> = keys.values().copied().collect();
            for k in failed {
                if let Some(l) = owning_listener(&live, &k) {
                    *self.failed.entry(l).or_default() += 1;
                }
            }
            self.failed.retain(|k, _| live.contains(k));
        }
        self.events.as_ref().is_some_and(|e| e.reqs)
    }
}

fn listener_key(netns_cookie: u64, l: &listen::Listener) -> ListenerKey {
    ListenerKey {
        netns_cookie,
        family: u16::from(l.family),
        port: l.port,
        _pad: 0,
        addr: l.addr_words,
    }
}

fn to_values(((tgid, addr, port, netns), s): (RowKey, Sums)) -> Vec<Value> {
    vec![
        Value::from(tgid),
        Value::from(addr.to_string()),
        Value::from(port),
        Value::from(netns),
        Value::from(s.comm),
        Value::from(s.accept_queue),
        Value::from(s.accept_queue_limit),
        s.drops.map_or(Value::Empty, Value::from),
        Value::from(s.events.retran_synacks),
        Value::from(s.events.passive_open),
        if s.overflows {
            Value::from(s.events.accept_overflow)
        } else {
            Value::Empty
        },
        s.derived
            .map_or(Value::Empty, |d| Value::from(d.listendrop)),
        s.derived
            .map_or(Value::Empty, |d| Value::from(d.syn_overflow)),
        s.failed.map_or(Value::Empty, Value::from),
    ]
}

fn add(a: ListenerCounts, b: &ListenerCounts) -> ListenerCounts {
    ListenerCounts {
        retran_synacks: a.retran_synacks + b.retran_synacks,
        passive_open: a.passive_open + b.passive_open,
        accept_overflow: a.accept_overflow + b.accept_overflow,
    }
}

/// The live listener an event's key belongs to: the listener bound to exactly that address, or
/// else the one bound to the wildcard address of the port (what the kernel's own lookup picks):
/// an event read from a connection's socket may carry the connection's local address.
fn owning_listener(live: &HashSet<ListenerKey>, k: &ListenerKey) -> Option<ListenerKey> {
    if live.contains(k) {
        return Some(*k);
    }
    let wildcard = ListenerKey { addr: [0; 4], ..*k };
    // An IPv4 connection of a dual-stack IPv6 listener.
    let dual = ListenerKey {
        family: AF_INET6,
        ..wildcard
    };
    [wildcard, dual].into_iter().find(|w| live.contains(w))
}

async fn run(mut ctx: ProbeContext) -> anyhow::Result<()> {
    let errors = ctx.metrics.counter(PROBE_ERRORS, &[("probe", "endpoint")]);
    let rows_sent = ctx.metrics.counter(PROBE_ROWS, &[("probe", "endpoint")]);
    let full = |map| {
        ctx.metrics
            .counter(EBPF_MAP_FULL, &[("probe", "endpoint"), ("map", map)])
    };
    let (listeners_full, connects_full, reqs_full) =
        (full("listeners"), full("connects"), full("reqs"));
    let mut state = State::default();
    match events::Events::load() {
        Ok(e) => state.events = Some(e),
        // The queue gauges and drops need no eBPF: the probe goes on without the counters.
        Err(e) => {
            errors.inc();
            tracing::warn!(
                "endpoint probe: no retran_synacks, passive_open, accept_overflow and no endpoint_tcp_connect rows, its eBPF programs did not load: {e:#}"
            );
        }
    }
    if state.events.as_ref().is_some_and(|e| !e.overflows) {
        errors.inc();
        tracing::warn!(
            "endpoint probe: no accept_overflow: this kernel has no TCP_LISTEN_OVERFLOW drop \
             reason on skb:kfree_skb (Linux 6.15+), or its program did not attach"
        );
    }
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
            _ = tick.tick() => {
                // Netlink dumps and /proc walks block: off the async workers' queue.
                let (rows, connects) = tokio::task::block_in_place(|| {
                    let rows = state.collect(&errors);
                    let connects = state
                        .events
                        .as_mut()
                        .map(|e| connect::rows(e, &state.namespaces))
                        .unwrap_or_default();
                    (rows, connects)
                });
                if let Some(e) = state.events.as_mut() {
                    let [l, c, r] = e.newly_full();
                    listeners_full.add(l);
                    connects_full.add(c);
                    reqs_full.add(r);
                }
                let upserts: Vec<Vec<Value>> = rows.into_iter().map(to_values).collect();
                rows_sent.add((upserts.len() + connects.len()) as u64);
                let batches = [replace(TABLE, upserts), replace(CONNECT_TABLE, connects)];
                let mut gone = false;
                for batch in batches {
                    tokio::select! {
                        sent = ctx.rows.send(batch) => if sent.is_err() { gone = true },
                        _ = ctx.stop.wait_for(|stop| *stop) => gone = true,
                    }
                    if gone {
                        break;
                    }
                }
                if gone {
                    break;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_typed_and_refused_by_name() {
        let p = EndpointProbe::from_params(&toml::from_str("max_listeners = 10").unwrap()).unwrap();
        assert_eq!(p.tables()[0].max_records, Some(10));
        let e = EndpointProbe::from_params(&toml::from_str("max_listeners = 0").unwrap())
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "probes[endpoint].params.max_listeners: expected an integer from 1 to 1000000 \
             (endpoint_tcp rows), found 0"
        );
        let e = EndpointProbe::from_params(&toml::from_str("bogus = 1").unwrap())
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "probes[endpoint].params.bogus: unknown parameter (known: max_listeners)"
        );
    }

    #[test]
    fn an_event_goes_to_its_exact_listener_else_the_wildcard_one() {
        let key = |family, addr: [u32; 4], port| ListenerKey {
            netns_cookie: 7,
            family,
            port,
            _pad: 0,
            addr,
        };
        let lo = [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0];
        let exact = key(2, lo, 80);
        let any4 = key(2, [0; 4], 80);
        let any6 = key(AF_INET6, [0; 4], 443);
        let live: HashSet<ListenerKey> = [exact, any4, any6].into_iter().collect();
        assert_eq!(owning_listener(&live, &exact), Some(exact));
        let other = key(2, [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0], 80);
        assert_eq!(owning_listener(&live, &other), Some(any4));
        assert_eq!(owning_listener(&live, &key(2, lo, 443)), Some(any6));
        assert_eq!(owning_listener(&live, &key(2, lo, 8080)), None);
        let elsewhere = ListenerKey {
            netns_cookie: 8,
            ..exact
        };
        assert_eq!(owning_listener(&live, &elsewhere), None);
    }

    #[test]
    fn rows_match_the_table_width() {
        let p = EndpointProbe::from_params(&toml::Table::new()).unwrap();
        let key = (1, IpAddr::from([127, 0, 0, 1]), 80, 4_026_531_840);
        assert_eq!(
            to_values((key, Sums::default())).len(),
            p.tables()[0].fields.len()
        );
    }
}
