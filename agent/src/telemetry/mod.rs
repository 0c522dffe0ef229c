//! The agent's own metrics (`gopher_*`): a registry of typed counters and gauges.
//!
//! Every family is declared once, in [`catalog`], so the full list (and its HELP text) lives
//! in one place. Hot paths ask for a handle once ([`SelfMetrics::counter`],
//! [`SelfMetrics::gauge`]) and then only touch an atomic. The registry lock is taken only to
//! create, remove or read out series.
//!
//! This module imports neither the store nor any sink: sinks read the typed values out
//! ([`SelfMetrics::visit`]) and encode them themselves (the Prometheus text is written by
//! `egress::prometheus`, which also implements `SelfMetrics::render`). Store-derived families
//! (rows ingested/dropped, records, tables) are copied in from the store's own counts by
//! `egress::store_counts::sync_from_store`, which keeps the imdb free of metrics code.

mod catalog;
pub mod process;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use catalog::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// A counter of fractional values mirrored from elsewhere (CPU seconds from /proc): set,
    /// never incremented; its samples are [`Sample::Gauge`] (a float) under the counter type.
    FloatCounter,
}

impl Kind {
    /// The family's type as the exposition formats spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter | Self::FloatCounter => "counter",
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

/// One declared family and its series.
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    /// Keyed by label values in `labels` order, which is also the render order.
    series: BTreeMap<Box<[String]>, Arc<AtomicU64>>,
}

impl Family {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn help(&self) -> &'static str {
        self.help
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Label names, in the order of each series' values.
    pub fn labels(&self) -> &'static [&'static str] {
        self.labels
    }

    /// Each series' label values (in [`Family::labels`] order) and value, sorted by labels.
    pub fn series(&self) -> impl Iterator<Item = (&[String], Sample)> {
        self.series.iter().map(|(values, cell)| {
            let bits = cell.load(Ordering::Relaxed);
            let sample = match self.kind {
                Kind::Counter => Sample::Counter(bits),
                Kind::Gauge | Kind::FloatCounter => Sample::Gauge(f64::from_bits(bits)),
            };
            (&values[..], sample)
        })
    }
}

/// A series' current value, typed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    Counter(u64),
    /// A float: a gauge's value, or a [`Kind::FloatCounter`]'s.
    Gauge(f64),
}

/// The registry of the agent's own metrics.
pub struct SelfMetrics {
    families: Mutex<Vec<Family>>,
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SelfMetrics {
    pub fn new() -> Self {
        let declared = catalog::declared();
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
            .gauge(
                BUILD_INFO,
                &[
                    ("version", env!("CARGO_PKG_VERSION")),
                    // Set by build.rs: `git rev-parse`, GOPHER_REVISION, or "unknown".
                    ("revision", env!("GOPHER_REVISION")),
                ],
            )
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

    /// The float counter series `name{labels}` (a [`Gauge`] handle: set to the count kept
    /// elsewhere, which only grows); see [`SelfMetrics::counter`].
    pub fn float_counter(&self, name: &str, labels: &[(&str, &str)]) -> Gauge {
        Gauge(self.cell(name, Kind::FloatCounter, labels))
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

    /// Sets the counter family's series to `entries` (label values in declared order), adding
    /// or overwriting them: for counts kept elsewhere (the table store's), copied in.
    pub fn mirror_counters(&self, name: &str, entries: Vec<(Box<[String]>, u64)>) {
        self.mirror(name, entries, false);
    }

    /// Sets the gauge family's series to exactly `entries` (label values in declared order):
    /// series not among them are removed.
    pub fn mirror_gauges(&self, name: &str, entries: Vec<(Box<[String]>, f64)>) {
        let entries = entries.into_iter().map(|(k, v)| (k, v.to_bits())).collect();
        self.mirror(name, entries, true);
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

    /// Calls `f` with every family that has at least one series, in declaration order, the
    /// registry locked meanwhile: for sinks, which encode the values.
    pub fn visit(&self, mut f: impl FnMut(&Family)) {
        for family in self.lock().iter().filter(|f| !f.series.is_empty()) {
            f(family);
        }
    }

    /// The rows `probe` sent to the table store so far (`gopher_probe_rows_total`), read
    /// without creating the series: for the control API's probe views.
    pub fn probe_rows(&self, probe: &str) -> u64 {
        self.lock()
            .iter()
            .find(|f| f.name == PROBE_ROWS)
            .and_then(|f| f.series.get([probe.to_owned()].as_slice()))
            .map_or(0, |cell| cell.load(Ordering::Relaxed))
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

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
    fn typed_values_read_out_without_creating_series() {
        let m = SelfMetrics::new();
        assert_eq!(m.probe_rows("tcp"), 0);
        m.counter(PROBE_ROWS, &[("probe", "tcp")]).add(5);
        m.gauge(SCRAPE_DURATION, &[]).set(0.5);
        assert_eq!(m.probe_rows("tcp"), 5);
        assert_eq!(m.probe_rows("other"), 0);
        let mut seen = Vec::new();
        m.visit(|f| {
            for (labels, sample) in f.series() {
                seen.push((f.name(), labels.to_vec(), sample));
            }
        });
        let version = env!("CARGO_PKG_VERSION").to_owned();
        assert_eq!(
            seen,
            [
                (
                    BUILD_INFO,
                    vec![version, env!("GOPHER_REVISION").to_owned()],
                    Sample::Gauge(1.0)
                ),
                (PROBE_ROWS, vec!["tcp".to_owned()], Sample::Counter(5)),
                (SCRAPE_DURATION, vec![], Sample::Gauge(0.5)),
            ]
        );
    }
}
