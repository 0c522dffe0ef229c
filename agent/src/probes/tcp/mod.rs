//! The native TCP link probe: eBPF for per-connection events, an eBPF socket iterator (or
//! sock_diag where it cannot load) for live counters.
//!
//! Every interval it reads each network namespace's TCP sockets (`iter.rs`, else `diag.rs`)
//! and applies the close
//! events the eBPF programs emitted (drained by a thread of their own, `closed.rs`, so that a
//! slow interval loses none), then folds both into `tcp_link` rows (see `links.rs`).
//! Nothing runs per packet or per send/recv call.

pub(crate) mod bpf;
/// Where the programs attach; `gopher check` looks for it too.
pub use bpf::cgroup2_root;
#[allow(dead_code, reason = "its users, the tracing programs, land next")]
pub(crate) mod btf;
mod closed;
mod collector;
mod cookie_hash;
pub(crate) mod diag;
mod entries;
mod iter;
mod iter_offsets;
mod key;
mod links;
pub(crate) mod netns;
pub(crate) mod owners;
mod params;
mod pieces;
pub mod policy;
mod recent;
mod role;
#[cfg(test)]
mod scan_bench;
mod schema;
mod seqspace;
mod srtt_hist;
mod sweep;
mod table;
mod walk;

use std::time::Duration;

pub use self::schema::{TABLE, table_meta};
use self::{
    closed::ClosedEvents,
    collector::Collector,
    pieces::{Rows, send_delta},
    policy::Policy,
};
pub(crate) use self::{
    key::{ip_from_bytes, ip_from_words, normalize},
    schema::{delta, key, to_row},
    seqspace::data_only,
};
use super::{ParamError, Probe, ProbeContext, ProbeFuture};
use crate::{
    imdb::TableMeta,
    telemetry::{
        EBPF_EVENTS_LOST, EBPF_MAP_FULL, EBPF_RUN_SECONDS, EBPF_RUNS, PROBE_COLLECT_SECONDS,
        PROBE_ROWS, TCP_SOCKET_SOURCE,
    },
};

/// How often drained close events are applied between intervals (keeps the queue short; the
/// drain thread itself never waits for this).
const APPLY_EVERY: Duration = Duration::from_millis(250);

pub struct TcpProbe {
    /// Capacity of the eBPF map of live sockets.
    pub max_links: u32,
    /// Use the sockops hooks with cgroup connect and release hooks for owners instead of the
    /// default destroy hooks (which kernels without BTF cannot load).
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

/// Each program's kernel run time and count (`bpf_prog_info`), as the kernel keeps them:
/// cumulative since the program was loaded, so set rather than added.
fn publish_run_stats(metrics: &crate::telemetry::SelfMetrics, programs: &bpf::Programs) {
    let stats = programs.run_stats();
    for (name, run_time, _) in &stats {
        metrics
            .float_counter(EBPF_RUN_SECONDS, &[("probe", "tcp"), ("program", name)])
            .set(run_time.as_secs_f64());
    }
    metrics.mirror_counters(
        EBPF_RUNS,
        stats
            .into_iter()
            .map(|(name, _, runs)| (Box::from(["tcp".to_owned(), name.to_owned()]), runs))
            .collect(),
    );
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
    tracing::info!(
        cgroup = %programs.cgroup.display(),
        hooks = ?programs.hooks,
        "tcp probe attached"
    );
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
                if first {
                    // Running once the first dump took its baseline: a socket in that dump
                    // without an eBPF record predates the probe and counts from its reading
                    // there, and one that closes before it without one is not counted (see
                    // `Collector::drain`). Traffic started after "running" is counted whole.
                    ctx.state.running();
                }
                first = false;
                collect_seconds.set(started.elapsed().as_secs_f64());
                let map_full = programs.links_full();
                links_full.add(map_full.saturating_sub(links_full_seen));
                links_full_seen = links_full_seen.max(map_full);
                publish_run_stats(&ctx.metrics, &programs);
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::probes::tcp::links::LinkRow;
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
            send_rsts: 1,
            receive_rsts: 2,
            // One open connection at 40 µs: the store takes the histogram as it takes a
            // parsed one.
            srtt_hist: Some([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            srtt_sum_us: 40,
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
        assert_eq!(
            store.apply(delta(vec![], &[gone], true, false, false), 2),
            0
        );
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
        // The last three: the reset counters and the histogram's text form.
        assert_eq!(
            row[row.len() - 3..],
            [
                "1",
                "2",
                "50=1 100=1 250=1 500=1 1000=1 2500=1 5000=1 10000=1 25000=1 50000=1 \
                 100000=1 250000=1 +Inf=1 sum=40"
            ]
        );
        assert_eq!(
            store.table(TABLE).unwrap().max_records,
            Some(policy.max_rows() as usize)
        );
    }
}
