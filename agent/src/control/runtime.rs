//! The probes' runtime settings: what the configuration file says, what the control channel
//! changed, and applying a change for real (programs detached, processes stopped) before
//! answering.
//!
//! One change is applied at a time (`apply` lock): two managers switching the same probe get a
//! well-defined order, and a reload never interleaves with a `set`. Reads (`list`, `get`) do not
//! wait for a change in progress; they see the settings being applied and the probe's live
//! status.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio::{
    sync::{broadcast, watch},
    task::JoinHandle,
};

use super::overrides;
use crate::{
    config::{self, Config, ExtendProbe, Switch},
    imdb::{Store, TableMeta},
    probes::{
        self, Manager, Probe, State, Status,
        extension::{
            Catalog, ExtensionProbe,
            start_check::{self, StartCheck},
        },
    },
    selfmetrics::{PROBE_ROWS, SelfMetrics},
};

/// Longest period a probe may report at; the configuration file has the same bound.
pub const MAX_INTERVAL_SECS: u64 = 3600;
/// How long `set` waits for a probe switched on to come up (attach, spawn) before answering
/// with whatever state it is in.
const START_WAIT: Duration = Duration::from_secs(30);
/// Extension probes keep their own cadence; the interval the manager hands them is unused, so
/// it is a constant rather than `[ingress] interval` (whose change would restart them all).
const EXTENSION_INTERVAL: Duration = Duration::from_secs(5);
/// How many events a slow watcher may fall behind before it is told to re-read.
const EVENTS_BACKLOG: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Native,
    Extension,
}

/// What a probe is set to.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub switch: Switch,
    /// Native probes only (extension probes keep their own cadence).
    pub interval: Duration,
    pub params: Params,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// `[probes.params]`.
    Native(toml::Table),
    /// The extension probe's `param`: arguments appended to its command.
    Extension(String),
}

/// A requested change; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    pub switch: Option<Switch>,
    pub interval_secs: Option<u64>,
    /// Replaces the params as a whole. Extension probes take only `param` (a string).
    pub params: Option<toml::Table>,
}

/// A probe as the control channel shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub name: String,
    pub kind: Kind,
    pub settings: Settings,
    /// Settings differ from the configuration file's.
    pub overridden: bool,
    pub status: Status,
    pub rows: u64,
    /// Extension probes: the configured command.
    pub command: String,
    pub tables: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Changed(View),
    /// The probe left the configuration (reload).
    Removed(View),
    /// The receiver fell behind and missed events: re-read everything.
    Lagged,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("no probe named {0:?}")]
    NotFound(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Unavailable(String),
}

/// The result of a change run on its own task.
async fn spawned(task: JoinHandle<Result<View, ControlError>>) -> Result<View, ControlError> {
    task.await.unwrap_or_else(|e| {
        Err(ControlError::Failed(format!(
            "the change did not complete: {e}"
        )))
    })
}

