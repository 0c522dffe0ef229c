//! The `tcp_link` table: its fields, its definition, and how a link becomes a row or a delta of
//! the table. Apart from the probe's run loop (`mod.rs`) so that the parts that build rows
//! (`pieces.rs`, the run loop) import it and it imports none of them.

use std::net::IpAddr;

use super::{
    key::SRTT_BOUNDS_US,
    links::{Key, LinkKey, LinkRow, ROLE_SERVER},
    owners::Owner,
    policy::Policy,
};
use crate::imdb::{Batch, FieldMeta, FieldType, Histogram, Row, TableMeta, Value};

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
    // Last, so that every earlier field keeps its position.
    (
        "start_time",
        FieldType::Unknown,
        "when this link's counters started from 0, ms since the Unix epoch (Kafka only; a \
         new value means the counters restarted: agent restart, probe rebuild, link forgotten)",
    ),
    (
        "send_rsts",
        FieldType::Counter,
        "connections this end reset (an abort: SO_LINGER 0, close with unread data)",
    ),
    (
        "receive_rsts",
        FieldType::Counter,
        "connections the peer reset",
    ),
    (
        "srtt",
        FieldType::Histogram,
        "smoothed round-trip times of the open connections, microseconds (one observation per \
         connection, as last read; a snapshot, not cumulative)",
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
        Value::from(r.send_rsts),
        Value::from(r.receive_rsts),
        r.srtt_hist.map_or(Value::Empty, |h| {
            Value::from(srtt_histogram(&h, r.srtt_sum_us))
        }),
    ]);
    Row {
        table: TABLE.to_owned(),
        values,
    }
}

/// The `srtt` value of a link with live sockets: cumulative counts per bound of
/// [`SRTT_BOUNDS_US`], the `+Inf` count (its live sockets) and their sum (µs).
fn srtt_histogram(per_bucket: &[u32; SRTT_BOUNDS_US.len() + 1], sum_us: u64) -> Histogram {
    let mut total = 0_u64;
    let buckets = SRTT_BOUNDS_US
        .iter()
        .zip(per_bucket)
        .map(|(&le, &n)| {
            total += u64::from(n);
            (f64::from(le), total)
        })
        .collect();
    Histogram {
        buckets,
        count: total + u64::from(per_bucket[SRTT_BOUNDS_US.len()]),
        #[allow(clippy::cast_precision_loss, reason = "µs sums stay far below 2^53")]
        sum: sum_us as f64,
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
