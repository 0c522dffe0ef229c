//! `system_net`: network interface counters from /proc/net/dev, one row per interface.
//!
//! /proc/net/dev lists the interfaces of the reader's network namespace: the agent's,
//! normally the host's.

use super::{Collect, Field, counter, key, put};
use crate::imdb::Row;

pub(crate) struct Net;

impl Collect for Net {
    const TABLE: &'static str = "system_net";
    const DESCRIPTION: &'static str =
        "Network interface traffic and errors from /proc/net/dev (gala-gopher system_net)";
    const FIELDS: &'static [Field] = FIELDS;
    const FILES: &'static [&'static str] = &["/proc/net/dev"];

    fn new() -> Self {
        Self
    }

    fn collect(&mut self, texts: &[String], out: &mut Vec<Row>) -> Result<(), &'static str> {
        parse(texts.first().map_or("", String::as_str), out)
    }
}

/// For each field after the key: the /proc/net/dev column (0 = first number after "name:").
/// Skipped: rx/tx "compressed" (only old SLIP/PPP drivers count it).
const COLUMNS: [usize; 14] = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14];

const FIELDS: &[Field] = &[
    key("dev", "Network interface name"),
    counter("rx_bytes", "", "Data received, bytes"),
    counter("rx_packets", "", "Packets received"),
    counter(
        "rx_errs",
        "",
        "Receive errors reported by the driver (packets)",
    ),
    counter(
        "rx_dropped",
        "",
        "Received packets dropped (no buffer space, unknown protocol, ...)",
    ),
    counter(
        "rx_fifo",
        "",
        "Receive FIFO (ring buffer) overruns (packets)",
    ),
    counter(
        "rx_frame",
        "",
        "Received packets with framing or CRC errors",
    ),
    counter("rx_multicast", "", "Multicast packets received"),
    counter("tx_bytes", "", "Data sent, bytes"),
    counter("tx_packets", "", "Packets sent"),
    counter(
        "tx_errs",
        "",
        "Transmit errors reported by the driver (packets)",
    ),
    counter("tx_dropped", "", "Packets dropped on the way out"),
    counter("tx_fifo", "", "Transmit FIFO underruns (packets)"),
    counter(
        "tx_colls",
        "",
        "Collisions detected while sending (packets)",
    ),
    counter("tx_carrier", "", "Carrier losses while sending (packets)"),
];

/// Appends one row per "name: n0 n1 ... n15" line (after the two header lines); `Err` when
/// there is none (every namespace has at least `lo`).
pub(crate) fn parse(text: &str, out: &mut Vec<Row>) -> Result<(), &'static str> {
    let before = out.len();
    for line in text.lines() {
        // Interface names cannot contain ':' (dev_valid_name), and the header lines have
        // '|' before any ':'.
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '|') {
            continue;
        }
        let mut n = [None::<u64>; 16];
        let mut words = 0;
        for (slot, w) in n.iter_mut().zip(counters.split_ascii_whitespace()) {
            *slot = w.parse().ok();
            words += 1;
        }
        if words < n.len() {
            continue;
        }
        let mut row = Net::blank_row();
        put(&mut row.values[0], name);
        for (slot, &col) in row.values[1..].iter_mut().zip(&COLUMNS) {
            if let Some(v) = n[col] {
                put(slot, v);
            }
        }
        out.push(row);
    }
    if out.len() == before {
        return Err("/proc/net/dev has no interface lines");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::system::tests::{check_row, value};

    const SAMPLE: &str = include_str!("testdata/net-dev");

    fn rows(text: &str) -> Vec<Row> {
        let mut out = Vec::new();
        parse(text, &mut out).unwrap();
        out
    }

    #[test]
    fn real_sample() {
        let rows = rows(SAMPLE);
        let names: Vec<_> = rows.iter().map(|r| r.values[0].as_str()).collect();
        assert_eq!(names, ["lo", "ifb0", "ifb1", "eth0"]);
        for r in &rows {
            check_row::<Net>(r);
        }
        // eth0: 308784215 16580 0 0 0 0 0 0 974177 11784 0 0 0 0 0 0
        let v = |n| value::<Net>(&rows[3], n);
        assert_eq!(v("rx_bytes"), "308784215");
        assert_eq!(v("rx_packets"), "16580");
        assert_eq!(v("rx_dropped"), "0");
        assert_eq!(v("tx_bytes"), "974177");
        assert_eq!(v("tx_packets"), "11784");
        assert_eq!(v("tx_carrier"), "0");
        assert_eq!(value::<Net>(&rows[0], "rx_bytes"), "241325449193");
    }

    #[test]
    fn columns_map_to_fields() {
        let rows = rows("  eth1:1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n");
        let v = |n| value::<Net>(&rows[0], n);
        assert_eq!(
            v("rx_bytes"),
            "1",
            "no space after the colon (old kernels, big numbers)"
        );
        assert_eq!(v("rx_frame"), "6");
        assert_eq!(v("rx_multicast"), "8");
        assert_eq!(v("tx_bytes"), "9");
        assert_eq!(v("tx_colls"), "14");
        assert_eq!(v("tx_carrier"), "15");
    }

    #[test]
    fn garbage() {
        let mut out = Vec::new();
        assert!(parse("", &mut out).is_err());
        assert!(parse("Inter-|   Receive\n face |bytes\n", &mut out).is_err());
        assert!(parse("eth0: 1 2 3\n", &mut out).is_err(), "short line");
        assert!(parse("a b: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n", &mut out).is_err());
        let rows = rows("eth0: x 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n");
        assert_eq!(value::<Net>(&rows[0], "rx_bytes"), "");
        assert_eq!(value::<Net>(&rows[0], "rx_packets"), "2");
    }
}
