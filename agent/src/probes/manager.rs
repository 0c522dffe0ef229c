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
//! The manager is a cheap handle (clone it): start-check tasks start and stop probes through
//! their own clone while `main` holds another.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio::{
    sync::{broadcast, mpsc, watch},
    task::JoinHandle,
};

use super::{Probe, ProbeContext};
use crate::{
    imdb::Batch,
    selfmetrics::{PROBE_LAST_FAILURE, PROBE_PANICS, PROBE_RESTARTS, SelfMetrics},
    service::supervise::{Beating, CatchUnwind, Liveness, STALL_BOUND, TICK},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Stopped,
    /// Starting up, or waiting out the back-off before a restart.
    Starting,
    Running,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Failed => "failed",
        }
    }
}

/// How the supervisor restarts probes that end on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Quick failures in a row after which the probe is left `failed`; 1 = never restart.
    pub max_quick_failures: u32,
    /// A run at least this long is not a quick failure: it resets the count and the back-off.
    pub stable_after: Duration,
    /// How long [`Manager::stop`] waits for a probe to let go before aborting its task.
    pub stop_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_mins(1),
            max_quick_failures: 5,
            stable_after: Duration::from_mins(1),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// What the manager knows of a probe's run right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// Why it is `failed` (or waiting to restart); empty otherwise.
    pub reason: String,
    /// The process (group leader) of a running extension probe.
    pub pid: Option<u32>,
    /// Why the last run ended on its own; kept across restarts, cleared by nothing.
    pub last_error: String,
}

impl Status {
    fn new() -> Self {
        Self {
            state: State::Stopped,
            reason: String::new(),
            pid: None,
            last_error: String::new(),
        }
    }
}

/// Status cell plus where changes are announced (the probe's name, on every change).
#[derive(Clone)]
struct Cell {
    status: Arc<Mutex<Status>>,
    changes: broadcast::Sender<String>,
}

impl Cell {
    fn get(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut Status)) {
        let changed = {
            let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            let before = s.clone();
            f(&mut s);
            *s != before
        };
        if changed {
            // No receiver (nobody watching) is fine.
            let _ = self.changes.send(name.to_owned());
        }
    }
}

/// How many state changes a slow watcher may fall behind before it is told it lagged.
const CHANGES_BACKLOG: usize = 256;

struct Entry {
    probe: Arc<dyn Probe>,
    interval: Duration,
    task: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    state: Cell,
}

struct Inner {
    probes: Mutex<BTreeMap<String, Entry>>,
    rows: mpsc::Sender<Batch>,
    metrics: Arc<SelfMetrics>,
    record_timeout: Duration,
    policy: Policy,
    changes: broadcast::Sender<String>,
    liveness: Liveness,
}

