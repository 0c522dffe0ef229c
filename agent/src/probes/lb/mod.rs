//! Load-balancer link probes: gala-spider's `haproxy_link`, `lvs_link` (NAT through conntrack)
//! and `dnsmasq_link` tables, one row per (client, proxy front, backend) with `link_count` live
//! sessions.
//!
//! gala-gopher traced haproxy and dnsmasq with uprobes and LVS with kprobes on ip_vs. Here each
//! proxy is read through the interface that stays exact across its upgrades:
//! - haproxy: its runtime API, `show sess all` on the stats socket ([`haproxy`]), which lists
//!   every stream with its client, frontend address and server: no symbol or struct offset of
//!   one haproxy build is assumed;
//! - NAT (kube-proxy iptables, Docker published ports, IPVS with conntrack): the conntrack
//!   table over ctnetlink ([`lvs`]), the kernel's own record of every translated flow;
//! - dnsmasq: conntrack entries answered by the addresses dnsmasq listens on ([`dnsmasq`]);
//!   Debian's dnsmasq is stripped, so there is nothing to attach uprobes to.
//!
//! Every interval a probe takes a snapshot (blocking netlink/socket I/O, on a blocking thread),
//! counts sessions per row key and sends the whole table as one replacing delta: a link that
//! ended is gone from the next snapshot, so `link_count` goes down as soon as sessions end
//! (not after `record_timeout`). A snapshot that cannot be taken is counted in
//! `gopher_probe_errors_total{probe}` and logged; a probe that cannot work at all on this node
//! (haproxy without a stats socket) fails with that one reason, other probes unaffected.

mod conntrack;
mod dnsmasq;
mod haproxy;
mod lvs;
mod params;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Native, Probe, ProbeContext, ProbeFuture, check_type::CheckType};
use crate::{
    imdb::{Batch, FieldMeta, FieldType, TableMeta, Value},
    telemetry::{PROBE_ERRORS, PROBE_ROWS},
};

/// `haproxy_link` from haproxy's stats socket.
pub const HAPROXY: Native = Native {
    name: "haproxy_link",
    default_on: false,
    tables: &[haproxy::TABLE],
    build: |p| Ok(Arc::new(LbProbe::new("haproxy_link", params::haproxy(p)?))),
    start_check: Some(("pgrep -x haproxy | wc -l", CheckType::Count)),
};

/// `lvs_link` (or `ipvs_link`) from the conntrack table's DNAT entries.
pub const LVS: Native = Native {
    name: "lvs_link",
    default_on: false,
    tables: &[lvs::TABLE],
    build: |p| Ok(Arc::new(LbProbe::new("lvs_link", params::lvs(p)?))),
    // Conntrack exists in the agent's namespace. Whether NAT is in use cannot be told from a
    // shell without a dump (nf_nat is often built in, with no trace in /proc/modules or
    // /sys/module), so the probe runs wherever conntrack does and reports what it finds.
    start_check: Some((
        "test -e /proc/sys/net/netfilter/nf_conntrack_count",
        CheckType::Exit,
    )),
};

/// `dnsmasq_link` from the conntrack entries of the addresses dnsmasq listens on.
pub const DNSMASQ: Native = Native {
    name: "dnsmasq_link",
    default_on: false,
    tables: &[dnsmasq::TABLE],
    build: |p| Ok(Arc::new(LbProbe::new("dnsmasq_link", params::dnsmasq(p)?))),
    start_check: Some(("pgrep -x dnsmasq | wc -l", CheckType::Count)),
};

/// The lb probes' entries in the native-probe registry.
pub(super) const PROBES: [Native; 3] = [HAPROXY, LVS, DNSMASQ];

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Nothing this probe can read on this node, for a reason the user must fix (config): the
    /// probe fails with it.
    #[error("{0}")]
    Unusable(String),
    /// This interval's snapshot failed (a socket refused, haproxy reloading): retried next
    /// interval.
    #[error("{0}")]
    Transient(String),
}

/// A table's fields and its snapshot.
pub(crate) trait Snapshot: Send + 'static {
    fn meta(&self) -> TableMeta;
    /// The rows of this instant, key fields first, `link_count` included. Blocking.
    /// Problems with part of the sources (one haproxy of two) go to `warnings`.
    fn take(&mut self, warnings: &mut Vec<String>) -> Result<Vec<Vec<Value>>, SnapshotError>;
}

struct LbProbe<S> {
    name: &'static str,
    snapshot: std::sync::Mutex<Option<S>>,
    meta: TableMeta,
}

