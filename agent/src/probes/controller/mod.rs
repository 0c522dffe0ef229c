//! The probe controller: changes a probe's settings for real — programs detached, processes
//! stopped or started, probes rebuilt with new params — before answering; keeps the runtime
//! changes in the state file; follows a reloaded configuration. The control channel
//! (`crate::control`) is a thin adapter over it, and SIGHUP goes through it too.
//!
//! It keeps no map of its own: the supervisor ([`Manager`]) holds each probe's definition,
//! settings and tasks; this module decides what to change and asks the manager to do it.
//!
//! One change is applied at a time (`apply` lock): two managers switching the same probe get a
//! well-defined order, and a reload never interleaves with a `set`. Reads (`list`, `get`) do not
//! wait for a change in progress; they see the settings being applied and the probe's live
//! status.
//!
//! - [`apply`](self): making one probe's settings true;
//! - `reload`: a new configuration, and the state file's changes at start;
//! - [`state_file`]: the file keeping runtime changes across restarts.

mod apply;
mod reload;
pub mod state_file;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    sync::{broadcast, watch},
    task::JoinHandle,
};

use super::{
    Manager, Probe,
    extension::{Catalog, ExtensionProbe},
    manager::View,
    settings::{Change, ControlError, Definition, Extension, Settings, Switch, resolve},
};
use crate::telemetry::SelfMetrics;

/// How many events a slow watcher may fall behind before it is told to re-read.
const EVENTS_BACKLOG: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Changed(View),
    /// The probe left the configuration (reload).
    Removed(View),
    /// The receiver fell behind and missed events: re-read everything.
    Lagged,
}

/// Where extension probes run and how they are checked and stopped.
#[derive(Debug, Clone)]
pub struct ExtensionEnv {
    /// Relative commands and start checks run here (the configuration file's directory).
    pub base: Option<PathBuf>,
    pub stop_grace: Duration,
    pub check_interval: Duration,
    pub check_timeout: Duration,
}

/// An extension probe built from its definition with `param`, writing to the tables `catalog`
/// allows.
pub fn build_extension(
    name: &str,
    ext: &Extension,
    param: &str,
    env: &ExtensionEnv,
    catalog: Arc<Catalog>,
) -> Arc<dyn Probe> {
    let probe = ExtensionProbe::new(
        name,
        &ext.command,
        param,
        ext.tables.clone(),
        env.stop_grace,
    )
    .in_dir_as(env.base.clone(), ext.user.clone());
    probe.set_catalog(catalog);
    Arc::new(probe)
}

/// One configured probe, built, with what it is and what the configuration sets it to.
pub struct Planned {
    pub probe: Arc<dyn Probe>,
    pub definition: Definition,
    pub settings: Settings,
}

/// Every configured probe, built, and the tables extension probes may write to. Made by the
/// agent's wiring from the configuration (which also registers the tables in the store).
pub struct Plan {
    pub probes: Vec<Planned>,
    pub catalog: Arc<Catalog>,
}

struct ControllerState {
    manager: Manager,
    metrics: Arc<SelfMetrics>,
    env: ExtensionEnv,
    state_file: Option<PathBuf>,
    apply: tokio::sync::Mutex<()>,
    /// The tables extension probes may write to (meta directories and their meta files).
    catalog: Mutex<Arc<Catalog>>,
    events: broadcast::Sender<Event>,
    /// Becomes true at shutdown: watchers end their streams.
    closing: watch::Sender<bool>,
    /// Set at shutdown: no more changes.
    shut: std::sync::atomic::AtomicBool,
}

/// Cheap handle (clone it): the gRPC service, the signal handler and the agent share one.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<ControllerState>,
}

/// See [`Controller::downgrade`].
#[derive(Clone)]
pub struct WeakController(std::sync::Weak<ControllerState>);

impl WeakController {
    pub fn upgrade(&self) -> Option<Controller> {
        self.0.upgrade().map(|inner| Controller { inner })
    }
}

/// The result of a change run on its own task.
async fn spawned(task: JoinHandle<Result<View, ControlError>>) -> Result<View, ControlError> {
    task.await.unwrap_or_else(|e| {
        Err(ControlError::Failed(format!(
            "the change did not complete: {e}"
        )))
    })
}

