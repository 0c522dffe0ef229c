//! Probes produce rows; the [`Manager`] owns their lifecycle.
//!
//! A probe is anything that, once started, sends [`Batch`]es of rows for the tables it declares
//! until it is told to stop. Kinds: `tcp` (eBPF, native), `extension` (any program printing
//! `|table|v1|…|` lines, run as a supervised child process).

pub mod extension;
pub mod manager;
pub mod params;
pub mod system;
pub mod tcp;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};

use crate::{
    imdb::{Batch, TableMeta},
    selfmetrics::SelfMetrics,
};

pub use manager::{Manager, Policy, State, Status};
pub use params::ParamError;

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

/// Builds a native probe from its `[probes.params]`; a refused key comes back as
/// [`NativeError::Param`], whose [`ParamError`] names it.
pub fn build_native(name: &str, params: &toml::Table) -> Result<Arc<dyn Probe>, NativeError> {
    if name == "tcp" {
        return Ok(Arc::new(tcp::TcpProbe::from_params(params)?));
    }
    system::native_probe(name, params)?.ok_or_else(|| NativeError::NotBuiltIn(name.to_owned()))
}

/// [`build_native`] for callers that only report the error (`probes[tcp].params.max_links: …`);
/// the [`NativeError`] inside can be had back with `downcast_ref`.
pub fn native(name: &str, params: &toml::Table) -> anyhow::Result<Arc<dyn Probe>> {
    Ok(build_native(name, params)?)
}

/// Milliseconds since the Unix epoch; the one definition is [`crate::clock::wall_ms`] (this
/// name stays until its callers use that one).
pub use crate::clock::wall_ms as now_ms;
