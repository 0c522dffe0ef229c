//! Probes produce rows; the [`Manager`] owns their lifecycle.
//!
//! A probe is anything that, once started, sends [`Batch`]es of rows for the tables it declares
//! until it is told to stop. Kinds: native (`tcp`, eBPF; `system`, /proc; each declared once in
//! [`registry`]) and `extension` (any program printing `|table|v1|…|` lines, run as a supervised
//! child process).
//!
//! - [`manager`]: the supervisor, holding the one map of probes (definition, settings, tasks,
//!   status);
//! - [`settings`]: what a probe is set to and the pure rules on changing it;
//! - [`controller`]: applies changes (control channel, SIGHUP reload, state file) through the
//!   manager.
//!
//! Probes import neither configuration nor control: the wiring (`crate::app`) builds them from
//! the configuration, and the control channel (`crate::control`) calls the controller.

mod check_type;
pub mod controller;
pub mod endpoint;
pub mod extension;
pub mod lb;
pub mod manager;
mod netlink;
pub mod nginx;
pub mod params;
pub mod registry;
pub mod settings;
pub mod system;
pub mod tcp;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};

use crate::{
    imdb::{Batch, TableMeta},
    telemetry::SelfMetrics,
};

pub use controller::Controller;
pub use manager::{Manager, Policy, State, Status, View};
pub use params::ParamError;
pub use settings::{Change, CheckType, ControlError, ProbeKind, Settings, Switch};

/// What a running probe gets from the agent.
pub struct ProbeContext {
    /// How often to report.
    pub interval: Duration,
    /// Where rows go (bounded: a slow store pushes back on the probe, never grows memory).
    pub rows: mpsc::Sender<Batch>,
    pub metrics: Arc<SelfMetrics>,
    /// Becomes `true` when the probe must stop; the probe returns soon after.
    pub stop: watch::Receiver<bool>,
    /// Links/records idle for longer than this may be forgotten by the probe.
    pub record_timeout: Duration,
    /// Report `running` through this once start-up worked.
    pub state: manager::StateHandle,
}

pub type ProbeFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

pub trait Probe: Send + Sync {
    fn name(&self) -> &str;
    /// The tables this probe fills; registered in the store before it starts.
    fn tables(&self) -> Vec<TableMeta>;
    /// Runs the probe until `ctx.stop` fires (then `Ok`) or it cannot go on (then `Err`, with
    /// the reason). Whatever it attached or spawned is released when the future completes.
    fn run(&self, ctx: ProbeContext) -> ProbeFuture;
}

/// Why a native probe could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NativeError {
    /// A refused key of its `params`; the key is [`ParamError::field`].
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error("native probe {0:?} is not built into this agent")]
    NotBuiltIn(String),
}

/// Builds a probe from its `[probes.params]`; a refused key is a [`ParamError`] naming it
/// (`probes[tcp].params.max_links: …`).
pub type Factory = fn(&toml::Table) -> Result<Arc<dyn Probe>, ParamError>;

/// One native probe, as the registry (`registry`) declares it.
#[derive(Clone, Copy)]
pub struct Native {
    pub name: &'static str,
    /// Switched on in the shipped `probes.toml`.
    pub default_on: bool,
    /// Names of the tables it fills (their definitions come from the built probe: a probe's
    /// params may bound its table).
    pub tables: &'static [&'static str],
    pub build: Factory,
    /// `switch = "auto"`: the built-in start check (a shell command, as an extension probe's
    /// `start_check`, and how it answers); `None`: the probe is switched on or off only.
    pub start_check: Option<(&'static str, check_type::CheckType)>,
}

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Native")
            .field("name", &self.name)
            .field("default_on", &self.default_on)
            .field("tables", &self.tables)
            .field("start_check", &self.start_check)
            .finish_non_exhaustive()
    }
}
