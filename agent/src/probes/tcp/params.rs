//! The tcp probe's `[probes.params]`: one serde struct, then the probe and its [`Policy`].
//!
//! Every key is optional; a key left out keeps the default. Values are checked here with the
//! wording of docs/config.md, and a refusal names its key ([`ParamError`]).

use serde::{Deserialize, Deserializer};

use super::{
    TcpProbe,
    policy::{Cidr, SrttHistogram, items, port_range},
};
use crate::probes::params::{self, ParamError, boolean, expected, int_in};

/// Field order is the order of the "known:" list in the unknown-key refusal.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TcpParams {
    #[serde(deserialize_with = "max_links")]
    max_links: Option<u32>,
    #[serde(deserialize_with = "flag")]
    connect_hooks: Option<bool>,
    #[serde(deserialize_with = "flag")]
    socket_iterator: Option<bool>,
    #[serde(deserialize_with = "max_series")]
    max_series: Option<u32>,
    #[serde(deserialize_with = "prefix_v4")]
    client_prefix_v4: Option<u8>,
    #[serde(deserialize_with = "prefix_v6")]
    client_prefix_v6: Option<u8>,
    #[serde(deserialize_with = "flag")]
    aggregate_clients: Option<bool>,
    #[serde(deserialize_with = "ports")]
    include_ports: Option<Vec<(u16, u16)>>,
    #[serde(deserialize_with = "ports")]
    exclude_ports: Option<Vec<(u16, u16)>>,
    #[serde(deserialize_with = "cidrs")]
    include_cidrs: Option<Vec<Cidr>>,
    #[serde(deserialize_with = "cidrs")]
    exclude_cidrs: Option<Vec<Cidr>>,
    #[serde(deserialize_with = "processes")]
    include_processes: Option<Vec<String>>,
    #[serde(deserialize_with = "processes")]
    exclude_processes: Option<Vec<String>>,
    #[serde(deserialize_with = "srtt_histogram")]
    srtt_histogram: Option<SrttHistogram>,
}

/// Builds the probe from its `[probes.params]` table.
pub(super) fn probe(table: &toml::Table) -> Result<TcpProbe, ParamError> {
    let p: TcpParams = params::parse("tcp", table)?;
    let mut probe = TcpProbe::default();
    let policy = &mut probe.policy;
    set(&mut probe.max_links, p.max_links);
    set(&mut probe.connect_hooks, p.connect_hooks);
    set(&mut probe.socket_iterator, p.socket_iterator);
    set(&mut policy.max_series, p.max_series);
    // Explicit prefixes win over aggregate_clients (they were applied after it, in key order).
    if p.aggregate_clients == Some(true) {
        policy.client_prefix_v4 = 0;
        policy.client_prefix_v6 = 0;
    }
    set(&mut policy.client_prefix_v4, p.client_prefix_v4);
    set(&mut policy.client_prefix_v6, p.client_prefix_v6);
    set(&mut policy.ports.include, p.include_ports);
    set(&mut policy.ports.exclude, p.exclude_ports);
    set(&mut policy.cidrs.include, p.include_cidrs);
    set(&mut policy.cidrs.exclude, p.exclude_cidrs);
    set(&mut policy.processes.include, p.include_processes);
    set(&mut policy.processes.exclude, p.exclude_processes);
    set(&mut policy.srtt_histogram, p.srtt_histogram);
    Ok(probe)
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// The policy part alone (tests of `policy.rs`).
#[cfg(test)]
pub(super) fn policy(table: &toml::Table) -> Result<super::Policy, ParamError> {
    probe(table).map(|p| p.policy)
}

fn value<'de, D: Deserializer<'de>>(d: D) -> Result<toml::Value, D::Error> {
    toml::Value::deserialize(d)
}

fn max_links<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let what = "an integer from 1024 to 4194304 (live sockets tracked in the kernel)";
    int_in(&value(d)?, 1024..=4_194_304, what).map(|n| Some(n as u32))
}

fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    boolean(&value(d)?).map(Some)
}

fn max_series<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let what = "an integer from 1 to 10000000 (tcp_link rows)";
    int_in(&value(d)?, 1..=10_000_000, what).map(|n| Some(n as u32))
}

