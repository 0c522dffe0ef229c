//! `system_tcp`: the host's TCP counters from the `Tcp:` lines of /proc/net/snmp, one row.
//!
//! /proc/net/snmp describes the network namespace of the reader: the agent's, normally the
//! host's.

use super::{Collect, Field, counter, gauge};
use crate::imdb::Row;

pub(crate) struct Tcp;

impl Collect for Tcp {
    const TABLE: &'static str = "system_tcp";
    const DESCRIPTION: &'static str =
        "Host TCP counters from /proc/net/snmp (gala-gopher system_tcp)";
    const FIELDS: &'static [Field] = FIELDS;
    const FILES: &'static [&'static str] = &["/proc/net/snmp"];

    fn new() -> Self {
        Self
    }

    fn collect(&mut self, texts: &[String], out: &mut Vec<Row>) -> Result<(), &'static str> {
        out.push(parse(texts.first().map_or("", String::as_str))?);
        Ok(())
    }
}

const FIELDS: &[Field] = &[
    counter(
        "active_opens",
        "ActiveOpens",
        "Connections opened actively (SYN-SENT entered from CLOSED)",
    ),
    counter(
        "passive_opens",
        "PassiveOpens",
        "Connections opened passively (SYN-RECV entered from LISTEN)",
    ),
    counter(
        "attempt_fails",
        "AttemptFails",
        "Connection attempts that failed (SYN-SENT or SYN-RECV back to CLOSED or LISTEN)",
    ),
    counter(
        "estab_resets",
        "EstabResets",
        "Resets of established or CLOSE-WAIT connections (connections)",
    ),
    gauge(
        "curr_estab",
        "CurrEstab",
        "Connections currently ESTABLISHED or CLOSE-WAIT",
    ),
    counter(
        "in_segs",
        "InSegs",
        "Segments received, including those with errors",
    ),
    counter(
        "out_segs",
        "OutSegs",
        "Segments sent, excluding retransmissions",
    ),
    counter("retrans_segs", "RetransSegs", "Segments retransmitted"),
    counter(
        "in_errs",
        "InErrs",
        "Segments received with errors (bad checksum, short, ...)",
    ),
    counter("out_rsts", "OutRsts", "Segments sent with the RST flag"),
    counter(
        "in_csum_errors",
        "InCsumErrors",
        "Segments received with a bad checksum",
    ),
];

/// One row from the `Tcp:` header line (names) and the `Tcp:` line after it (values).
pub(crate) fn parse(text: &str) -> Result<Row, &'static str> {
    let mut tcp = text.lines().filter_map(|l| l.strip_prefix("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return Err("/proc/net/snmp has no Tcp: lines");
    };
    let mut row = Tcp::blank_row();
    let mut found = false;
    for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
        let Some(i) = FIELDS.iter().position(|f| f.src == name) else {
            continue;
        };
        // The kernel prints these as unsigned longs.
        if let Ok(v) = value.parse::<u64>()
            && let Some(slot) = row.values.get_mut(i)
        {
            super::put(slot, v);
            found = true;
        }
    }
    if found {
        Ok(row)
    } else {
        Err("/proc/net/snmp's Tcp: lines have none of the expected counters")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::system::tests::{check_row, value};

    const SAMPLE: &str = include_str!("testdata/snmp");

    #[test]
    fn real_sample() {
        let row = parse(SAMPLE).unwrap();
        check_row::<Tcp>(&row);
        let v = |n| value::<Tcp>(&row, n);
        // Tcp: 1 200 120000 -1 2646253 2646058 147 56 0 43413503 43408690 35 0 236 0
        assert_eq!(v("active_opens"), "2646253");
        assert_eq!(v("passive_opens"), "2646058");
        assert_eq!(v("attempt_fails"), "147");
        assert_eq!(v("estab_resets"), "56");
        assert_eq!(v("curr_estab"), "0");
        assert_eq!(v("in_segs"), "43413503");
        assert_eq!(v("out_segs"), "43408690");
        assert_eq!(v("retrans_segs"), "35");
        assert_eq!(v("in_errs"), "0");
        assert_eq!(v("out_rsts"), "236");
        assert_eq!(v("in_csum_errors"), "0");
    }

    #[test]
    fn columns_are_found_by_name_not_position() {
        let text = "Ip: a b\nIp: 1 2\nTcp: OutRsts Foo ActiveOpens\nTcp: 9 8 7\nUdp: InDatagrams\nUdp: 3\n";
        let row = parse(text).unwrap();
        assert_eq!(value::<Tcp>(&row, "out_rsts"), "9");
        assert_eq!(value::<Tcp>(&row, "active_opens"), "7");
        assert_eq!(value::<Tcp>(&row, "in_csum_errors"), "");
    }

    #[test]
    fn garbage() {
        assert!(parse("").is_err());
        assert!(parse("Tcp: ActiveOpens\n").is_err(), "no value line");
        assert!(parse("Tcp: ActiveOpens\nTcp: -5\n").is_err());
        let row = parse("Tcp: ActiveOpens InSegs\nTcp: 1\n").unwrap();
        assert_eq!(value::<Tcp>(&row, "in_segs"), "", "short value line");
    }
}
