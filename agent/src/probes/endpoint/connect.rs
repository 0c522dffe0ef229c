//! The `endpoint_tcp_connect` table: per client process and destination (address, port,
//! namespace), the handshakes started and how they failed (refused, timed out, other), and the
//! established connections reset by this end or by the peer. gala-gopher's `connect` table
//! names (`active_open`, `active_open_failed`) and its `tcp_metric` ones (`send_rsts`,
//! `receive_rsts`), counted per connection from the eBPF events (`events.rs`), never per packet.
//!
//! A row lives as long as its process: the counters of a process that exited are dropped from
//! the kernel map and the table at the next interval.

use std::path::Path;

use gopher_common::{ConnectCounts, ConnectKey};

use super::events::Events;
use crate::{
    imdb::{FieldType, Value},
    probes::tcp::{ip_from_words, netns::Namespaces, owners},
};

pub const TABLE: &str = "endpoint_tcp_connect";

/// Field order is the row's positional order.
pub const FIELDS: &[(&str, FieldType, &str)] = &[
    (
        "tgid",
        FieldType::Key,
        "process (thread group) id that called connect()",
    ),
    (
        "d_addr",
        FieldType::Key,
        "destination address the process connected to",
    ),
    ("d_port", FieldType::Key, "destination port"),
    (
        "netns",
        FieldType::Key,
        "network namespace inode of the socket (0: unknown)",
    ),
    ("comm", FieldType::Label, "command name of the process"),
    (
        "active_open",
        FieldType::Counter,
        "connect()s that started a TCP handshake",
    ),
    (
        "active_open_failed",
        FieldType::Counter,
        "handshakes that failed, for any reason (refused, timed out, other errors)",
    ),
    (
        "connect_refused",
        FieldType::Counter,
        "handshakes refused: a RST (or ICMP port unreachable) answered the SYN (ECONNREFUSED)",
    ),
    (
        "connect_timeout",
        FieldType::Counter,
        "handshakes timed out: SYN retransmissions exhausted (ETIMEDOUT)",
    ),
    (
        "send_rsts",
        FieldType::Counter,
        "connections this end reset (abort, SO_LINGER 0, close with unread data)",
    ),
    (
        "receive_rsts",
        FieldType::Counter,
        "established connections the peer reset",
    ),
];

/// This interval's rows, in meta order.
pub fn rows(events: &mut Events, namespaces: &Namespaces) -> Vec<Vec<Value>> {
    let live = |k: &ConnectKey| Path::new(&format!("/proc/{}", k.tgid)).exists();
    events
        .connects(live)
        .into_iter()
        .map(|(k, c)| {
            row(
                &k,
                &c,
                namespaces.inode_of_cookie(k.netns_cookie).unwrap_or(0),
            )
        })
        .collect()
}

fn row(k: &ConnectKey, c: &ConnectCounts, netns: u64) -> Vec<Value> {
    let family = u8::try_from(k.family).unwrap_or(0);
    vec![
        Value::from(k.tgid),
        Value::from(ip_from_words(family, k.addr).to_string()),
        Value::from(k.port),
        Value::from(netns),
        Value::from(owners::comm(k.tgid)),
        Value::from(c.active_open),
        Value::from(c.refused + c.timed_out + c.failed_other),
        Value::from(c.refused),
        Value::from(c.timed_out),
        Value::from(c.send_rsts),
        Value::from(c.receive_rsts),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_as_wide_as_the_table() {
        let k = ConnectKey {
            family: 2,
            addr: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
            port: 80,
            ..ConnectKey::default()
        };
        let c = ConnectCounts {
            refused: 1,
            timed_out: 2,
            failed_other: 3,
            ..ConnectCounts::default()
        };
        let r = row(&k, &c, 7);
        assert_eq!(r.len(), FIELDS.len());
        assert_eq!(r[1], Value::from("10.0.0.1"));
        assert_eq!(r[6], Value::from(6u64));
    }
}
