//! The `nginx_link` native probe (named apart from the `nginx` stub_status extension probe): gala-gopher's load-balancer link table for nginx
//! (`nginx_statistic`, later `nginx_link`), one row per (client, nginx front, backend) with the
//! number of proxied sessions alive on it, for HTTP reverse proxying (`is_l7` 1) and stream
//! (TCP) proxying (`is_l7` 0).
//!
//! How (exact, and cheap on a busy proxy): uprobes on `ngx_event_connect_peer` (every upstream
//! connection any proxy module makes, keepalive reuse included) and `ngx_close_connection`
//! keep, in a kernel map, the upstream connections alive now: one event per connection, never
//! per request byte (agent-ebpf `src/nginx.rs`). Each interval the agent reads, for each of
//! them, which session it serves and the two sockets (`sessions.rs`), and counts. The probe
//! starts itself: while no process named `nginx` runs it holds no uprobes and no map; when one
//! runs, its binary is checked (`binary.rs`: nginx 1.9.0 to 1.x, 64-bit) and traced. An
//! unsupported binary stops this probe with the reason; the other probes are not affected.
//!
//! Sessions already open when the probe attaches (or the agent restarts) are counted from the
//! first interval: each nginx process, when first seen after its binary is traced, has its live
//! upstream connections read from its epoll registrations (`backfill.rs`) into the same map.
//!
//! Not seen: UDP or unix-socket upstreams (counted in `gopher_nginx_sessions_skipped_total`),
//! and, for nginx running another event method than epoll, sessions open before the probe
//! attached (counted once they reconnect).

mod backfill;
mod binary;
mod bpf;
mod params;
mod sessions;

use std::{collections::HashSet, sync::Arc};

use anyhow::Context as _;

pub use self::params::{TABLE, TABLE_LATER};
use self::{params::Settings, sessions::Skip};
use super::{ParamError, Probe, ProbeContext, ProbeFuture};
use crate::{
    imdb::{Batch, FieldMeta, FieldType, TableMeta, Value},
    telemetry::{EBPF_MAP_FULL, NGINX_BINARIES_TRACED, NGINX_SESSIONS_SKIPPED, PROBE_ROWS},
};

pub struct NginxProbe {
    settings: Settings,
}

impl NginxProbe {
    pub fn from_params(table: &toml::Table) -> Result<Self, ParamError> {
        Ok(Self {
            settings: params::settings(table)?,
        })
    }
}

/// (name, type, help) of every field, in row order.
const FIELDS: [(&str, FieldType, &str); 7] = [
    (
        "client_ip",
        FieldType::Key,
        "Address of the client, as nginx sees it.",
    ),
    (
        "virtual_ip",
        FieldType::Key,
        "Address of nginx the client connected to (the proxy front).",
    ),
    (
        "virtual_port",
        FieldType::Key,
        "Port of nginx the client connected to.",
    ),
    (
        "server_ip",
        FieldType::Key,
        "Address of the backend nginx connected to for the client.",
    ),
    ("server_port", FieldType::Key, "Port of the backend."),
    (
        "is_l7",
        FieldType::Label,
        "1: HTTP reverse proxy (http module); 0: TCP proxy (stream module).",
    ),
    (
        "link_count",
        FieldType::Gauge,
        "Proxied sessions alive now between this client, front and backend.",
    ),
];

/// The table's definition under `name` (`nginx_statistic` or `nginx_link`), at most `max`
/// records (never more rows than sessions).
pub fn table_meta(name: &str, max: usize) -> TableMeta {
    TableMeta {
        name: name.to_owned(),
        description:
            "nginx load-balancer links: live proxied sessions per client, front and backend."
                .to_owned(),
        fields: FIELDS
            .iter()
            .map(|(n, ty, help)| FieldMeta {
                name: (*n).to_owned(),
                ty: *ty,
                description: (*help).to_owned(),
            })
            .collect(),
        max_records: Some(max),
    }
}

impl Probe for NginxProbe {
    fn name(&self) -> &'static str {
        "nginx_link"
    }

    fn tables(&self) -> Vec<TableMeta> {
        vec![table_meta(
            self.settings.table,
            self.settings.max_sessions as usize,
        )]
    }

    fn run(&self, ctx: ProbeContext) -> ProbeFuture {
        Box::pin(run(self.settings.clone(), ctx))
    }
}