fn invalid(field: &str, message: impl Into<String>) -> ControlError {
    ControlError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

struct Entry {
    kind: Kind,
    configured: Settings,
    current: Settings,
    /// Extension probes: their configuration entry and the tables of their meta file.
    ext: Option<(ExtendProbe, Vec<TableMeta>)>,
    tables: Vec<String>,
    check: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl Entry {
    /// As configured, nothing changed at runtime yet.
    fn new(
        kind: Kind,
        settings: Settings,
        ext: Option<(ExtendProbe, Vec<TableMeta>)>,
        tables: Vec<String>,
    ) -> Self {
        Self {
            kind,
            configured: settings.clone(),
            current: settings,
            ext,
            tables,
            check: None,
        }
    }
}

/// Where extension probes run and how they are checked and stopped.
#[derive(Clone)]
struct ExtEnv {
    base: Option<PathBuf>,
    stop_grace: Duration,
    check_interval: Duration,
    check_timeout: Duration,
}

struct Inner {
    manager: Manager,
    metrics: Arc<SelfMetrics>,
    env: ExtEnv,
    state_file: Option<PathBuf>,
    apply: tokio::sync::Mutex<()>,
    probes: Mutex<BTreeMap<String, Entry>>,
    catalog: Mutex<Arc<Catalog>>,
    events: broadcast::Sender<Event>,
    /// Becomes true at shutdown: watchers end their streams.
    closing: watch::Sender<bool>,
    /// Set at shutdown: no more changes.
    shut: std::sync::atomic::AtomicBool,
}

/// Cheap handle (clone it): the gRPC service, the signal handler and `main` share one.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

/// See [`Controller::downgrade`].
#[derive(Clone)]
pub struct WeakController(std::sync::Weak<Inner>);

impl WeakController {
    pub fn upgrade(&self) -> Option<Controller> {
        self.0.upgrade().map(|inner| Controller { inner })
    }
}

impl Controller {
    /// Builds every configured probe, registers the tables (meta directories, native probes,
    /// extension probes' meta files) in `store`, adds the probes to `manager` stopped, and lays
    /// the state file's runtime changes over the configuration. Nothing starts yet: see
    /// [`Controller::start`].
    pub fn new(
        cfg: &Config,
        base: Option<PathBuf>,
        store: &mut Store,
        manager: Manager,
        metrics: Arc<SelfMetrics>,
    ) -> anyhow::Result<Self> {
        let env = ExtEnv {
            base,
            stop_grace: cfg.supervision.stop_grace,
            check_interval: cfg.supervision.start_check_interval,
            check_timeout: cfg.supervision.start_check_timeout,
        };
        let (entries, catalog, probes) = build_all(cfg, &env, store)?;
        for probe in probes {
            let interval = entries
                .get(probe.name())
                .map_or(cfg.ingress.interval, |e| e.current.interval);
            manager.add(probe, interval);
        }
        let ctl = Self {
            inner: Arc::new(Inner {
                manager,
                metrics,
                env,
                state_file: cfg.control.state_file.clone(),
                apply: tokio::sync::Mutex::new(()),
                probes: Mutex::new(entries),
                catalog: Mutex::new(catalog),
                events: broadcast::channel(EVENTS_BACKLOG).0,
                closing: watch::channel(false).0,
                shut: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        ctl.load_overrides()?;
        Ok(ctl)
    }

    /// A handle that does not keep the controller alive (for background tasks).
    pub fn downgrade(&self) -> WeakController {
        WeakController(Arc::downgrade(&self.inner))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts what is switched on, and the start checks of `auto` probes; forwards the
    /// manager's status changes as events.
    pub fn start(&self) -> anyhow::Result<()> {
        let names: Vec<(String, Switch)> = self
            .lock()
            .iter()
            .map(|(n, e)| (n.clone(), e.current.switch))
            .collect();
        for (name, switch) in names {
            match switch {
                Switch::On => self.inner.manager.start(&name)?,
                Switch::Auto => self.spawn_check(&name),
                Switch::Off => {}
            }
        }
        // Weak: this task must not keep the controller (and through it the probes' row
        // channel) alive after the agent let go of it.
        let me = self.downgrade();
        let mut changes = self.inner.manager.subscribe();
        tokio::spawn(async move {
            loop {
                let next = changes.recv().await;
                let Some(me) = me.upgrade() else { break };
                match next {
                    Ok(name) => {
                        if let Ok(view) = me.get(&name) {
                            let _ = me.inner.events.send(Event::Changed(view));
                        }
                    }
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
        let checks: Vec<_> = self
            .lock()
            .values_mut()
            .filter_map(|e| e.check.take())
            .collect();
        for (stop, handle) in checks {
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
        let names: Vec<String> = self.lock().keys().cloned().collect();
        names.iter().filter_map(|n| self.get(n).ok()).collect()
    }

    pub fn get(&self, name: &str) -> Result<View, ControlError> {
        let probes = self.lock();
        let e = probes
            .get(name)
            .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
        Ok(self.view(name, e))
    }

    fn view(&self, name: &str, e: &Entry) -> View {
        let status = self.inner.manager.status(name).unwrap_or(Status {
            state: State::Stopped,
            reason: String::new(),
            pid: None,
            last_error: String::new(),
        });
        View {
            name: name.to_owned(),
            kind: e.kind,
            settings: e.current.clone(),
            overridden: e.current != e.configured,
            status,
            rows: self
                .inner
                .metrics
                .counter(PROBE_ROWS, &[("probe", name)])
                .get(),
            command: e
                .ext
                .as_ref()
                .map(|(x, _)| x.command.clone())
                .unwrap_or_default(),
            tables: e.tables.clone(),
        }
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
            let wanted = {
                let probes = me.lock();
                let e = probes
                    .get(&name)
                    .ok_or_else(|| ControlError::NotFound(name.clone()))?;
                resolve(&name, e, &change)?
            };
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
            let configured = me
                .lock()
                .get(&name)
                .map(|e| e.configured.clone())
                .ok_or_else(|| ControlError::NotFound(name.clone()))?;
            let applied = me.apply(&name, configured, true).await;
            me.persist();
            applied?;
            me.get(&name)
        }))
        .await
    }

    /// Makes `wanted` true for `name`: rebuilds the probe if its interval or params change,
    /// stops and starts it as its switch says. `wait`: answer only once a probe switched on
    /// runs (or failed). Callers hold the `apply` lock.
    async fn apply(&self, name: &str, wanted: Settings, wait: bool) -> Result<(), ControlError> {
        self.apply_with(name, wanted, false, wait).await
    }

    /// [`Controller::apply`]; `force` rebuilds and restarts the probe even when its settings
    /// stay (its definition in the configuration changed: command, start check, meta file).
    async fn apply_with(
        &self,
        name: &str,
        wanted: Settings,
        force: bool,
        wait: bool,
    ) -> Result<(), ControlError> {
        let old = self
            .lock()
            .get(name)
            .map(|e| e.current.clone())
            .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
        let manager = &self.inner.manager;
        if wanted == old && !force {
            // Nothing to change; but "on" means running: a probe that gave up (or was
            // stopped behind our back) is started again.
            let idle = matches!(
                manager.status(name).map(|s| s.state),
                Some(State::Failed | State::Stopped)
            );
            if wanted.switch == Switch::On && idle {
                manager
                    .start(name)
                    .map_err(|e| ControlError::Failed(format!("{e:#}")))?;
                if wait {
                    self.wait_started(name).await;
                }
            }
            return Ok(());
        }
        let rebuild = force || wanted.interval != old.interval || wanted.params != old.params;
        // Built before anything is stopped: a probe that cannot be built keeps running as it was.
        let built = if rebuild {
            Some(self.build(name, &wanted)?)
        } else {
            None
        };
        // From here on, readers (and the events of the stop and start below) see the settings
        // being applied.
        let switch = wanted.switch;
        self.set_current(name, wanted.clone());
        let result = self
            .carry_out(name, &old, &wanted, built, force, wait)
            .await;
        if result.is_err() {
            // Say what is true: the old settings (the probe may be stopped: its state says so).
            self.set_current(name, old);
        } else {
            tracing::info!(probe = %name, switch = %switch, "probe settings changed");
        }
        if let Ok(view) = self.get(name) {
            let _ = self.inner.events.send(Event::Changed(view));
        }
        result
    }

    fn set_current(&self, name: &str, s: Settings) {
        if let Some(e) = self.lock().get_mut(name) {
            e.current = s;
        }
    }

    async fn carry_out(
        &self,
        name: &str,
        old: &Settings,
        wanted: &Settings,
        built: Option<Arc<dyn Probe>>,
        force: bool,
        wait: bool,
    ) -> Result<(), ControlError> {
        let failed = |e: anyhow::Error| ControlError::Failed(format!("{e:#}"));
        self.stop_check(name).await;
        let must_stop = built.is_some()
            || wanted.switch == Switch::Off
            || (wanted.switch == Switch::Auto && (old.switch != Switch::Auto || force));
        let manager = &self.inner.manager;
        if must_stop {
            manager.stop(name).await.map_err(failed)?;
        }
        if let Some(probe) = built {
            manager.replace(probe, wanted.interval).map_err(failed)?;
        }
        match wanted.switch {
            Switch::On => {
                manager.start(name).map_err(failed)?;
                if wait {
                    self.wait_started(name).await;
                }
            }
            Switch::Auto => self.spawn_check(name),
            Switch::Off => {}
        }
        Ok(())
    }

    /// Until the probe runs, gave up, or is waiting to retry (its first start failed).
    async fn wait_started(&self, name: &str) {
        let began = Instant::now();
        while began.elapsed() < START_WAIT {
            match self.inner.manager.status(name) {
                Some(s) if s.state == State::Starting && s.reason.is_empty() => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn build(&self, name: &str, s: &Settings) -> Result<Arc<dyn Probe>, ControlError> {
        match &s.params {
            Params::Native(params) => {
                probes::registry::build(name, params).map_err(|e| param_error(&e))
            }
            Params::Extension(param) => {
                let probes = self.lock();
                let (ext, tables) = probes
                    .get(name)
                    .and_then(|e| e.ext.clone())
                    .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
                drop(probes);
                let catalog = Arc::clone(
                    &self
                        .inner
                        .catalog
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                );
                Ok(extension(&ext, param, tables, &self.inner.env, catalog))
            }
        }
    }

    fn spawn_check(&self, name: &str) {
        let Some(command) = self
            .lock()
            .get(name)
            .and_then(|e| e.ext.as_ref())
            .and_then(|(x, _)| x.start_check.clone().map(|c| (c, x.check_type)))
        else {
            return;
        };
        let env = &self.inner.env;
        let (stop, rx) = watch::channel(false);
        let handle = start_check::spawn_auto(
            self.inner.manager.clone(),
            StartCheck {
                probe: name.to_owned(),
                command: command.0,
                kind: command.1,
                interval: env.check_interval,
                timeout: env.check_timeout,
                workdir: env.base.clone(),
            },
            Arc::clone(&self.inner.metrics),
            rx,
        );
        if let Some(e) = self.lock().get_mut(name) {
            e.check = Some((stop, handle));
        }
    }

    async fn stop_check(&self, name: &str) {
        let check = self.lock().get_mut(name).and_then(|e| e.check.take());
        if let Some((stop, handle)) = check {
            let _ = stop.send(true);
            let _ = handle.await;
        }
    }

    /// Makes a new configuration (SIGHUP) true without a restart: probes that left it are
    /// stopped and forgotten, new ones are built and started, changed ones are rebuilt and
    /// restarted; unchanged ones are not touched. Runtime changes made over the control channel
    /// stay on top of the new configuration, field by field. The new configuration's probes are
    /// all built (against a scratch table store) before anything changes: a missing meta file
    /// or a clashing table refuses the reload as a whole. Applying does not wait for probes to
    /// come up (a reload must not hold off SIGTERM); a probe that cannot be applied is reported
    /// and the others still are.
    pub async fn reload(&self, cfg: &Config, store: &Mutex<Store>) -> anyhow::Result<()> {
        let _one_at_a_time = self.inner.apply.lock().await;
        if self.refuse_if_shut().is_err() {
            return Ok(());
        }
        let limits = store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .limits();
        build_all(cfg, &self.inner.env, &mut Store::new(limits))?;
        // Valid: now for real (the same build, so the same result).
        let (fresh, catalog, built) = {
            let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
            build_all(cfg, &self.inner.env, &mut store)?
        };
        let mut built: BTreeMap<String, Arc<dyn Probe>> = built
            .into_iter()
            .map(|p| (p.name().to_owned(), p))
            .collect();
        *self
            .inner
            .catalog
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = catalog;
        let old_names: Vec<(String, Kind)> = self
            .lock()
            .iter()
            .map(|(n, e)| (n.clone(), e.kind))
            .collect();
        for (name, kind) in &old_names {
            // A name that changed kind (native <-> extension) is a different probe.
            if fresh.get(name).is_some_and(|e| e.kind == *kind) {
                continue;
            }
            self.remove_probe(name).await;
        }
        let mut changed = 0usize;
        let mut errors = Vec::new();
        for (name, new) in fresh {
            let old = self
                .lock()
                .get(name.as_str())
                .map(|e| (e.configured.clone(), e.current.clone(), e.ext.clone()));
            match old {
                None => {
                    let Some(probe) = built.remove(&name) else {
                        continue;
                    };
                    if let Err(e) = self.add_probe(&name, new, probe) {
                        errors.push(format!("probe {name}: {e:#}"));
                    }
                    changed += 1;
                }
                Some((configured, current, ext)) => {
                    if configured == new.configured && ext == new.ext {
                        continue;
                    }
                    match self.change_probe(&name, &new, &configured, &current).await {
                        Ok(()) => changed += 1,
                        Err(err) => errors.push(format!("probe {name}: {err}")),
                    }
                }
            }
        }
        self.persist();
        if errors.is_empty() {
            tracing::info!(changed, "configuration reloaded");
            Ok(())
        } else {
            anyhow::bail!(
                "configuration reloaded except for: {} (changed: {changed})",
                errors.join("; ")
            )
        }
    }

    /// A probe new in the configuration: registered, started as its switch says, announced.
    fn add_probe(&self, name: &str, entry: Entry, probe: Arc<dyn Probe>) -> anyhow::Result<()> {
        let switch = entry.current.switch;
        self.lock().insert(name.to_owned(), entry);
        self.inner.manager.add(probe, self.interval_of(name));
        tracing::info!(probe = %name, "config reload: probe added");
        let started = match switch {
            Switch::On => self.inner.manager.start(name),
            Switch::Auto => {
                self.spawn_check(name);
                Ok(())
            }
            Switch::Off => Ok(()),
        };
        if let Ok(view) = self.get(name) {
            let _ = self.inner.events.send(Event::Changed(view));
        }
        started
    }

    /// A probe whose configuration changed: rebuilt from the new definition and restarted, with
    /// runtime changes kept on top. On failure it keeps its old definition, so that the same
    /// reload tries again.
    async fn change_probe(
        &self,
        name: &str,
        new: &Entry,
        configured: &Settings,
        current: &Settings,
    ) -> Result<(), ControlError> {
        let wanted = merged(configured, current, &new.configured);
        if wanted != new.configured {
            tracing::warn!(probe = %name, "config reload: runtime changes from the control channel stay on top of the new configuration (`gopher ctl reset {name}` drops them)");
        }
        // The new definition is what the probe is built from.
        let Some((old_ext, old_tables)) = self.lock().get_mut(name).map(|e| {
            let before = (e.ext.clone(), e.tables.clone());
            e.ext.clone_from(&new.ext);
            e.tables.clone_from(&new.tables);
            before
        }) else {
            return Err(ControlError::NotFound(name.to_owned()));
        };
        let definition_changed = old_ext != new.ext;
        let applied = self
            .apply_with(name, wanted, definition_changed, false)
            .await;
        let mut probes = self.lock();
        let Some(e) = probes.get_mut(name) else {
            return applied;
        };
        if applied.is_ok() {
            e.configured = new.configured.clone();
            tracing::info!(probe = %name, "config reload: probe changed");
        } else {
            e.ext = old_ext;
            e.tables = old_tables;
        }
        applied
    }

    fn interval_of(&self, name: &str) -> Duration {
        self.lock()
            .get(name)
            .map_or(EXTENSION_INTERVAL, |e| e.current.interval)
    }

    /// Stops a probe, forgets it, and says so to watchers.
    async fn remove_probe(&self, name: &str) {
        self.stop_check(name).await;
        let _ = self.inner.manager.stop(name).await;
        let gone = self.lock().remove(name);
        if let Some(e) = gone {
            let view = self.view(name, &e);
            let _ = self.inner.manager.remove(name);
            tracing::info!(probe = %name, "config reload: probe removed");
            let _ = self.inner.events.send(Event::Removed(view));
        }
    }

    /// Lays the state file's changes over the configuration (before anything starts). A change
    /// the current configuration no longer allows is skipped with a warning, not fatal: the
    /// configuration file stays the authority.
    fn load_overrides(&self) -> anyhow::Result<()> {
        let Some(path) = &self.inner.state_file else {
            return Ok(());
        };
        let changes = match overrides::load(path) {
            Ok(c) => c,
            Err(e) => {
                // The configuration file stays the authority: a damaged state file costs the
                // runtime changes, not the agent.
                tracing::error!(state_file = %path.display(), "runtime changes not loaded: {e:#}");
                return Ok(());
            }
        };
        for (name, change) in changes {
            let mut probes = self.lock();
            let Some(e) = probes.get_mut(&name) else {
                tracing::warn!(state_file = %path.display(), probe = %name, "runtime change for a probe that is no longer configured; ignored");
                continue;
            };
            match resolve(&name, e, &change) {
                Ok(s) if s == e.current => {}
                Ok(s) => {
                    let rebuild = s.interval != e.current.interval || s.params != e.current.params;
                    drop(probes);
                    if rebuild {
                        match self.build(&name, &s) {
                            Ok(p) => self.inner.manager.replace(p, s.interval)?,
                            Err(err) => {
                                tracing::warn!(state_file = %path.display(), probe = %name, "runtime change no longer valid ({err}); using the configuration");
                                continue;
                            }
                        }
                    }
                    tracing::info!(state_file = %path.display(), probe = %name, switch = %s.switch, "runtime change kept from an earlier run");
                    if let Some(e) = self.lock().get_mut(&name) {
                        e.current = s;
                    }
                }
                Err(err) => {
                    tracing::warn!(state_file = %path.display(), probe = %name, "runtime change no longer valid ({err}); using the configuration");
                }
            }
        }
        Ok(())
    }

    /// Writes the runtime changes to the state file, if one is configured. A failure is
    /// logged: the change itself is in effect.
    fn persist(&self) {
        let Some(path) = &self.inner.state_file else {
            return;
        };
        let changes: BTreeMap<String, Change> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.current != e.configured)
            .map(|(n, e)| (n.clone(), diff(&e.configured, &e.current)))
            .collect();
        if let Err(e) = overrides::save(path, &changes) {
            tracing::error!(state_file = %path.display(), "runtime changes not saved (they apply until the agent stops): {e:#}");
        }
    }
}

/// A reloaded probe's settings: the new configuration's, except fields changed at runtime
/// (where `current` differs from what was configured), which keep their runtime value.
fn merged(configured: &Settings, current: &Settings, new: &Settings) -> Settings {
    Settings {
        switch: if current.switch == configured.switch {
            new.switch
        } else {
            current.switch
        },
        interval: if current.interval == configured.interval {
            new.interval
        } else {
            current.interval
        },
        params: if current.params == configured.params {
            new.params.clone()
        } else {
            current.params.clone()
        },
    }
}

/// The change that turns `from` into `to`, field by field.
fn diff(from: &Settings, to: &Settings) -> Change {
    Change {
        switch: (from.switch != to.switch).then_some(to.switch),
        interval_secs: (from.interval != to.interval).then_some(to.interval.as_secs()),
        params: (from.params != to.params).then(|| match &to.params {
            Params::Native(t) => t.clone(),
            Params::Extension(p) => {
                let mut t = toml::Table::new();
                t.insert("param".into(), toml::Value::String(p.clone()));
                t
            }
        }),
    }
}

/// The settings `change` asks for, validated against what the probe is.
fn resolve(name: &str, e: &Entry, change: &Change) -> Result<Settings, ControlError> {
    let mut s = e.current.clone();
    if let Some(switch) = change.switch {
        if switch == Switch::Auto {
            match &e.ext {
                None => {
                    return Err(invalid(
                        "switch",
                        "native probes have no start check: use on or off",
                    ));
                }
                Some((x, _)) if x.start_check.is_none() => {
                    return Err(invalid(
                        "switch",
                        format!(
                            "probe {name:?} has no start_check in the configuration, so auto has \
                             nothing to decide with"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        s.switch = switch;
    }
    if let Some(secs) = change.interval_secs {
        if e.kind == Kind::Extension {
            return Err(invalid(
                "interval_seconds",
                "extension probes keep their own cadence (set it through their param)",
            ));
        }
        if !(1..=MAX_INTERVAL_SECS).contains(&secs) {
            return Err(invalid(
                "interval_seconds",
                format!("expected 1..={MAX_INTERVAL_SECS} seconds, found {secs}"),
            ));
        }
        s.interval = Duration::from_secs(secs);
    }
    if let Some(params) = &change.params {
        s.params = match e.kind {
            // Building the probe is the validation: it is the one place that knows its params.
            Kind::Native => {
                probes::registry::build(name, params).map_err(|err| param_error(&err))?;
                Params::Native(params.clone())
            }
            Kind::Extension => {
                if !e.ext.as_ref().is_some_and(|(x, _)| x.remote_param) {
                    return Err(invalid(
                        "params.param",
                        format!(
                            "probe {name:?} does not take params over the control channel (its \
                             [[extend_probes]] entry would need remote_param = true)"
                        ),
                    ));
                }
                Params::Extension(extension_param(params)?)
            }
        };
    }
    Ok(s)
}

/// `probes[tcp].params.max_links: expected …` → field `params.max_links`.
fn param_error(e: &anyhow::Error) -> ControlError {
    let text = format!("{e:#}");
    match text.split_once(": ") {
        Some((place, message)) if place.contains("params.") => {
            let field = place.rsplit_once("params.").map_or("params", |(_, k)| k);
            invalid(&format!("params.{field}"), message)
        }
        _ => invalid("params", text),
    }
}

/// Characters a runtime `param` may use. The command runs through `sh -c`, so anything that
/// could start a second command, expand, redirect or quote is refused: a client can change the
/// arguments of a configured command, never run another one.
fn param_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || " _./:=,@%+-".contains(c)
}

fn extension_param(params: &toml::Table) -> Result<String, ControlError> {
    let mut param = String::new();
    for (k, v) in params {
        if k != "param" {
            return Err(invalid(
                &format!("params.{k}"),
                "extension probes take only \"param\" (the arguments of their command)",
            ));
        }
        let Some(text) = v.as_str() else {
            return Err(invalid(
                "params.param",
                format!("expected a string, found {v}"),
            ));
        };
        if let Some(bad) = text.chars().find(|c| !param_char_ok(*c)) {
            return Err(invalid(
                "params.param",
                format!(
                    "{bad:?} is not allowed: runtime params are words of [A-Za-z0-9_./:=,@%+-] \
                     separated by spaces (change the command itself in the configuration file)"
                ),
            ));
        }
        if text.len() > 4096 {
            return Err(invalid("params.param", "longer than 4096 bytes"));
        }
        text.clone_into(&mut param);
    }
    Ok(param)
}

fn extension(
    e: &ExtendProbe,
    param: &str,
    tables: Vec<TableMeta>,
    env: &ExtEnv,
    catalog: Arc<Catalog>,
) -> Arc<dyn Probe> {
    let probe = ExtensionProbe::new(&e.name, &e.command, param, tables, env.stop_grace)
        .in_dir(env.base.clone());
    probe.set_catalog(catalog);
    Arc::new(probe)
}

type Built = (BTreeMap<String, Entry>, Arc<Catalog>, Vec<Arc<dyn Probe>>);

/// Every configured probe, built, with its tables registered.
fn build_all(cfg: &Config, env: &ExtEnv, store: &mut Store) -> anyhow::Result<Built> {
    use anyhow::Context as _;
    let mut catalog = Catalog::new();
    let mut native_tables = std::collections::HashSet::new();
    let register = |store: &mut Store, catalog: Option<&mut Catalog>, meta: TableMeta| {
        let name = meta.name.clone();
        store
            .register(meta.clone())
            .with_context(|| format!("registering table {name}"))?;
        if let Some(catalog) = catalog {
            catalog.insert(name, Arc::new(meta));
        }
        anyhow::Ok(())
    };
    for meta in config::load_meta_dirs(&cfg.meta.dirs).context("loading meta files")? {
        register(store, Some(&mut catalog), meta)?;
    }
    let mut entries = BTreeMap::new();
    let mut built: Vec<Arc<dyn Probe>> = Vec::new();
    for p in &cfg.probes {
        let probe = probes::registry::build(&p.name, &p.params)?;
        let tables = probe.tables();
        let names = tables.iter().map(|t| t.name.clone()).collect();
        for meta in tables {
            // A native probe's table is its own: no extension probe may write into it.
            catalog.remove(&meta.name);
            native_tables.insert(meta.name.clone());
            register(store, None, meta)?;
        }
        let settings = Settings {
            switch: p.switch,
            interval: p.interval,
            params: Params::Native(p.params.clone()),
        };
        entries.insert(
            p.name.clone(),
            Entry::new(Kind::Native, settings, None, names),
        );
        built.push(probe);
    }
    let mut extensions = Vec::new();
    for e in &cfg.extend_probes {
        let tables = match &e.meta {
            Some(path) => config::load_meta_file(path)
                .with_context(|| format!("loading the meta file of extension probe {}", e.name))?,
            None => Vec::new(),
        };
        for meta in &tables {
            if native_tables.contains(&meta.name) {
                anyhow::bail!(
                    "extension probe {}: its meta file defines table {:?}, which the native probes \
                     fill; rename the table",
                    e.name,
                    meta.name
                );
            }
            register(store, Some(&mut catalog), meta.clone())?;
        }
        let settings = Settings {
            switch: e.switch,
            interval: EXTENSION_INTERVAL,
            params: Params::Extension(e.param.clone()),
        };
        let names = tables.iter().map(|t| t.name.clone()).collect();
        let ext = Some((e.clone(), tables.clone()));
        entries.insert(
            e.name.clone(),
            Entry::new(Kind::Extension, settings, ext, names),
        );
        extensions.push((e, tables));
    }
    // Rows may go to any registered table but a native one (gala-gopher's meta directory was
    // shared by all its probes).
    let catalog = Arc::new(catalog);
    for (e, tables) in extensions {
        built.push(extension(e, &e.param, tables, env, Arc::clone(&catalog)));
    }
    Ok((entries, catalog, built))
}

/// The state file's directory must exist for the atomic rename: made at start if missing
/// (systemd's StateDirectory= makes it under the unit), so a bad path fails the start, not the
/// first change.
pub fn prepare_state_dir(path: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir
        && !dir.is_dir()
    {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "control.state_file: cannot create directory {}",
                dir.display()
            )
        })?;
    }
    Ok(())
}
