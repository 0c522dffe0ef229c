//! Starts, supervises and stops probes, and publishes their state.
//!
//! Every started probe runs under a supervisor task. When the probe's future ends without
//! having been asked to stop (an extension program exited or crashed, a native probe returned
//! an error), the supervisor restarts it after a back-off that doubles from
//! [`Policy::backoff_initial`] to [`Policy::backoff_max`]. A run that lasted
//! [`Policy::stable_after`] resets the back-off and the count of quick failures; after
//! [`Policy::max_quick_failures`] quick failures in a row the probe is `failed`, with the
//! reason, until someone starts it again.
//!
//! A probe whose code panics is treated the same way: the panic is caught at the supervisor
//! ([`CatchUnwind`]), its message becomes the failure reason, `gopher_probe_panics_total{probe}`
//! counts it and the usual back-off applies. Each supervisor task also beats a heartbeat
//! ([`Manager::liveness`]) on every poll, so a probe that blocks its worker thread stops the
//! systemd watchdog's pings.
//!
//! The manager holds the agent's one map of probes: for each, what it is (its definition), what
//! it is set to (as configured and as changed at runtime), its implementation, its supervisor
//! task and start-check task, and its live status. The controller (`super::controller`) decides
//! changes; the manager keeps the record and runs the tasks.
//!
//! The manager is a cheap handle (clone it): start-check tasks start and stop probes through
//! their own clone while the agent holds another.

mod supervised;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{
    sync::{broadcast, mpsc, watch},
    task::JoinHandle,
};

mod status;

use status::{Cell, set};
pub use status::{State, StateHandle, Status};
use supervised::Supervised;
// The restart policy is the agent's, for its own tasks too.
pub use crate::supervise::Policy;

use super::{
    Probe,
    settings::{Definition, Params, ProbeKind, Settings, Switch},
};
use crate::{
    imdb::Batch,
    supervise::{Beating, Liveness, STALL_BOUND, TICK},
    telemetry::{Counter, PROBE_PANICS, PROBE_ROWS, SelfMetrics},
};
#[cfg(test)]
use {
    crate::{probes::ProbeContext, telemetry::PROBE_RESTARTS},
    std::time::Instant,
};

/// How many state changes a slow watcher may fall behind before it is told it lagged.
const CHANGES_BACKLOG: usize = 256;

/// A task the manager runs for a probe, with the sender that tells it to stop.
type Task = (watch::Sender<bool>, JoinHandle<()>);

/// One probe: everything the agent knows and runs for it.
struct Slot {
    definition: Definition,
    /// As the configuration file says.
    configured: Settings,
    /// As in effect (the configuration plus runtime changes); its interval is the one the
    /// supervisor runs the probe at.
    current: Settings,
    probe: Arc<dyn Probe>,
    task: Option<Task>,
    /// `switch = "auto"`: the start check deciding whether the probe runs.
    check: Option<Task>,
    state: Cell,
    /// Rows the probe sent (`gopher_probe_rows_total{probe}`), from its first start.
    rows: Option<Counter>,
}

/// A probe as the control channel shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub name: String,
    pub kind: ProbeKind,
    pub settings: Settings,
    /// Settings differ from the configuration file's.
    pub overridden: bool,
    pub status: Status,
    pub rows: u64,
    /// Extension probes: the configured command.
    pub command: String,
    pub tables: Vec<String>,
}

/// What every supervisor task shares.
struct Shared {
    probes: Mutex<BTreeMap<String, Slot>>,
    rows: mpsc::Sender<Batch>,
    metrics: Arc<SelfMetrics>,
    record_timeout: Duration,
    policy: Policy,
    changes: broadcast::Sender<String>,
    liveness: Liveness,
}

#[derive(Clone)]
pub struct Manager {
    inner: Arc<Shared>,
}

impl Manager {
    pub fn new(
        rows: mpsc::Sender<Batch>,
        metrics: Arc<SelfMetrics>,
        record_timeout: Duration,
    ) -> Self {
        Self::with_policy(rows, metrics, record_timeout, Policy::default())
    }

    pub fn with_policy(
        rows: mpsc::Sender<Batch>,
        metrics: Arc<SelfMetrics>,
        record_timeout: Duration,
        policy: Policy,
    ) -> Self {
        Self {
            inner: Arc::new(Shared {
                probes: Mutex::new(BTreeMap::new()),
                rows,
                metrics,
                record_timeout,
                policy,
                changes: broadcast::channel(CHANGES_BACKLOG).0,
                liveness: Liveness::new(),
            }),
        }
    }

