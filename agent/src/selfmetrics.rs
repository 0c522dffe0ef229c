//! The agent's own metrics (`gopher_*`).
//!
//! Every family is declared once, in [`SelfMetrics::new`], so the full list (and its HELP text)
//! lives in one place. Hot paths ask for a handle once ([`SelfMetrics::counter`],
//! [`SelfMetrics::gauge`]) and then only touch an atomic. The registry lock is taken only to
//! create, remove or render series.
//!
//! Store-derived families (rows ingested/dropped, records, tables) are not bumped by the store:
//! [`sync_from_store`] copies the store's cumulative numbers in at scrape time, which keeps the
//! imdb free of metrics code.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::egress::prometheus::{write_f64, write_help, write_label_value};
use crate::imdb::Store;

pub const BUILD_INFO: &str = "gopher_build_info";
pub const PROBE_STATE: &str = "gopher_probe_state";
pub const PROBE_RESTARTS: &str = "gopher_probe_restarts_total";
pub const PROBE_PANICS: &str = "gopher_probe_panics_total";
pub const TASK_RESTARTS: &str = "gopher_task_restarts_total";
pub const ROWS_INGESTED: &str = "gopher_rows_ingested_total";
pub const ROWS_DROPPED: &str = "gopher_rows_dropped_total";
pub const EBPF_EVENTS_LOST: &str = "gopher_ebpf_events_lost_total";
pub const EBPF_MAP_FULL: &str = "gopher_ebpf_map_full_total";
pub const PROBE_ERRORS: &str = "gopher_probe_errors_total";
pub const PROBE_LAST_FAILURE: &str = "gopher_probe_last_failure_info";
pub const PROBE_ROWS: &str = "gopher_probe_rows_total";
pub const PROBE_ROWS_REJECTED: &str = "gopher_probe_rows_rejected_total";
pub const PROBE_LINES_IGNORED: &str = "gopher_probe_lines_ignored_total";
pub const START_CHECK_FAILURES: &str = "gopher_start_check_failures_total";
pub const SCRAPE_DURATION: &str = "gopher_scrape_duration_seconds";
pub const SCRAPE_RENDERS: &str = "gopher_scrape_renders_total";
pub const SCRAPES: &str = "gopher_scrapes_total";
pub const IMDB_RECORDS: &str = "gopher_imdb_records";
pub const IMDB_TABLES: &str = "gopher_imdb_tables";
pub const FAMILIES_SKIPPED: &str = "gopher_prometheus_families_skipped";
pub const KAFKA_QUEUED: &str = "gopher_kafka_queued_total";
pub const KAFKA_DELIVERED: &str = "gopher_kafka_delivered_total";
pub const KAFKA_FAILED: &str = "gopher_kafka_failed_total";
pub const KAFKA_DROPPED: &str = "gopher_kafka_dropped_total";
pub const KAFKA_QUEUE_MESSAGES: &str = "gopher_kafka_queue_messages";
pub const CONTROL_REQUESTS: &str = "gopher_control_requests_total";
pub const CONFIG_RELOADS: &str = "gopher_config_reloads_total";
pub const PROBE_COLLECT_SECONDS: &str = "gopher_probe_collect_seconds";
pub const TCP_LINKS_AGGREGATED: &str = "gopher_tcp_links_aggregated_total";
pub const TCP_SOCKETS_EXCLUDED: &str = "gopher_tcp_sockets_excluded_total";
pub const TCP_NETNS_ERRORS: &str = "gopher_tcp_netns_errors_total";
pub const TCP_SOCKET_SOURCE: &str = "gopher_tcp_socket_source";

/// The reasons the table store refuses a row of a registered table for (`ImdbError::reason`),
/// whose `gopher_rows_dropped_total` series are shown at 0 before the first drop.
const ROW_REFUSALS: [&str; 3] = ["field_count", "bad_value", "record_limit"];

/// The values of `gopher_probe_state{state}`; exactly one is 1 per probe.
pub const PROBE_STATES: [&str; 4] = ["stopped", "starting", "running", "failed"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// A monotonically increasing count. Cloning shares the cell.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down; the f64 is stored as its bit pattern.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    /// Keyed by label values in `labels` order, which is also the render order.
    series: BTreeMap<Box<[String]>, Arc<AtomicU64>>,
}

