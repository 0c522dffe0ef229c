//! From the configuration to what the probe controller runs: every configured probe built (native
//! ones through the registry, extension ones from their `[[extend_probes]]` entry), with its
//! definition and settings, and every table registered in the store (meta directories, native
//! probes, extension probes' meta files). At start and at each reload (SIGHUP).

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context as _;

use crate::{
    config::{self, Config, ExtendProbe},
    imdb::{Store, TableMeta},
    probes::{
        Controller, ProbeKind, Settings,
        controller::{ExtensionEnv, Plan, Planned, build_extension},
        extension::Catalog,
        registry,
        settings::{Definition, EXTENSION_INTERVAL, Extension, Params},
    },
};

/// Where extension probes run (relative paths are relative to `base`, the configuration file's
/// directory) and how they are checked and stopped.
pub fn extension_env(cfg: &Config, base: Option<PathBuf>) -> ExtensionEnv {
    ExtensionEnv {
        base,
        stop_grace: cfg.supervision.stop_grace,
        check_interval: cfg.supervision.start_check_interval,
        check_timeout: cfg.supervision.start_check_timeout,
    }
}

/// An extension probe's configuration entry as the controller keeps it.
/// `default_user`: `[supervision] probe_user`, for entries without a `user` of their own; an
/// empty name is the agent's own user.
fn extension(e: &ExtendProbe, default_user: &str, tables: Vec<TableMeta>) -> Extension {
    let user = e.user.as_deref().unwrap_or(default_user);
    Extension {
        command: e.command.clone(),
        param: e.param.clone(),
        start_check: e.start_check.clone(),
        check_type: e.check_type,
        switch: e.switch,
        meta: e.meta.clone(),
        remote_param: e.remote_param,
        user: (!user.is_empty()).then(|| user.to_owned()),
        tables,
    }
}

/// Every configured probe, built, with its tables registered in `store`.
pub fn plan(cfg: &Config, env: &ExtensionEnv, store: &mut Store) -> anyhow::Result<Plan> {
    let mut catalog = Catalog::new();
    let mut native_tables = HashSet::new();
    // Probes write rows in their own meta's order; the stored meta may carry the container
    // labels after them (appended at ingest, see enrich.rs).
    let labels = cfg.global.container_labels;
    let register = |store: &mut Store, catalog: Option<&mut Catalog>, meta: TableMeta| {
        let name = meta.name.clone();
        let stored = if labels {
            super::enrich::with_labels(meta.clone())
        } else {
            meta.clone()
        };
        store
            .register(stored)
            .with_context(|| format!("registering table {name}"))?;
        if let Some(catalog) = catalog {
            catalog.insert(name, Arc::new(meta));
        }
        anyhow::Ok(())
    };
    for meta in config::load_meta_dirs(&cfg.meta.dirs).context("loading meta files")? {
        register(store, Some(&mut catalog), meta)?;
    }
    let mut probes = Vec::new();
    for p in &cfg.probes {
        let probe = registry::build(&p.name, &p.params)?;
        let tables = probe.tables();
        let names = tables.iter().map(|t| t.name.clone()).collect();
        for meta in tables {
            // A native probe's table is its own: no extension probe may write into it.
            catalog.remove(&meta.name);
            native_tables.insert(meta.name.clone());
            register(store, None, meta)?;
        }
        probes.push(Planned {
            probe,
            definition: Definition {
                kind: ProbeKind::Native,
                tables: names,
                extension: None,
                native_check: registry::find(&p.name).and_then(|n| n.start_check),
            },
            settings: Settings {
                switch: p.switch,
                interval: p.interval,
                params: Params::Native(p.params.clone()),
            },
        });
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
        extensions.push((e, tables));
    }
    // Rows may go to any registered table but a native one (gala-gopher's meta directory was
    // shared by all its probes).
    let catalog = Arc::new(catalog);
    for (e, tables) in extensions {
        let names = tables.iter().map(|t| t.name.clone()).collect();
        let ext = extension(e, &cfg.supervision.probe_user, tables);
        probes.push(Planned {
            probe: build_extension(&e.name, &ext, &e.param, env, Arc::clone(&catalog)),
            definition: Definition {
                kind: ProbeKind::Extension,
                tables: names,
                extension: Some(ext),
                native_check: None,
            },
            settings: Settings {
                switch: e.switch,
                interval: EXTENSION_INTERVAL,
                params: Params::Extension(e.param.clone()),
            },
        });
    }
    Ok(Plan { probes, catalog })
}

/// Makes a reloaded configuration's probes true. They are all built against a scratch table
/// store first: a missing meta file or a clashing table refuses the reload as a whole, before
/// anything changes.
pub async fn reload(ctl: &Controller, cfg: &Config, store: &Mutex<Store>) -> anyhow::Result<()> {
    let env = ctl.extension_env();
    let limits = store
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .limits();
    plan(cfg, env, &mut Store::new(limits))?;
    // Valid: now for real (the same build, so the same result).
    let plan = {
        let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
        plan(cfg, env, &mut store)?
    };
    ctl.reload(plan).await
}