    /// The heartbeats of the probes' supervisors (`probe <name>`, one per started probe, gone
    /// when it stops). The agent registers its other loops here too, and the watchdog checks
    /// them all.
    pub fn liveness(&self) -> Liveness {
        self.inner.liveness.clone()
    }

    /// The probe map holds plain data; a panic elsewhere while holding the lock leaves it usable.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Slot>> {
        self.inner
            .probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a probe, stopped, as a native probe switched off at `interval` (for probes run
    /// without a configuration: tests, tools).
    pub fn add(&self, probe: Arc<dyn Probe>, interval: Duration) {
        let definition = Definition {
            kind: ProbeKind::Native,
            tables: probe.tables().into_iter().map(|t| t.name).collect(),
            extension: None,
            native_check: None,
        };
        let settings = Settings {
            switch: Switch::Off,
            interval,
            params: Params::Native(toml::Table::new()),
        };
        self.define(probe, definition, settings);
    }

    /// Registers a probe, stopped, with what it is and what the configuration sets it to.
    pub fn define(&self, probe: Arc<dyn Probe>, definition: Definition, settings: Settings) {
        let name = probe.name().to_owned();
        self.inner
            .metrics
            .set_probe_state(&name, State::Stopped.as_str());
        // At 0 from the start, so that the first panic shows in increase().
        self.inner
            .metrics
            .counter(PROBE_PANICS, &[("probe", name.as_str())]);
        let state = Cell {
            status: Arc::new(Mutex::new(Status::new())),
            changes: self.inner.changes.clone(),
        };
        self.lock().insert(
            name.clone(),
            Slot {
                definition,
                configured: settings.clone(),
                current: settings,
                probe,
                task: None,
                check: None,
                state,
                rows: None,
            },
        );
        let _ = self.inner.changes.send(name);
    }

    /// Swaps a stopped probe's implementation and interval (new params), keeping its status.
    pub fn replace(&self, probe: Arc<dyn Probe>, interval: Duration) -> anyhow::Result<()> {
        let mut probes = self.lock();
        let name = probe.name().to_owned();
        let slot = probes
            .get_mut(&name)
            .ok_or_else(|| anyhow::anyhow!("no probe named {name:?}"))?;
        if slot.task.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            anyhow::bail!("probe {name:?} must be stopped before it is replaced");
        }
        slot.probe = probe;
        slot.current.interval = interval;
        Ok(())
    }