#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
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
            inner: Arc::new(Inner {
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
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a probe, stopped.
    pub fn add(&self, probe: Arc<dyn Probe>, interval: Duration) {
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
            Entry {
                probe,
                interval,
                task: None,
                state,
            },
        );
        let _ = self.inner.changes.send(name);
    }

    /// Swaps a stopped probe's implementation and interval (new params), keeping its status.
    pub fn replace(&self, probe: Arc<dyn Probe>, interval: Duration) -> anyhow::Result<()> {
        let mut probes = self.lock();
        let name = probe.name().to_owned();
        let entry = probes
            .get_mut(&name)
            .ok_or_else(|| anyhow::anyhow!("no probe named {name:?}"))?;
        if entry.task.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            anyhow::bail!("probe {name:?} must be stopped before it is replaced");
        }
        entry.probe = probe;
        entry.interval = interval;
        Ok(())
    }

    /// Forgets a stopped probe (it left the configuration).
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        let mut probes = self.lock();
        let entry = probes
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no probe named {name:?}"))?;
        if entry.task.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
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
        self.lock().get(name).map(|e| e.state.get())
    }

    pub fn interval(&self, name: &str) -> Option<Duration> {
        self.lock().get(name).map(|e| e.interval)
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The probe's state and, for `failed` (or a pending restart), why.
    pub fn state(&self, name: &str) -> Option<(State, String)> {
        self.status(name).map(|s| (s.state, s.reason))
    }

    /// Starts a probe under supervision (no-op if its supervisor is active, back-off included).
    /// The probe reports `running` once its start-up worked.
    pub fn start(&self, name: &str) -> anyhow::Result<()> {
        let mut probes = self.lock();
        let entry = probes
            .get_mut(name)
            .ok_or_else(|| anyhow::anyhow!("no probe named {name:?}"))?;
        if entry.task.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            return Ok(());
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let run = Supervised {
            name: name.to_owned(),
            probe: Arc::clone(&entry.probe),
            interval: entry.interval,
            cell: entry.state.clone(),
            inner: Arc::clone(&self.inner),
        };
        set(&entry.state, &self.inner.metrics, name, State::Starting, "");
        let heartbeat = self
            .inner
            .liveness
            .register(format!("probe {name}"), STALL_BOUND);
        let handle = tokio::spawn(Beating::new(run.supervise(stop_rx), heartbeat, TICK));
        entry.task = Some((stop_tx, handle));
        Ok(())
    }

    /// Stops a probe and waits (bounded) for it to release what it holds.
    pub async fn stop(&self, name: &str) -> anyhow::Result<()> {
        let (task, cell) = {
            let mut probes = self.lock();
            let entry = probes
                .get_mut(name)
                .ok_or_else(|| anyhow::anyhow!("no probe named {name:?}"))?;
            (entry.task.take(), entry.state.clone())
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

struct Supervised {
    name: String,
    probe: Arc<dyn Probe>,
    interval: Duration,
    cell: Cell,
    inner: Arc<Inner>,
}

impl Supervised {
    async fn supervise(self, mut stop: watch::Receiver<bool>) {
        let Self {
            name,
            probe,
            interval,
            cell,
            inner,
        } = self;
        let policy = inner.policy;
        let metrics = &inner.metrics;
        let restarts = metrics.counter(PROBE_RESTARTS, &[("probe", name.as_str())]);
        let panics = metrics.counter(PROBE_PANICS, &[("probe", name.as_str())]);
        let mut backoff = policy.backoff_initial;
        let mut quick = 0u32;
        let mut last_failure: Option<String> = None;
        loop {
            let ctx = ProbeContext {
                interval,
                rows: inner.rows.clone(),
                metrics: Arc::clone(metrics),
                stop: stop.clone(),
                record_timeout: inner.record_timeout,
                state: StateHandle {
                    name: name.clone(),
                    cell: cell.clone(),
                    metrics: Arc::clone(metrics),
                },
            };
            // Checked after cloning the receiver, so a stop sent from here on is seen by the run.
            if *stop.borrow() {
                break;
            }
            let began = Instant::now();
            // `run` itself inside the guard too: a panic while building the future counts.
            let run = {
                let probe = Arc::clone(&probe);
                async move { probe.run(ctx).await }
            };
            let result = match CatchUnwind::new(run).await {
                Ok(result) => result,
                Err(message) => {
                    panics.inc();
                    tracing::error!(probe = %name, "probe panicked: {message}");
                    Err(anyhow::anyhow!("panicked: {message}"))
                }
            };
            if *stop.borrow() || inner.rows.is_closed() {
                if let Err(e) = result {
                    tracing::debug!(probe = %name, "probe ended with an error while stopping: {e:#}");
                }
                break;
            }
            let reason = match result {
                Ok(()) => "ended without being asked to stop".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            let label = one_line(&reason);
            if let Some(old) = last_failure.replace(label.clone()) {
                metrics.remove(PROBE_LAST_FAILURE, &[("probe", &name), ("reason", &old)]);
            }
            metrics
                .gauge(PROBE_LAST_FAILURE, &[("probe", &name), ("reason", &label)])
                .set(1.0);
            cell.update(&name, |s| {
                s.last_error.clone_from(&label);
                s.pid = None;
            });
            if began.elapsed() >= policy.stable_after {
                quick = 0;
                backoff = policy.backoff_initial;
            }
            quick += 1;
            if quick >= policy.max_quick_failures {
                tracing::error!(
                    probe = %name,
                    failures = quick,
                    "probe failed {quick} times in a row; giving up: {reason}"
                );
                set(&cell, metrics, &name, State::Failed, &reason);
                return;
            }
            tracing::warn!(
                probe = %name,
                "probe ended: {reason}; restarting in {backoff:?} (quick failure {quick} of {})",
                policy.max_quick_failures
            );
            set(&cell, metrics, &name, State::Starting, &reason);
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(policy.backoff_max);
            restarts.inc();
        }
        set(&cell, metrics, &name, State::Stopped, "");
    }
}

/// A reason as a label value: one line, bounded.
fn one_line(reason: &str) -> String {
    const MAX: usize = 200;
    let mut s: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > MAX {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn set(cell: &Cell, metrics: &SelfMetrics, name: &str, state: State, reason: &str) {
    cell.update(name, |s| {
        s.state = state;
        reason.clone_into(&mut s.reason);
        if state != State::Running {
            s.pid = None;
        }
    });
    metrics.set_probe_state(name, state.as_str());
}

/// Lets a probe report that start-up (loading, attaching) worked and it is now running.
#[derive(Clone)]
pub struct StateHandle {
    name: String,
    cell: Cell,
    metrics: Arc<SelfMetrics>,
}

impl StateHandle {
    pub fn running(&self) {
        set(&self.cell, &self.metrics, &self.name, State::Running, "");
    }

    /// Running as process `pid` (an extension probe's process group leader).
    pub fn running_as(&self, pid: u32) {
        self.cell.update(&self.name, |s| s.pid = Some(pid));
        self.running();
    }
}

#[cfg(test)]
mod tests;