fn prefix_v4<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    let what = "an integer from 0 to 32 (prefix length)";
    int_in(&value(d)?, 0..=32, what).map(|n| Some(n as u8))
}

fn prefix_v6<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    let what = "an integer from 0 to 128 (prefix length)";
    int_in(&value(d)?, 0..=128, what).map(|n| Some(n as u8))
}

fn srtt_histogram<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SrttHistogram>, D::Error> {
    let v = value(d)?;
    let what = "\"shared\", \"all\" or \"off\" (which tcp_link rows carry the srtt histogram)";
    match v.as_str() {
        Some("shared") => Ok(Some(SrttHistogram::Shared)),
        Some("all") => Ok(Some(SrttHistogram::All)),
        Some("off") => Ok(Some(SrttHistogram::Off)),
        _ => Err(expected(what, &v)),
    }
}

/// Each item of a list key (see [`items`]) through `parse`, refused as `expected <what>`.
fn list<T, E: serde::de::Error>(
    v: &toml::Value,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, E> {
    items(v)
        .ok_or_else(|| expected(what, v))?
        .iter()
        .map(|s| parse(s).ok_or_else(|| expected(what, v)))
        .collect()
}

fn ports<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<(u16, u16)>>, D::Error> {
    let what = "a list of ports or port ranges (80, \"8000-8999\"; or \"80,443\")";
    list(&value(d)?, what, port_range).map(Some)
}

fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Cidr>>, D::Error> {
    let what = "a list of addresses or CIDR blocks (\"10.0.0.0/8\", \"fd00::/8\")";
    list(&value(d)?, what, Cidr::parse).map(Some)
}

fn processes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let v = value(d)?;
    let what = "a list of process names (\"nginx\"; or \"nginx,redis-server\")";
    let names = list(&v, what, |s| Some(s.to_owned()))?;
    if names.iter().any(|p| p.is_empty() || p.len() > 15) {
        return Err(expected(
            "process names of 1 to 15 bytes (the kernel's comm)",
            &v,
        ));
    }
    Ok(Some(names))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(text: &str) -> ParamError {
        probe(&toml::from_str(text).unwrap()).err().unwrap()
    }

    #[test]
    fn reads_probe_keys_and_refuses_by_key() {
        let p = probe(&toml::from_str("max_links = 2048\nconnect_hooks = true").unwrap()).unwrap();
        assert_eq!((p.max_links, p.connect_hooks), (2048, true));
        let e = refusal("max_links = 5");
        assert_eq!(e.field, "max_links");
        assert_eq!(
            e.reason,
            "expected an integer from 1024 to 4194304 (live sockets tracked in the kernel), \
             found 5"
        );
        assert_eq!(
            refusal("connect_hooks = \"yes\"").to_string(),
            "probes[tcp].params.connect_hooks: expected true or false, found \"yes\""
        );
        let e = refusal("bogus = 1");
        assert_eq!(
            e.to_string(),
            "probes[tcp].params.bogus: unknown parameter (known: max_links, connect_hooks, socket_iterator, \
             max_series, client_prefix_v4, client_prefix_v6, aggregate_clients, include_ports, \
             exclude_ports, include_cidrs, exclude_cidrs, include_processes, exclude_processes, srtt_histogram)"
        );
    }

    #[test]
    fn srtt_histogram_defaults_to_shared_links_and_names_its_choices() {
        assert_eq!(
            policy(&toml::Table::new()).unwrap().srtt_histogram,
            SrttHistogram::Shared
        );
        let p = policy(&toml::from_str("srtt_histogram = \"all\"").unwrap()).unwrap();
        assert_eq!(p.srtt_histogram, SrttHistogram::All);
        assert_eq!(
            refusal("srtt_histogram = \"some\"").to_string(),
            "probes[tcp].params.srtt_histogram: expected \"shared\", \"all\" or \"off\" (which \
             tcp_link rows carry the srtt histogram), found \"some\""
        );
    }

    #[test]
    fn explicit_prefixes_win_over_aggregate_clients() {
        let p = policy(&toml::from_str("aggregate_clients = true\nclient_prefix_v4 = 24").unwrap())
            .unwrap();
        assert_eq!((p.client_prefix_v4, p.client_prefix_v6), (24, 0));
    }
}
