//! A new configuration (SIGHUP) made true without a restart, and the state file: its changes laid
//! over the configuration at start, and rewritten after every change.

use std::collections::BTreeMap;

use super::{Controller, Event, Plan, Planned, state_file};
use crate::probes::settings::{Change, ControlError, Settings, Switch, diff, merged, resolve};

impl Controller {
    /// Makes a new configuration true without a restart: probes that left it are stopped and
    /// forgotten, new ones are started, changed ones are rebuilt and restarted; unchanged ones
    /// are not touched. Runtime changes made over the control channel stay on top of the new
    /// configuration, field by field. `plan` is the new configuration's probes, built (the
    /// caller built them against a scratch table store first, so that a missing meta file or a
    /// clashing table refuses the reload as a whole, and registered their tables). Applying
    /// does not wait for probes to come up (a reload must not hold off SIGTERM); a probe that
    /// cannot be applied is reported and the others still are.
    pub async fn reload(&self, plan: Plan) -> anyhow::Result<()> {
        let _one_at_a_time = self.inner.apply.lock().await;
        if self.refuse_if_shut().is_err() {
            return Ok(());
        }
        *self
            .inner
            .catalog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = plan.catalog;
        let fresh: BTreeMap<String, Planned> = plan
            .probes
            .into_iter()
            .map(|p| (p.probe.name().to_owned(), p))
            .collect();
        let manager = &self.inner.manager;
        for view in manager.views() {
            // A name that changed kind (native <-> extension) is a different probe.
            if fresh
                .get(&view.name)
                .is_some_and(|p| p.definition.kind == view.kind)
            {
                continue;
            }
            self.remove_probe(&view.name).await;
        }
        let mut changed = 0usize;
        let mut errors = Vec::new();
        for (name, new) in fresh {
            let old = manager
                .settings(&name)
                .zip(manager.definition(&name).map(|d| d.extension));
            match old {
                None => {
                    if let Err(e) = self.add_probe(&name, new) {
                        errors.push(format!("probe {name}: {e:#}"));
                    }
                    changed += 1;
                }
                Some(((configured, current), ext)) => {
                    if configured == new.settings && ext == new.definition.extension {
                        continue;
                    }
                    match self.change_probe(&name, new, &configured, &current).await {
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
    fn add_probe(&self, name: &str, new: Planned) -> anyhow::Result<()> {
        let switch = new.settings.switch;
        let manager = &self.inner.manager;
        manager.define(new.probe, new.definition, new.settings);
        tracing::info!(probe = %name, "config reload: probe added");
        let started = match switch {
            Switch::On => manager.start(name),
            Switch::Auto => {
                self.spawn_check(name);
                Ok(())
            }
            Switch::Off => Ok(()),
        };
        self.announce(name);
        started
    }

    /// A probe whose configuration changed: rebuilt from the new definition and restarted, with
    /// runtime changes kept on top. On failure it keeps its old definition, so that the same
    /// reload tries again.
    async fn change_probe(
        &self,
        name: &str,
        new: Planned,
        configured: &Settings,
        current: &Settings,
    ) -> Result<(), ControlError> {
        let wanted = merged(configured, current, &new.settings);
        if wanted != new.settings {
            tracing::warn!(probe = %name, "config reload: runtime changes from the control channel stay on top of the new configuration (`gopher ctl reset {name}` drops them)");
        }
        let manager = &self.inner.manager;
        // The new definition is what the probe is built from.
        let new_extension = new.definition.extension.clone();
        let Some(old) = manager.redefine(name, new.definition) else {
            return Err(ControlError::NotFound(name.to_owned()));
        };
        let definition_changed = old.extension != new_extension;
        let applied = self
            .apply_with(name, wanted, definition_changed, false)
            .await;
        if applied.is_ok() {
            manager.set_configured(name, new.settings);
            tracing::info!(probe = %name, "config reload: probe changed");
        } else {
            manager.redefine(name, old);
        }
        applied
    }

    /// Stops a probe, forgets it, and says so to watchers.
    async fn remove_probe(&self, name: &str) {
        self.stop_check(name).await;
        let manager = &self.inner.manager;
        let _ = manager.stop(name).await;
        let Some(view) = manager.view(name) else {
            return;
        };
        if let Err(e) = manager.remove(name) {
            tracing::warn!(probe = %name, "config reload: probe not removed: {e:#}");
            return;
        }
        tracing::info!(probe = %name, "config reload: probe removed");
        let _ = self.inner.events.send(Event::Removed(view));
    }

    /// Lays the state file's changes over the configuration (before anything starts). A change
    /// the current configuration no longer allows is skipped with a warning, not fatal: the
    /// configuration file stays the authority.
    pub(super) fn load_overrides(&self) -> anyhow::Result<()> {
        let Some(path) = &self.inner.state_file else {
            return Ok(());
        };
        let changes = match state_file::load(path) {
            Ok(c) => c,
            Err(e) => {
                // The configuration file stays the authority: a damaged state file costs the
                // runtime changes, not the agent.
                tracing::error!(state_file = %path.display(), "runtime changes not loaded: {e:#}");
                return Ok(());
            }
        };
        let manager = &self.inner.manager;
        for (name, change) in changes {
            let (Some(def), Some((_, current))) =
                (manager.definition(&name), manager.settings(&name))
            else {
                tracing::warn!(state_file = %path.display(), probe = %name, "runtime change for a probe that is no longer configured; ignored");
                continue;
            };
            match resolve(&name, &def, &current, &change) {
                Ok(s) if s == current => {}
                Ok(s) => {
                    let rebuild = s.interval != current.interval || s.params != current.params;
                    if rebuild {
                        match self.build(&name, &s) {
                            Ok(p) => manager.replace(p, s.interval)?,
                            Err(err) => {
                                tracing::warn!(state_file = %path.display(), probe = %name, "runtime change no longer valid ({err}); using the configuration");
                                continue;
                            }
                        }
                    }
                    tracing::info!(state_file = %path.display(), probe = %name, switch = %s.switch, "runtime change kept from an earlier run");
                    manager.set_current(&name, s);
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
    pub(super) fn persist(&self) {
        let Some(path) = &self.inner.state_file else {
            return;
        };
        let changes: BTreeMap<String, Change> = self
            .inner
            .manager
            .all_settings()
            .into_iter()
            .filter(|(_, configured, current)| current != configured)
            .map(|(n, configured, current)| (n, diff(&configured, &current)))
            .collect();
        if let Err(e) = state_file::save(path, &changes) {
            tracing::error!(state_file = %path.display(), "runtime changes not saved (they apply until the agent stops): {e:#}");
        }
    }
}