    /// Forgets a stopped probe (it left the configuration).
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        let mut probes = self.lock();
        let slot = probes
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no probe named {name:?}"))?;
        if slot.task.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            anyhow::bail!("probe {name:?} must be stopped before it is removed");
        }
        probes.remove(name);
        drop(probes);
        self.inner.metrics.forget_probe(name);
        let _ = self.inner.changes.send(name.to_owned());
        Ok(())
    }

    /// Names of probes whose status changed, as they change. A receiver that lags gets
    /// `Lagged` and should re-read every status.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.inner.changes.subscribe()
    }

    /// The probe's full status.
    pub fn status(&self, name: &str) -> Option<Status> {
        self.lock().get(name).map(|s| s.state.get())
    }

    pub fn interval(&self, name: &str) -> Option<Duration> {
        self.lock().get(name).map(|s| s.current.interval)
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The probe's state and, for `failed` (or a pending restart), why.
    pub fn state(&self, name: &str) -> Option<(State, String)> {
        self.status(name).map(|s| (s.state, s.reason))
    }

    /// The probe as the control channel shows it.
    pub fn view(&self, name: &str) -> Option<View> {
        self.lock().get(name).map(|s| view(name, s))
    }

    /// Every probe, by name.
    pub fn views(&self) -> Vec<View> {
        self.lock().iter().map(|(n, s)| view(n, s)).collect()
    }

    pub fn definition(&self, name: &str) -> Option<Definition> {
        self.lock().get(name).map(|s| s.definition.clone())
    }

    /// Replaces what the probe is (a reload changed its definition); returns the old one.
    pub fn redefine(&self, name: &str, definition: Definition) -> Option<Definition> {
        self.lock()
            .get_mut(name)
            .map(|s| std::mem::replace(&mut s.definition, definition))
    }

    /// As configured, and as in effect.
    pub fn settings(&self, name: &str) -> Option<(Settings, Settings)> {
        self.lock()
            .get(name)
            .map(|s| (s.configured.clone(), s.current.clone()))
    }

    /// Every probe's settings, as configured and as in effect.
    pub fn all_settings(&self) -> Vec<(String, Settings, Settings)> {
        self.lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.configured.clone(), s.current.clone()))
            .collect()
    }

    /// Records the settings in effect (what readers see; the probe is not touched).
    pub fn set_current(&self, name: &str, settings: Settings) {
        if let Some(s) = self.lock().get_mut(name) {
            s.current = settings;
        }
    }

    /// Records the configuration's settings for the probe (a reload).
    pub fn set_configured(&self, name: &str, settings: Settings) {
        if let Some(s) = self.lock().get_mut(name) {
            s.configured = settings;
        }
    }

    /// Keeps the probe's start-check task (its stop sender and handle).
    pub fn set_check(&self, name: &str, check: (watch::Sender<bool>, JoinHandle<()>)) {
        if let Some(s) = self.lock().get_mut(name) {
            s.check = Some(check);
        }
    }

    /// Takes the probe's start-check task, to stop it.
    pub fn take_check(&self, name: &str) -> Option<(watch::Sender<bool>, JoinHandle<()>)> {
        self.lock().get_mut(name).and_then(|s| s.check.take())
    }

    /// Takes every start-check task (shutdown).
    pub fn take_checks(&self) -> Vec<(watch::Sender<bool>, JoinHandle<()>)> {
        self.lock()
            .values_mut()
            .filter_map(|s| s.check.take())
            .collect()
    }

    /// Starts a probe under supervision (no-op if its supervisor is active, back-off included).
    /// The probe reports `running` once its start-up worked.
    pub fn start(&self, name: &str) -> anyhow::Result<()> {
        let mut probes = self.lock();
        let slot = probes
            .get_mut(name)
            .ok_or_else(|| anyhow::anyhow!("no probe named {name:?}"))?;
        if slot.task.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            return Ok(());
        }
        // The probe creates the same series when it counts; held here for the view.
        slot.rows
            .get_or_insert_with(|| self.inner.metrics.counter(PROBE_ROWS, &[("probe", name)]));
        let (stop_tx, stop_rx) = watch::channel(false);
        let run = Supervised {
            name: name.to_owned(),
            probe: Arc::clone(&slot.probe),
            interval: slot.current.interval,
            cell: slot.state.clone(),
            rows: self.inner.rows.clone(),
            metrics: Arc::clone(&self.inner.metrics),
            record_timeout: self.inner.record_timeout,
            policy: self.inner.policy,
        };
        set(&slot.state, &self.inner.metrics, name, State::Starting, "");
        let heartbeat = self
            .inner
            .liveness
            .register(format!("probe {name}"), STALL_BOUND);
        let handle = tokio::spawn(Beating::new(run.supervise(stop_rx), heartbeat, TICK));
        slot.task = Some((stop_tx, handle));
        Ok(())
    }
    /// Stops a probe and waits (bounded) for it to release what it holds.
    pub async fn stop(&self, name: &str) -> anyhow::Result<()> {
        let (task, cell) = {
            let mut probes = self.lock();
            let slot = probes
                .get_mut(name)
                .ok_or_else(|| anyhow::anyhow!("no probe named {name:?}"))?;
            (slot.task.take(), slot.state.clone())
        };
        if let Some((stop, mut handle)) = task {
            let _ = stop.send(true);
            let limit = self.inner.policy.stop_timeout;
            if tokio::time::timeout(limit, &mut handle).await.is_err() {
                tracing::warn!(probe = %name, "probe did not stop within {limit:?}; aborting it");
                handle.abort();
                // An aborted task ends at its next poll: wait for that, so that "stopped" means
                // its resources (programs, processes) are released.
                let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
            }
        }
        // Whatever it was (a failed probe included), a stopped probe is off now.
        set(&cell, &self.inner.metrics, name, State::Stopped, "");
        Ok(())
    }

    /// Stops every probe, concurrently.
    pub async fn stop_all(&self) {
        let stops: Vec<_> = self
            .names()
            .into_iter()
            .map(|name| {
                let m = self.clone();
                tokio::spawn(async move { m.stop(&name).await })
            })
            .collect();
        for s in stops {
            let _ = s.await;
        }
    }
}

fn view(name: &str, s: &Slot) -> View {
    View {
        name: name.to_owned(),
        kind: s.definition.kind,
        settings: s.current.clone(),
        overridden: s.current != s.configured,
        status: s.state.get(),
        rows: s.rows.as_ref().map_or(0, Counter::get),
        command: s
            .definition
            .extension
            .as_ref()
            .map(|x| x.command.clone())
            .unwrap_or_default(),
        tables: s.definition.tables.clone(),
    }
}

#[cfg(test)]
mod tests;
