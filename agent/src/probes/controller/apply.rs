//! Making one probe's settings true: rebuilt when its interval or params change (before anything
//! is stopped, so a probe that cannot be built keeps running as it was), stopped and started as
//! its switch says, its start check run for `auto`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{Controller, build_extension};
use crate::probes::{
    Probe, State,
    extension::start_check::{self, StartCheck},
    registry,
    settings::{ControlError, Params, Settings, Switch, param_error},
};

/// How long `set` waits for a probe switched on to come up (attach, spawn) before answering
/// with whatever state it is in.
const START_WAIT: Duration = Duration::from_secs(30);

impl Controller {
    /// Makes `wanted` true for `name`: rebuilds the probe if its interval or params change,
    /// stops and starts it as its switch says. `wait`: answer only once a probe switched on
    /// runs (or failed). Callers hold the `apply` lock.
    pub(super) async fn apply(
        &self,
        name: &str,
        wanted: Settings,
        wait: bool,
    ) -> Result<(), ControlError> {
        self.apply_with(name, wanted, false, wait).await
    }

    /// [`Controller::apply`]; `force` rebuilds and restarts the probe even when its settings
    /// stay (its definition in the configuration changed: command, start check, meta file).
    pub(super) async fn apply_with(
        &self,
        name: &str,
        wanted: Settings,
        force: bool,
        wait: bool,
    ) -> Result<(), ControlError> {
        let manager = &self.inner.manager;
        let (_, old) = manager
            .settings(name)
            .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
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
        manager.set_current(name, wanted.clone());
        let result = self
            .carry_out(name, &old, &wanted, built, force, wait)
            .await;
        if result.is_err() {
            // Say what is true: the old settings (the probe may be stopped: its state says so).
            manager.set_current(name, old);
        } else {
            tracing::info!(probe = %name, switch = %switch, "probe settings changed");
        }
        self.announce(name);
        result
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

    /// The probe `name` built with settings `s`, from its definition.
    pub(super) fn build(&self, name: &str, s: &Settings) -> Result<Arc<dyn Probe>, ControlError> {
        match &s.params {
            Params::Native(params) => registry::build(name, params).map_err(|e| param_error(&e)),
            Params::Extension(param) => {
                let ext = self
                    .inner
                    .manager
                    .definition(name)
                    .and_then(|d| d.extension)
                    .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
                Ok(build_extension(
                    name,
                    &ext,
                    param,
                    &self.inner.env,
                    self.catalog(),
                ))
            }
        }
    }

    pub(super) fn spawn_check(&self, name: &str) {
        let manager = &self.inner.manager;
        let Some((command, kind, user)) = manager.definition(name).and_then(|d| d.start_check())
        else {
            return;
        };
        let env = &self.inner.env;
        let (stop, rx) = watch::channel(false);
        let handle = start_check::spawn_auto(
            manager.clone(),
            StartCheck {
                probe: name.to_owned(),
                command,
                kind,
                interval: env.check_interval,
                timeout: env.check_timeout,
                workdir: env.base.clone(),
                user,
            },
            Arc::clone(&self.inner.metrics),
            rx,
        );
        manager.set_check(name, (stop, handle));
    }

    pub(super) async fn stop_check(&self, name: &str) {
        if let Some((stop, handle)) = self.inner.manager.take_check(name) {
            let _ = stop.send(true);
            let _ = handle.await;
        }
    }
}