impl Controller {
    /// Adds the planned probes to `manager`, stopped, and lays the state file's runtime changes
    /// over the configuration. Nothing starts yet: see [`Controller::start`].
    pub fn new(
        manager: Manager,
        metrics: Arc<SelfMetrics>,
        env: ExtensionEnv,
        state_file: Option<PathBuf>,
        plan: Plan,
    ) -> anyhow::Result<Self> {
        for p in plan.probes {
            manager.define(p.probe, p.definition, p.settings);
        }
        let ctl = Self {
            inner: Arc::new(ControllerState {
                manager,
                metrics,
                env,
                state_file,
                apply: tokio::sync::Mutex::new(()),
                catalog: Mutex::new(plan.catalog),
                events: broadcast::channel(EVENTS_BACKLOG).0,
                closing: watch::channel(false).0,
                shut: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        ctl.load_overrides()?;
        Ok(ctl)
    }

    /// Where extension probes run (to build a reloaded configuration's probes alike).
    pub fn extension_env(&self) -> &ExtensionEnv {
        &self.inner.env
    }

    /// A handle that does not keep the controller alive (for background tasks).
    pub fn downgrade(&self) -> WeakController {
        WeakController(Arc::downgrade(&self.inner))
    }

    /// Starts what is switched on, and the start checks of `auto` probes; forwards the
    /// manager's status changes as events.
    pub fn start(&self) -> anyhow::Result<()> {
        let manager = &self.inner.manager;
        for (name, _, current) in manager.all_settings() {
            match current.switch {
                Switch::On => manager.start(&name)?,
                Switch::Auto => self.spawn_check(&name),
                Switch::Off => {}
            }
        }
        // Weak: this task must not keep the controller (and through it the probes' row
        // channel) alive after the agent let go of it.
        let me = self.downgrade();
        let mut changes = manager.subscribe();
        tokio::spawn(async move {
            loop {
                let next = changes.recv().await;
                let Some(me) = me.upgrade() else { break };
                match next {
                    Ok(name) => me.announce(&name),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = me.inner.events.send(Event::Lagged);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(())
    }

    /// Becomes true when the agent shuts down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Refuses further changes (after one in progress), stops the start checks, then every
    /// probe; ends the watch streams.
    pub async fn shutdown(&self) {
        {
            let _after_any_change = self.inner.apply.lock().await;
            self.inner
                .shut
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        for (stop, handle) in self.inner.manager.take_checks() {
            let _ = stop.send(true);
            let _ = handle.await;
        }
        self.inner.manager.stop_all().await;
        // Let the forwarder pass the last state changes on before the streams end.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.inner.closing.send_replace(true);
    }

    fn refuse_if_shut(&self) -> Result<(), ControlError> {
        if self.inner.shut.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ControlError::Unavailable(
                "the agent is shutting down".to_owned(),
            ));
        }
        Ok(())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    pub fn list(&self) -> Vec<View> {
        self.inner.manager.views()
    }

    pub fn get(&self, name: &str) -> Result<View, ControlError> {
        self.inner
            .manager
            .view(name)
            .ok_or_else(|| ControlError::NotFound(name.to_owned()))
    }

    /// Validates `change` and applies it before returning the probe's new view.
    ///
    /// The change runs on a task of its own: a caller that goes away (a cancelled call, a
    /// deadline) does not leave it half done.
    pub async fn set(&self, name: &str, change: &Change) -> Result<View, ControlError> {
        let me = self.clone();
        let (name, change) = (name.to_owned(), change.clone());
        spawned(tokio::spawn(async move {
            let _one_at_a_time = me.inner.apply.lock().await;
            me.refuse_if_shut()?;
            let manager = &me.inner.manager;
            let not_found = || ControlError::NotFound(name.clone());
            let def = manager.definition(&name).ok_or_else(not_found)?;
            let (_, current) = manager.settings(&name).ok_or_else(not_found)?;
            let wanted = resolve(&name, &def, &current, &change)?;
            let applied = me.apply(&name, wanted, true).await;
            me.persist();
            applied?;
            me.get(&name)
        }))
        .await
    }

    /// Back to the configuration file's settings.
    pub async fn reset(&self, name: &str) -> Result<View, ControlError> {
        let me = self.clone();
        let name = name.to_owned();
        spawned(tokio::spawn(async move {
            let _one_at_a_time = me.inner.apply.lock().await;
            me.refuse_if_shut()?;
            let (configured, _) = me
                .inner
                .manager
                .settings(&name)
                .ok_or_else(|| ControlError::NotFound(name.clone()))?;
            let applied = me.apply(&name, configured, true).await;
            me.persist();
            applied?;
            me.get(&name)
        }))
        .await
    }

    /// Tells watchers the probe's view as it is now.
    fn announce(&self, name: &str) {
        if let Ok(view) = self.get(name) {
            let _ = self.inner.events.send(Event::Changed(view));
        }
    }

    /// The tables extension probes may write to now.
    fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(
            &self
                .inner
                .catalog
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}
