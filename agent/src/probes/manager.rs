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
    selfmetrics::{PROBE_LAST_FAILURE, PROBE_RESTARTS, SelfMetrics},
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
            }),
        }
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
        let handle = tokio::spawn(run.supervise(stop_rx));
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
            let result = probe.run(ctx).await;
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
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::imdb::TableMeta;
    use crate::probes::ProbeFuture;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails `fail_first` times, then runs until stopped.
    struct Flaky {
        runs: Arc<AtomicU32>,
        fail_first: u32,
    }

    impl Probe for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn tables(&self) -> Vec<TableMeta> {
            Vec::new()
        }
        fn run(&self, mut ctx: ProbeContext) -> ProbeFuture {
            let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            let fail = n <= self.fail_first;
            Box::pin(async move {
                if fail {
                    anyhow::bail!("boom {n}");
                }
                ctx.state.running();
                let _ = ctx.stop.wait_for(|s| *s).await;
                Ok(())
            })
        }
    }

    fn manager(policy: Policy) -> (Manager, Arc<SelfMetrics>, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(1);
        let metrics = Arc::new(SelfMetrics::new());
        (
            Manager::with_policy(tx, Arc::clone(&metrics), Duration::ZERO, policy),
            metrics,
            rx,
        )
    }

    fn fast(max: u32) -> Policy {
        Policy {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
            max_quick_failures: max,
            stable_after: Duration::from_mins(1),
            stop_timeout: Duration::from_secs(5),
        }
    }

    async fn until(m: &Manager, want: State) -> String {
        for _ in 0..500 {
            if let Some((s, why)) = m.state("flaky")
                && s == want
            {
                return why;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never reached {want:?}: {:?}", m.state("flaky"));
    }

    #[tokio::test]
    async fn restarts_with_backoff_then_runs() {
        let (m, metrics, _rx) = manager(fast(5));
        let runs = Arc::new(AtomicU32::new(0));
        m.add(
            Arc::new(Flaky {
                runs: Arc::clone(&runs),
                fail_first: 3,
            }),
            Duration::from_secs(1),
        );
        m.start("flaky").unwrap();
        until(&m, State::Running).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert_eq!(
            metrics.counter(PROBE_RESTARTS, &[("probe", "flaky")]).get(),
            3
        );
        m.stop("flaky").await.unwrap();
        assert_eq!(m.state("flaky").unwrap().0, State::Stopped);
    }

    #[tokio::test]
    async fn gives_up_after_quick_failures_with_the_reason() {
        let (m, metrics, _rx) = manager(fast(3));
        let runs = Arc::new(AtomicU32::new(0));
        m.add(
            Arc::new(Flaky {
                runs: Arc::clone(&runs),
                fail_first: 100,
            }),
            Duration::from_secs(1),
        );
        m.start("flaky").unwrap();
        assert_eq!(until(&m, State::Failed).await, "boom 3");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(
            out.contains("gopher_probe_restarts_total{probe=\"flaky\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("gopher_probe_last_failure_info{probe=\"flaky\",reason=\"boom 3\"} 1\n")
        );
        assert!(out.contains("gopher_probe_state{probe=\"flaky\",state=\"failed\"} 1\n"));
        // Starting again gives it a fresh set of attempts.
        m.start("flaky").unwrap();
        until(&m, State::Failed).await;
        assert_eq!(runs.load(Ordering::SeqCst), 6);
        m.stop("flaky").await.unwrap();
        assert_eq!(m.state("flaky").unwrap().0, State::Stopped);
    }

    #[tokio::test]
    async fn stop_during_backoff_is_prompt() {
        let mut policy = fast(5);
        policy.backoff_initial = Duration::from_secs(30);
        let (m, _metrics, _rx) = manager(policy);
        m.add(
            Arc::new(Flaky {
                runs: Arc::new(AtomicU32::new(0)),
                fail_first: 100,
            }),
            Duration::from_secs(1),
        );
        m.start("flaky").unwrap();
        while m.state("flaky").unwrap().1.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            m.state("flaky").unwrap(),
            (State::Starting, "boom 1".into())
        );
        let t = Instant::now();
        m.stop("flaky").await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(m.state("flaky").unwrap().0, State::Stopped);
    }
}