pub struct SelfMetrics {
    families: Mutex<Vec<Family>>,
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SelfMetrics {
    // One flat list of declarations: splitting it would scatter the catalogue.
    #[allow(clippy::too_many_lines)]
    pub fn new() -> Self {
        use Kind::{Counter, Gauge};
        let declared: [(&'static str, Kind, &'static [&'static str], &'static str); 33] = [
            (
                CONTROL_REQUESTS,
                Counter,
                &["method", "code"],
                "Control channel (gRPC) calls by method and outcome (ok, not_found, invalid_argument, unauthenticated, ...).",
            ),
            (
                CONFIG_RELOADS,
                Counter,
                &["result"],
                "Configuration reloads (SIGHUP): ok, or error when the new file was refused and the old one kept.",
            ),
            (
                BUILD_INFO,
                Gauge,
                &["version"],
                "Always 1; the label carries the agent's version.",
            ),
            (
                PROBE_STATE,
                Gauge,
                &["probe", "state"],
                "1 for the probe's current lifecycle state (stopped, starting, running, failed), 0 for the others.",
            ),
            (
                PROBE_RESTARTS,
                Counter,
                &["probe"],
                "Times the supervisor restarted the probe after it ended on its own (exit, crash, error).",
            ),
            (
                PROBE_PANICS,
                Counter,
                &["probe"],
                "Times a probe's code panicked; the supervisor counts it as a failure and restarts the probe.",
            ),
            (
                TASK_RESTARTS,
                Counter,
                &["task"],
                "Times one of the agent's own tasks (web, ingest, kafka) panicked or ended unexpectedly and was restarted.",
            ),
            (
                ROWS_INGESTED,
                Counter,
                &["table"],
                "Rows accepted into the in-memory table store.",
            ),
            (
                ROWS_DROPPED,
                Counter,
                &["table", "reason"],
                "Rows refused by the table store, and records aged out of it (reason=\"expired\").",
            ),
            (
                EBPF_EVENTS_LOST,
                Counter,
                &["probe"],
                "eBPF events the kernel could not deliver to the agent.",
            ),
            (
                EBPF_MAP_FULL,
                Counter,
                &["probe", "map"],
                "Inserts an eBPF map refused because it was full (tcp, links: sockets tracked without their owner; a socket can count at connect and again at the handshake).",
            ),
            (
                PROBE_ERRORS,
                Counter,
                &["probe"],
                "Errors a running probe hit and carried on from (a failed sock_diag dump, say).",
            ),
            (
                PROBE_LAST_FAILURE,
                Gauge,
                &["probe", "reason"],
                "Always 1; the reason label says why the probe last ended on its own (exit status, signal, last stderr line).",
            ),
            (
                PROBE_COLLECT_SECONDS,
                Gauge,
                &["probe"],
                "Seconds the probe's last collection took (tcp: sock_diag dumps of every namespace, owners, ageing).",
            ),
            (
                TCP_LINKS_AGGREGATED,
                Counter,
                &[],
                "TCP sockets folded into an aggregate tcp_link row (client_ip 0.0.0.0 or ::) because the probe's max_series links existed.",
            ),
            (
                TCP_SOCKETS_EXCLUDED,
                Counter,
                &[],
                "TCP sockets left out of tcp_link by the probe's include/exclude filters (ports, CIDRs, processes).",
            ),
            (
                TCP_NETNS_ERRORS,
                Counter,
                &["reason"],
                "Network namespaces the tcp probe could not read: open (no sock_diag socket in it) or dump (the dump failed); their sockets are kept, not declared gone.",
            ),
            (
                TCP_SOCKET_SOURCE,
                Gauge,
                &["source"],
                "1 for where the tcp probe reads live sockets from: iterator (the eBPF iter/tcp program) or sock_diag (the fallback when the iterator cannot load, or socket_iterator = false).",
            ),
            (
                PROBE_ROWS,
                Counter,
                &["probe"],
                "Rows a probe sent to the table store (for extension probes: lines that passed the format checks).",
            ),
            (
                PROBE_ROWS_REJECTED,
                Counter,
                &["probe", "reason"],
                "Lines an extension probe printed as rows that were refused (not_utf8, too_long, malformed, unknown_table, field_count, bad_value).",
            ),
            (
                PROBE_LINES_IGNORED,
                Counter,
                &["probe"],
                "Lines an extension probe printed that do not start with '|' and so are not rows.",
            ),
            (
                START_CHECK_FAILURES,
                Counter,
                &["probe", "reason"],
                "Start checks of switch=auto probes that gave no answer (timeout, spawn, bad_output, killed).",
            ),
            (
                SCRAPE_DURATION,
                Gauge,
                &[],
                "Seconds the previous scrape spent taking the snapshot and rendering it.",
            ),
            (
                SCRAPE_RENDERS,
                Counter,
                &[],
                "Renders of /metrics. Scrapes that arrive while one is in progress share it, so this grows slower than gopher_scrapes_total under concurrent scrapes.",
            ),
            (
                SCRAPES,
                Counter,
                &["encoding"],
                "GET requests for /metrics answered, by response encoding (identity, gzip).",
            ),
            (
                IMDB_RECORDS,
                Gauge,
                &["table"],
                "Records currently held per table.",
            ),
            (IMDB_TABLES, Gauge, &[], "Tables currently registered."),
            (
                FAMILIES_SKIPPED,
                Gauge,
                &[],
                "Metric families left out of the last scrape because their name clashed with an earlier family.",
            ),
            (
                KAFKA_QUEUED,
                Counter,
                &[],
                "Kafka messages (records and table definitions) accepted into the producer queue.",
            ),
            (
                KAFKA_DELIVERED,
                Counter,
                &[],
                "Kafka messages the broker acknowledged.",
            ),
            (
                KAFKA_FAILED,
                Counter,
                &["reason"],
                "Queued Kafka messages whose delivery failed after the producer's retries (timeout, unknown_topic, too_large, other).",
            ),
            (
                KAFKA_DROPPED,
                Counter,
                &["reason"],
                "Kafka messages never queued (queue_full, too_large, unknown_topic, other) or still queued when shutdown's wait ran out (shutdown).",
            ),
            (
                KAFKA_QUEUE_MESSAGES,
                Gauge,
                &[],
                "Kafka messages in the producer queue (waiting or in flight), sampled every egress interval.",
            ),
        ];
        let families = declared
            .into_iter()
            .map(|(name, kind, labels, help)| Family {
                name,
                help,
                kind,
                labels,
                series: BTreeMap::new(),
            })
            .collect();
        let metrics = Self {
            families: Mutex::new(families),
        };
        metrics
            .gauge(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))])
            .set(1.0);
        metrics
    }

    /// The counter series `name{labels}`; the same (name, labels) always yields the same cell.
    /// Labels may come in any order but must be exactly the family's declared ones.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Counter {
        Counter(self.cell(name, Kind::Counter, labels))
    }

    /// The gauge series `name{labels}`; see [`SelfMetrics::counter`].
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Gauge {
        Gauge(self.cell(name, Kind::Gauge, labels))
    }

    /// Unknown families, wrong kinds and wrong label sets are programming errors: they fail
    /// debug builds and get a detached cell (counted nowhere) in release builds, because a
    /// metrics typo must not take the agent down.
    fn cell(&self, name: &str, kind: Kind, labels: &[(&str, &str)]) -> Arc<AtomicU64> {
        let mut families = self.lock();
        let found = families
            .iter_mut()
            .find(|f| f.name == name && f.kind == kind)
            .and_then(|f| {
                let key = key_for(f.labels, labels)?;
                Some(Arc::clone(f.series.entry(key).or_default()))
            });
        debug_assert!(
            found.is_some(),
            "undeclared self-metric {name} ({kind:?}) {labels:?}"
        );
        found.unwrap_or_else(|| {
            tracing::warn!(
                name,
                ?labels,
                "undeclared self-metric series; updates are discarded"
            );
            Arc::default()
        })
    }

    /// Removes one series; handles to it keep working but are no longer rendered.
    pub fn remove(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        let mut families = self.lock();
        families
            .iter_mut()
            .find(|f| f.name == name)
            .and_then(|f| f.series.remove(&key_for(f.labels, labels)?))
            .is_some()
    }

    /// Removes every series, in every family, whose `label` equals `value` (e.g. all of a
    /// removed probe's series). Returns how many went.
    pub fn remove_matching(&self, label: &str, value: &str) -> usize {
        let mut removed = 0;
        for family in self.lock().iter_mut() {
            let Some(i) = family.labels.iter().position(|l| *l == label) else {
                continue;
            };
            let before = family.series.len();
            family.series.retain(|key, _| key[i] != value);
            removed += before - family.series.len();
        }
        removed
    }

    /// Sets a one-hot state gauge: `name{labels, state_label=s}` is 1 for `s == current` and 0
    /// for the other `states`.
    pub fn set_one_hot(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        state_label: &str,
        states: &[&str],
        current: &str,
    ) {
        let mut with_state = labels.to_vec();
        with_state.push((state_label, ""));
        let last = with_state.len() - 1;
        for state in states {
            with_state[last].1 = state;
            self.gauge(name, &with_state)
                .set(if *state == current { 1.0 } else { 0.0 });
        }
    }

    /// `state` should be one of [`PROBE_STATES`]; anything else leaves all of them at 0.
    pub fn set_probe_state(&self, probe: &str, state: &str) {
        if !PROBE_STATES.contains(&state) {
            tracing::warn!(probe, state, "unknown probe state for {PROBE_STATE}");
        }
        self.set_one_hot(
            PROBE_STATE,
            &[("probe", probe)],
            "state",
            &PROBE_STATES,
            state,
        );
    }

    /// Drops every series labelled with this probe (its state, restarts, lost events).
    pub fn forget_probe(&self, probe: &str) -> usize {
        self.remove_matching("probe", probe)
    }

    /// Sets the family's series to exactly `entries` (label values in declared order, raw
    /// cell bits) when `replace`, or adds/overwrites them otherwise.
    fn mirror(&self, name: &str, entries: Vec<(Box<[String]>, u64)>, replace: bool) {
        let mut families = self.lock();
        let Some(family) = families.iter_mut().find(|f| f.name == name) else {
            return;
        };
        if replace {
            family
                .series
                .retain(|key, _| entries.iter().any(|(k, _)| k == key));
        }
        for (key, bits) in entries {
            family
                .series
                .entry(key)
                .or_default()
                .store(bits, Ordering::Relaxed);
        }
    }

    /// Appends every family that has at least one series, in declaration order, in the
    /// Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        for family in self.lock().iter() {
            if family.series.is_empty() {
                continue;
            }
            let _ = write!(out, "# HELP {} ", family.name);
            write_help(out, family.help);
            let _ = writeln!(out, "\n# TYPE {} {}", family.name, family.kind.as_str());
            for (values, cell) in &family.series {
                out.push_str(family.name);
                if !values.is_empty() {
                    out.push('{');
                    for (i, (label, value)) in family.labels.iter().zip(values.iter()).enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(label);
                        out.push_str("=\"");
                        write_label_value(out, value);
                        out.push('"');
                    }
                    out.push('}');
                }
                out.push(' ');
                let bits = cell.load(Ordering::Relaxed);
                match family.kind {
                    Kind::Counter => {
                        let _ = write!(out, "{bits}");
                    }
                    Kind::Gauge => write_f64(out, f64::from_bits(bits)),
                }
                out.push('\n');
            }
        }
    }

    /// A panic elsewhere while holding the lock leaves plain data behind; keep serving it.
    fn lock(&self) -> MutexGuard<'_, Vec<Family>> {
        self.families.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Orders `given` by `declared`; `None` unless the label names match exactly.
