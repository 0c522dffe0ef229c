//! A probe's live status (state, reason, pid, last error), where changes to it are announced,
//! and the handle a running probe reports through.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::telemetry::SelfMetrics;

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
    pub(super) fn new() -> Self {
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
pub(super) struct Cell {
    pub(super) status: Arc<Mutex<Status>>,
    pub(super) changes: broadcast::Sender<String>,
}

impl Cell {
    pub(super) fn get(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn update(&self, name: &str, f: impl FnOnce(&mut Status)) {
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

pub(super) fn set(cell: &Cell, metrics: &SelfMetrics, name: &str, state: State, reason: &str) {
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
    pub(super) name: String,
    pub(super) cell: Cell,
    pub(super) metrics: Arc<SelfMetrics>,
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
