//! tcp_link rows on /metrics, shared by the TCP probe's integration tests.
// Exact on purpose: probe state gauges are exactly 0 or 1.
#![allow(clippy::float_cmp)]

use std::{collections::BTreeMap, ops::Not, time::Duration};

use super::{Agent, Sample};

pub const CONFIG: &str = r#"
[imdb]
record_timeout = 120
[[probes]]
name = "tcp"
switch = "on"
interval = 1
"#;

pub const WAIT: Duration = Duration::from_secs(20);

/// All `tcp_link` fields of the one row whose labels match `want`, by field name.
pub fn row(samples: &[Sample], want: &[(&str, String)]) -> Option<BTreeMap<String, f64>> {
    let mut fields = BTreeMap::new();
    let mut labels: Option<BTreeMap<String, String>> = None;
    for s in samples {
        let Some(field) = s.name.strip_prefix("gala_gopher_tcp_link_") else {
            continue;
        };
        // A histogram's buckets (`srtt`) are one series each, told apart by `le`: see
        // [`buckets`]. Its `_sum` and `_count` are fields like the others.
        if field.ends_with("_bucket") {
            continue;
        }
        if !want.iter().all(|(k, v)| s.label(k) == v) {
            continue;
        }
        match &labels {
            None => labels = Some(s.labels.clone()),
            Some(l) => assert_eq!(l, &s.labels, "two tcp_link rows match {want:?}"),
        }
        fields.insert(field.trim_end_matches("_total").to_owned(), s.value);
    }
    (!fields.is_empty()).then_some(fields)
}

/// The `field` histogram's cumulative buckets (`le`, count) of the one row matching `want`,
/// in increasing `le` (`+Inf` last).
pub fn buckets(samples: &[Sample], field: &str, want: &[(&str, String)]) -> Vec<(f64, f64)> {
    let name = format!("gala_gopher_tcp_link_{field}_bucket");
    let mut out: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.label(k) == v))
        .map(|s| (s.label("le").parse::<f64>().unwrap(), s.value))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

pub fn expect_row(
    agent: &Agent,
    what: &str,
    want: &[(&str, String)],
    check: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let samples = agent.wait_for(WAIT, what, |s| row(s, want).is_some_and(|r| check(&r)));
    row(&samples, want).unwrap()
}

pub fn ready(agent: &Agent) -> bool {
    agent
        .wait_for(WAIT, "tcp probe running", |s| {
            s.iter().any(|x| {
                x.name == "gopher_probe_state"
                    && x.label("probe") == "tcp"
                    && x.label("state") == "running"
                    && x.value == 1.0
            })
        })
        .is_empty()
        .not()
}

/// `LINKS` inserts the tcp probe's eBPF side refused for a full map, as /metrics says (0 while
/// none were).
pub fn links_map_full(samples: &[Sample]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == "gopher_ebpf_map_full_total"
                && s.label("probe") == "tcp"
                && s.label("map") == "links"
        })
        .map_or(0.0, |s| s.value)
}

/// Entries in the `LINKS` map of the agent `pid` (the map its fds hold, found by name in
/// bpftool's listing): what its eBPF side keeps outside the owners' slots.
pub fn links_entries_held_by(pid: u32) -> usize {
    let ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    let bpftool = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new("bpftool")
            .args(args)
            .output()
            .expect("bpftool");
        assert!(out.status.success(), "bpftool {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let id = ids
        .iter()
        .find(|id| bpftool(&["-j", "map", "show", "id", &id.to_string()])["name"] == "LINKS")
        .expect("the agent holds no LINKS map");
    bpftool(&["-j", "map", "dump", "id", &id.to_string()])
        .as_array()
        .map_or(0, Vec::len)
}
