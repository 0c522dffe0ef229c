//! One probe's supervisor task: runs it, restarts it with back-off when it ends on its own,
//! catches its panics, and publishes its state (see the parent module's doc).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

use super::status::{Cell, State, StateHandle, set};
use crate::{
    imdb::Batch,
    probes::{Probe, ProbeContext},
    supervise::{CatchUnwind, Policy},
    telemetry::{PROBE_LAST_FAILURE, PROBE_PANICS, PROBE_RESTARTS, SelfMetrics},
};

pub(super) struct Supervised {
    pub(super) name: String,
    pub(super) probe: Arc<dyn Probe>,
    pub(super) interval: Duration,
    pub(super) cell: Cell,
    pub(super) rows: mpsc::Sender<Batch>,
    pub(super) metrics: Arc<SelfMetrics>,
    pub(super) record_timeout: Duration,
    pub(super) policy: Policy,
}

impl Supervised {
    pub(super) async fn supervise(self, mut stop: watch::Receiver<bool>) {
        let Self {
            name,
            probe,
            interval,
            cell,
            rows,
            metrics,
            record_timeout,
            policy,
        } = self;
        let metrics = &metrics;
        let restarts = metrics.counter(PROBE_RESTARTS, &[("probe", name.as_str())]);
        let panics = metrics.counter(PROBE_PANICS, &[("probe", name.as_str())]);
        let mut backoff = policy.backoff_initial;
        let mut quick = 0u32;
        let mut last_failure: Option<String> = None;
        loop {
            let ctx = ProbeContext {
                interval,
                rows: rows.clone(),
                metrics: Arc::clone(metrics),
                stop: stop.clone(),
                record_timeout,
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
            if *stop.borrow() || rows.is_closed() {
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
