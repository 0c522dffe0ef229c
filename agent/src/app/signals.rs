//! Signals: SIGTERM and SIGINT stop the agent; SIGHUP reloads the configuration file (probes
//! follow it at once, through the probe controller; a bad file is refused whole).

use std::{path::Path, sync::Mutex};

use anyhow::Context as _;

use super::{LOG_TARGET, meta_errors, plan};
use crate::{
    config::{self, Config},
    imdb::Store,
    probes::Controller,
    telemetry::{CONFIG_RELOADS, SelfMetrics},
};

/// Until SIGTERM or SIGINT; SIGHUP reloads the configuration file in between.
pub async fn serve_signals(
    path: &Path,
    mut current: Config,
    ctl: &Controller,
    store: &Mutex<Store>,
    metrics: &SelfMetrics,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                let result = match reload(path, &current, ctl, store).await {
                    Ok(new) => {
                        current = new;
                        "ok"
                    }
                    Err(e) => {
                        tracing::error!(target: LOG_TARGET, "configuration reload refused, the running configuration stays: {e:#}");
                        "error"
                    }
                };
                metrics.counter(CONFIG_RELOADS, &[("result", result)]).inc();
            }
        }
    }
}

/// Reads and applies the configuration file again. Probes follow it at once; the other
/// sections (listeners, Kafka, table store limits, logging) are read at start only.
async fn reload(
    path: &Path,
    current: &Config,
    ctl: &Controller,
    store: &Mutex<Store>,
) -> anyhow::Result<Config> {
    tracing::info!(target: LOG_TARGET, config = %path.display(), "SIGHUP: reloading the configuration");
    let new = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let meta = meta_errors(&new);
    if let Some(e) = meta.first() {
        anyhow::bail!("{e}");
    }
    let restart_only = [
        ("global", current.global != new.global),
        ("ingress", current.ingress != new.ingress),
        ("egress", current.egress != new.egress),
        ("imdb", current.imdb != new.imdb),
        ("web_server", current.web_server != new.web_server),
        ("kafka", current.kafka != new.kafka),
        ("supervision", current.supervision != new.supervision),
        ("control", current.control != new.control),
        ("rest_api", current.rest_api != new.rest_api),
    ];
    for (section, changed) in restart_only {
        if changed {
            tracing::warn!(target: LOG_TARGET,
                section,
                "config reload: [{section}] changed; it takes effect at the next restart"
            );
        }
    }
    plan::reload(ctl, &new, store).await?;
    Ok(new)
}