fn key_for(declared: &[&str], given: &[(&str, &str)]) -> Option<Box<[String]>> {
    if declared.len() != given.len() {
        return None;
    }
    declared
        .iter()
        .map(|name| {
            given
                .iter()
                .find(|(l, _)| l == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .collect()
}

/// Copies the store's cumulative counters and current sizes into the `gopher_*` families.
/// Call with the store locked, right before rendering.
pub fn sync_from_store(store: &Store, metrics: &SelfMetrics) {
    let one = |s: String| -> Box<[String]> { Box::new([s]) };
    let ingested = store
        .ingested()
        .into_iter()
        .map(|(t, n)| (one(t), n))
        .collect();
    metrics.mirror(ROWS_INGESTED, ingested, false);
    let counts = store.record_counts();
    // Every registered table's row refusals exist from the start, at 0, so that increase() in
    // the shipped alert sees the very first drop (a series born at 1 shows no increase).
    let mut drops: BTreeMap<Box<[String]>, u64> = counts
        .iter()
        .flat_map(|(t, _)| {
            ROW_REFUSALS
                .iter()
                .map(|r| (Box::from([t.clone(), (*r).to_owned()]), 0))
        })
        .collect();
    for (t, reason, n) in store.drops() {
        drops.insert(Box::from([t, reason.to_owned()]), n);
    }
    metrics.mirror(ROWS_DROPPED, drops.into_iter().collect(), false);
    metrics.gauge(IMDB_TABLES, &[]).set(counts.len() as f64);
    let records = counts
        .into_iter()
        .map(|(t, n)| (one(t), (n as f64).to_bits()))
        .collect();
    metrics.mirror(IMDB_RECORDS, records, true);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::imdb::{FieldMeta, FieldType, Limits, Row, TableMeta};

    fn rendered(m: &SelfMetrics) -> String {
        let mut out = String::new();
        m.render(&mut out);
        out
    }

    #[test]
    fn same_series_shares_a_cell_regardless_of_label_order() {
        let m = SelfMetrics::new();
        let a = m.counter(ROWS_DROPPED, &[("table", "t"), ("reason", "x")]);
        let b = m.counter(ROWS_DROPPED, &[("reason", "x"), ("table", "t")]);
        a.inc();
        b.add(2);
        assert_eq!(a.get(), 3);
        let g = m.gauge(SCRAPE_DURATION, &[]);
        g.set(0.25);
        assert!((m.gauge(SCRAPE_DURATION, &[]).get() - 0.25).abs() < f64::EPSILON);
    }

    #[test]
    fn renders_declared_families_in_order_with_escaping() {
        let m = SelfMetrics::new();
        m.counter(PROBE_RESTARTS, &[("probe", "a\"b\\c\nd")]).add(7);
        m.gauge(SCRAPE_DURATION, &[]).set(0.5);
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            rendered(&m),
            format!(
                "# HELP gopher_build_info Always 1; the label carries the agent's version.\n\
                 # TYPE gopher_build_info gauge\n\
                 gopher_build_info{{version=\"{version}\"}} 1\n\
                 # HELP gopher_probe_restarts_total Times the supervisor restarted the probe after it ended on its own (exit, crash, error).\n\
                 # TYPE gopher_probe_restarts_total counter\n\
                 gopher_probe_restarts_total{{probe=\"a\\\"b\\\\c\\nd\"}} 7\n\
                 # HELP gopher_scrape_duration_seconds Seconds the previous scrape spent taking the snapshot and rendering it.\n\
                 # TYPE gopher_scrape_duration_seconds gauge\n\
                 gopher_scrape_duration_seconds 0.5\n"
            )
        );
    }

    #[test]
    fn probe_state_is_one_hot_and_removable() {
        let m = SelfMetrics::new();
        m.set_probe_state("tcp", "starting");
        m.set_probe_state("tcp", "running");
        m.counter(PROBE_RESTARTS, &[("probe", "tcp")]).inc();
        let out = rendered(&m);
        assert!(out.contains("gopher_probe_state{probe=\"tcp\",state=\"running\"} 1\n"));
        assert!(out.contains("gopher_probe_state{probe=\"tcp\",state=\"starting\"} 0\n"));
        assert_eq!(out.matches("gopher_probe_state{").count(), 4);
        assert_eq!(m.forget_probe("tcp"), 5);
        assert!(!rendered(&m).contains("tcp"));
        m.counter(PROBE_RESTARTS, &[("probe", "x")]).inc();
        assert!(m.remove(PROBE_RESTARTS, &[("probe", "x")]));
        assert!(!m.remove(PROBE_RESTARTS, &[("probe", "x")]));
    }

    #[test]
    fn mirrors_the_store() {
        let mut store = Store::new(Limits {
            max_records: 1,
            ..Limits::default()
        });
        let meta = TableMeta {
            name: "t".into(),
            description: String::new(),
            fields: vec![FieldMeta {
                name: "k".into(),
                ty: FieldType::Key,
                description: String::new(),
            }],
            max_records: None,
        };
        store.register(meta).unwrap();
        let row = |k: &str| Row {
            table: "t".into(),
            values: vec![k.into()],
        };
        store.upsert(row("a"), 0).unwrap();
        store.upsert(row("a"), 0).unwrap();
        let _ = store.upsert(row("b"), 0);
        let m = SelfMetrics::new();
        sync_from_store(&store, &m);
        let out = rendered(&m);
        assert!(
            out.contains("gopher_rows_ingested_total{table=\"t\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("gopher_rows_dropped_total{table=\"t\",reason=\"record_limit\"} 1\n"));
        assert!(out.contains("gopher_imdb_records{table=\"t\"} 1\n"));
        assert!(out.contains("gopher_imdb_tables 1\n"));
        store.unregister("t");
        sync_from_store(&store, &m);
        let out = rendered(&m);
        assert!(!out.contains("gopher_imdb_records{"), "{out}");
        assert!(out.contains("gopher_imdb_tables 0\n"));
        assert!(out.contains("gopher_rows_ingested_total{table=\"t\"} 2\n"));
    }
}