async fn run(settings: Settings, mut ctx: ProbeContext) -> anyhow::Result<()> {
    let rows_sent = ctx.metrics.counter(PROBE_ROWS, &[("probe", "nginx_link")]);
    let traced = ctx.metrics.gauge(NGINX_BINARIES_TRACED, &[]);
    let full = [
        (gopher_common::NGX_FULL_PEERS, "peers"),
        (gopher_common::NGX_FULL_PENDING, "pending"),
    ]
    .map(|(slot, map)| {
        let c = ctx
            .metrics
            .counter(EBPF_MAP_FULL, &[("probe", "nginx_link"), ("map", map)]);
        (slot, c, 0u64)
    });
    let mut full = full;
    let skipped = Skip::ALL.map(|s| {
        (
            s,
            ctx.metrics
                .counter(NGINX_SESSIONS_SKIPPED, &[("reason", s.as_str())]),
        )
    });
    let mut programs: Option<bpf::Programs> = None;
    let mut resolver = sessions::Resolver::default();
    // Processes whose already-open connections were read (`backfill.rs`).
    let mut walked = HashSet::new();
    ctx.state.running();
    let mut tick = tokio::time::interval(ctx.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut had_rows = true;
    loop {
        tokio::select! {
            changed = ctx.stop.changed() => {
                if changed.is_err() || *ctx.stop.borrow() {
                    break;
                }
            }
            _ = tick.tick() => {
                let links = tokio::task::block_in_place(|| {
                    interval(&settings, &mut programs, &mut resolver, &mut walked)
                })?;
                traced.set(programs.as_ref().map_or(0.0, |p| p.traced() as f64));
                if let Some(p) = &programs {
                    for (slot, counter, seen) in &mut full {
                        let n = p.full(*slot);
                        counter.add(n.saturating_sub(*seen));
                        *seen = (*seen).max(n);
                    }
                }
                let Some(census) = links else {
                    // No nginx: no uprobes, no map; the table empties once.
                    for f in &mut full {
                        f.2 = 0;
                    }
                    if std::mem::take(&mut had_rows) && send(&ctx, settings.table, Vec::new()).await.is_err() {
                        break;
                    }
                    continue;
                };
                for (s, counter) in &skipped {
                    counter.add(census.skipped.get(s).copied().unwrap_or(0));
                }
                let rows = rows(census.links);
                had_rows = !rows.is_empty();
                rows_sent.add(rows.len() as u64);
                if send(&ctx, settings.table, rows).await.is_err() {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// One interval: follows the running binaries (loading, attaching, detaching) and counts the
/// sessions; `None` while no nginx runs.
fn interval(
    settings: &Settings,
    programs: &mut Option<bpf::Programs>,
    resolver: &mut sessions::Resolver,
    walked: &mut HashSet<u32>,
) -> anyhow::Result<Option<sessions::Census>> {
    let running = binary::running(&settings.process_name);
    if running.is_empty() {
        walked.clear();
        if programs.take().is_some() {
            tracing::info!("nginx probe: no nginx process any more; uprobes detached");
        }
        resolver.keep_namespaces(&HashSet::new());
        return Ok(None);
    }
    let p = match programs {
        Some(p) => p,
        None => programs.insert(bpf::Programs::load(settings.max_sessions)?),
    };
    p.retain(|id| running.contains_key(&id));
    for bin in running.values() {
        if p.is_attached(bin.id) {
            continue;
        }
        let shown = std::fs::read_link(&bin.path).unwrap_or_else(|_| bin.path.clone());
        let version = binary::check(&bin.path)
            .with_context(|| format!("nginx binary {} (pid {})", shown.display(), bin.pids[0]))?;
        p.attach(bin.id, &bin.path)?;
        tracing::info!(
            "nginx probe: tracing nginx {}.{}.{} at {} ({} processes)",
            version.0,
            version.1,
            version.2,
            shown.display(),
            bin.pids.len()
        );
    }
    // After the uprobes: a connection made meanwhile is recorded by both, which is harmless.
    let pids: HashSet<u32> = running
        .values()
        .flat_map(|b| b.pids.iter().copied())
        .collect();
    walked.retain(|pid| pids.contains(pid));
    for pid in &pids {
        if walked.insert(*pid) {
            let found = backfill::upstreams(*pid);
            if !found.is_empty() {
                tracing::debug!(
                    "nginx probe: {} upstream connections already open in pid {pid}",
                    found.len()
                );
                p.record(&found);
            }
        }
    }
    let namespaces: HashSet<u64> = running
        .values()
        .flat_map(|b| b.pids.iter())
        .filter_map(|pid| sessions::netns_inode(*pid))
        .collect();
    resolver.keep_namespaces(&namespaces);
    let peers = p.peers()?;
    let census = resolver.census(&peers);
    p.forget(&census.dead);
    Ok(Some(census))
}

fn rows(links: std::collections::HashMap<sessions::LinkKey, u64>) -> Vec<Vec<Value>> {
    let mut links: Vec<_> = links.into_iter().collect();
    links.sort_unstable();
    links
        .into_iter()
        .map(|(k, n)| {
            vec![
                Value::from(k.client_ip.to_string()),
                Value::from(k.virtual_ip.to_string()),
                Value::from(u64::from(k.virtual_port)),
                Value::from(k.server_ip.to_string()),
                Value::from(u64::from(k.server_port)),
                Value::from(u64::from(k.is_l7)),
                Value::from(n),
            ]
        })
        .collect()
}

/// The whole table, replacing what was there (links with no session left disappear).
async fn send(ctx: &ProbeContext, table: &str, upserts: Vec<Vec<Value>>) -> Result<(), ()> {
    let batch = Batch::TableDelta {
        table: table.to_owned(),
        upserts,
        removed: Vec::new(),
        refresh_rest: false,
        replace: true,
        more: false,
    };
    let mut stop = ctx.stop.clone();
    tokio::select! {
        sent = ctx.rows.send(batch) => sent.map_err(|_| ()),
        _ = stop.wait_for(|stop| *stop) => Err(()),
    }
}

/// Builds the probe for the registry.
pub fn build(table: &toml::Table) -> Result<Arc<dyn Probe>, ParamError> {
    Ok(Arc::new(NginxProbe::from_params(table)?))
}