impl<S: Snapshot> LbProbe<S> {
    fn new(name: &'static str, snapshot: S) -> Self {
        Self {
            name,
            meta: snapshot.meta(),
            snapshot: std::sync::Mutex::new(Some(snapshot)),
        }
    }
}

impl<S: Snapshot + Clone> Probe for LbProbe<S> {
    fn name(&self) -> &str {
        self.name
    }

    fn tables(&self) -> Vec<TableMeta> {
        vec![self.meta.clone()]
    }

    fn run(&self, ctx: ProbeContext) -> ProbeFuture {
        // Each run starts from the probe's configured state (a restarted probe too).
        let snapshot = self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let table = self.meta.name.clone();
        Box::pin(run(self.name, table, snapshot, ctx))
    }
}

async fn run<S: Snapshot>(
    name: &'static str,
    table: String,
    snapshot: Option<S>,
    mut ctx: ProbeContext,
) -> anyhow::Result<()> {
    let Some(mut snapshot) = snapshot else {
        anyhow::bail!("probe state lost");
    };
    let errors = ctx.metrics.counter(PROBE_ERRORS, &[("probe", name)]);
    let rows_sent = ctx.metrics.counter(PROBE_ROWS, &[("probe", name)]);
    let mut last_warn: Option<Instant> = None;
    let mut started = false;
    let mut tick = tokio::time::interval(ctx.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = ctx.stop.changed() => {
                if changed.is_err() || *ctx.stop.borrow() {
                    return Ok(());
                }
            }
            _ = tick.tick() => {
                let (back, result, warnings) = tokio::task::spawn_blocking(move || {
                    let mut warnings = Vec::new();
                    let r = snapshot.take(&mut warnings);
                    (snapshot, r, warnings)
                })
                .await?;
                snapshot = back;
                let mut problems = warnings;
                let rows = match result {
                    Ok(rows) => Some(rows),
                    Err(SnapshotError::Unusable(why)) => {
                        errors.inc();
                        anyhow::bail!("{why}");
                    }
                    Err(SnapshotError::Transient(why)) => {
                        problems.push(why);
                        None
                    }
                };
                if !problems.is_empty() {
                    errors.add(problems.len() as u64);
                    if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_mins(1)) {
                        last_warn = Some(Instant::now());
                        tracing::warn!(probe = name, "{}; retrying every interval (logged once a minute)", problems.join("; "));
                    }
                }
                if !started {
                    started = true;
                    ctx.state.running();
                }
                let Some(rows) = rows else { continue };
                rows_sent.add(rows.len() as u64);
                let batch = Batch::TableDelta {
                    table: table.clone(),
                    upserts: rows,
                    removed: Vec::new(),
                    refresh_rest: false,
                    replace: true,
                    more: false,
                };
                tokio::select! {
                    sent = ctx.rows.send(batch) => if sent.is_err() { return Ok(()) },
                    _ = ctx.stop.wait_for(|stop| *stop) => return Ok(()),
                }
            }
        }
    }
}

/// A table definition from (name, type, help) triples.
fn table(name: &str, description: &str, fields: &[(&str, FieldType, &str)]) -> TableMeta {
    TableMeta {
        name: name.to_owned(),
        description: description.to_owned(),
        fields: fields
            .iter()
            .map(|(n, ty, help)| FieldMeta {
                name: (*n).to_owned(),
                ty: *ty,
                description: (*help).to_owned(),
            })
            .collect(),
        max_records: None,
    }
}

/// Counts equal keys: the rows of a snapshot, `link_count` appended to each key's values.
fn count_rows<K: Eq + std::hash::Hash>(
    keys: impl IntoIterator<Item = K>,
    row: impl Fn(&K) -> Vec<Value>,
) -> Vec<Vec<Value>> {
    count_rows_with(keys, |k, n| {
        let mut values = row(k);
        values.push(Value::from(n));
        values
    })
}

/// Counts equal keys; `row` makes a row from a key and its count.
fn count_rows_with<K: Eq + std::hash::Hash>(
    keys: impl IntoIterator<Item = K>,
    row: impl Fn(&K, u64) -> Vec<Value>,
) -> Vec<Vec<Value>> {
    let mut counts: HashMap<K, u64> = HashMap::new();
    for k in keys {
        *counts.entry(k).or_default() += 1;
    }
    counts.into_iter().map(|(k, n)| row(&k, n)).collect()
}

/// An address as gala-gopher printed it (dotted quad, or IPv6 text; IPv4-mapped shown as IPv4).
fn ip_text(ip: std::net::IpAddr) -> String {
    ip.to_canonical().to_string()
}
