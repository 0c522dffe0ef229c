//! Starts and stops probes and publishes their state.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{Probe, ProbeContext};
use crate::{imdb::Row, selfmetrics::SelfMetrics};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Stopped,
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

struct Entry {
    probe: Arc<dyn Probe>,
    interval: Duration,
    task: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    state: Arc<std::sync::Mutex<(State, String)>>,
}

pub struct Manager {
    probes: BTreeMap<String, Entry>,
    rows: mpsc::Sender<Vec<Row>>,
    metrics: Arc<SelfMetrics>,
    record_timeout: Duration,
}

impl Manager {
    pub fn new(
        rows: mpsc::Sender<Vec<Row>>,
        metrics: Arc<SelfMetrics>,
        record_timeout: Duration,
    ) -> Self {
        Self {
            probes: BTreeMap::new(),
            rows,
            metrics,
            record_timeout,
        }
    }

    pub fn add(&mut self, probe: Arc<dyn Probe>, interval: Duration) {
        let name = probe.name().to_owned();
        self.metrics.set_probe_state(&name, State::Stopped.as_str());
        let state = Arc::new(std::sync::Mutex::new((State::Stopped, String::new())));
        self.probes.insert(
            name,
            Entry {
                probe,
                interval,
                task: None,
                state,
            },
        );
    }

    pub fn probes(&self) -> impl Iterator<Item = &Arc<dyn Probe>> {
        self.probes.values().map(|e| &e.probe)
    }

    pub fn state(&self, name: &str) -> Option<(State, String)> {
        let e = self.probes.get(name)?;
        Some(
            e.state
                .lock()
                .map_or((State::Failed, "state lock poisoned".into()), |s| s.clone()),
        )
    }

    /// Starts a probe (no-op if it runs). The probe reports `running` once its future has been
    /// polled without error past start-up; a probe that returns an error is `failed`.
    pub fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let entry = self
            .probes
            .get_mut(name)
            .ok_or_else(|| anyhow::anyhow!("no probe named {name:?}"))?;
        if entry.task.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            return Ok(());
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let ctx = ProbeContext {
            interval: entry.interval,
            rows: self.rows.clone(),
            metrics: Arc::clone(&self.metrics),
            stop: stop_rx,
            record_timeout: self.record_timeout,
            state: StateHandle {
                name: name.to_owned(),
                cell: Arc::clone(&entry.state),
                metrics: Arc::clone(&self.metrics),
            },
        };
        let fut = entry.probe.run(ctx);
        let state = Arc::clone(&entry.state);
        let metrics = Arc::clone(&self.metrics);
        let name = name.to_owned();
        set(&state, &metrics, &name, State::Starting, "");
        let handle = tokio::spawn(async move {
            let result = fut.await;
            match result {
                Ok(()) => set(&state, &metrics, &name, State::Stopped, ""),
                Err(e) => {
                    let reason = format!("{e:#}");
                    tracing::error!(probe = %name, "probe failed: {reason}");
                    set(&state, &metrics, &name, State::Failed, &reason);
                }
            }
        });
        entry.task = Some((stop_tx, handle));
        Ok(())
    }

    /// Stops a probe and waits for it to release what it holds (bounded wait).
    pub async fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        let entry = self
            .probes
            .get_mut(name)
            .ok_or_else(|| anyhow::anyhow!("no probe named {name:?}"))?;
        if let Some((stop, mut handle)) = entry.task.take() {
            let _ = stop.send(true);
            if tokio::time::timeout(Duration::from_secs(10), &mut handle)
                .await
                .is_err()
            {
                tracing::warn!(probe = %name, "probe did not stop within 10 s; aborting it");
                handle.abort();
            }
        }
        Ok(())
    }

    pub async fn stop_all(&mut self) {
        let names: Vec<String> = self.probes.keys().cloned().collect();
        for name in names {
            let _ = self.stop(&name).await;
        }
    }
}

fn set(
    state: &std::sync::Mutex<(State, String)>,
    metrics: &SelfMetrics,
    name: &str,
    s: State,
    reason: &str,
) {
    if let Ok(mut g) = state.lock() {
        *g = (s, reason.to_owned());
    }
    metrics.set_probe_state(name, s.as_str());
}

/// Lets a probe report that start-up (loading, attaching) worked and it is now running.
#[derive(Clone)]
pub struct StateHandle {
    name: String,
    cell: Arc<std::sync::Mutex<(State, String)>>,
    metrics: Arc<SelfMetrics>,
}

impl StateHandle {
    pub fn running(&self) {
        set(&self.cell, &self.metrics, &self.name, State::Running, "");
    }
}
