//! The agent's wiring: from the configuration to running probes, the table store, the sinks and
//! the control channel, in start-up and shutdown order. `main.rs` parses the command line and
//! calls [`run_agent`] or [`check_config`].
//!
//! The agent's own tasks run supervised (see `crate::supervise`): the ingest task, the
//! /metrics server and the Kafka sink are restarted with back-off after a panic or an unexpected
//! end and counted in `gopher_task_restarts_total{task}`; when one keeps failing, the agent stops
//! with a failure status so that systemd (`Restart=on-failure`) restarts it whole. Each beats a
//! heartbeat that the systemd watchdog checks before every ping.
//!
//! - [`plan`]: the configured probes built and their tables registered (start and reload);
//! - [`ingest`]: probe rows into the store, records aged out;
//! - `signals`: SIGTERM/SIGINT, SIGHUP reload.

mod enrich;
pub mod ingest;
pub mod plan;
pub mod preflight;
mod signals;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

use crate::{
    clock,
    config::{self, Config},
    control,
    egress::{http, kafka, prometheus::Naming},
    imdb::{Batch, Limits, Store},
    probes::{Controller, Manager, Policy, controller::state_file},
    service::{self, tasks},
    supervise::{Beating, Liveness, Restarts, STALL_BOUND, TICK},
    telemetry::SelfMetrics,
};

/// The target of the wiring's log lines: the binary's, as when they were written in `main.rs`
/// (log filters and the journald format show `gopher: serving /metrics`).
pub(crate) const LOG_TARGET: &str = "gopher";

/// `gopher --check-config FILE`: 0 when valid, 1 with every error (file:line:col: key: why).
pub fn check_config(path: &Path) -> ExitCode {
    let errors = match config::load(path) {
        Ok(cfg) => {
            for w in cfg.gala.iter().flat_map(config::GalaNotes::warnings) {
                eprintln!("warning: {w}");
            }
            meta_errors(&cfg)
        }
        Err(e) => vec![e],
    };
    if errors.is_empty() {
        println!("{}: OK", path.display());
        return ExitCode::SUCCESS;
    }
    for e in errors {
        eprintln!("{e}");
    }
    ExitCode::FAILURE
}

/// `gopher convert FILE [OUT]`: writes the `probes.toml` equivalent of gala-gopher's
/// `gala-gopher.conf` to OUT (or stdout); what is not carried over is said on stderr and in
/// comments at the top.
pub fn convert(path: &Path, out: Option<&Path>) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let toml = match config::convert_gala(&text, path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for line in toml.lines().filter_map(|l| l.strip_prefix("# NOTE: ")) {
        eprintln!("warning: {line}");
    }
    let written = if let Some(out) = out {
        std::fs::write(out, &toml).map_err(|e| format!("{}: {e}", out.display()))
    } else {
        print!("{toml}");
        Ok(())
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `gopher check`: the preflight ([`preflight`]) for the configuration at `path`; 0 when the
/// host is ready, 1 with one line per problem.
pub fn check(path: &Path) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let problems = preflight::problems(&preflight::Checks {
        cfg: &cfg,
        base: path.parent().filter(|p| !p.as_os_str().is_empty()),
        ports: true,
    });
    if problems.is_empty() {
        println!("{}: ready", path.display());
        return ExitCode::SUCCESS;
    }
    for p in &problems {
        println!("{p}");
    }
    ExitCode::FAILURE
}

/// Logs the preflight's problems as warnings, from a thread of its own (a broker that does not
/// answer must not delay the start). The ports are left to the agent's own binds.
fn log_preflight(cfg: &Config, base: Option<PathBuf>) {
    let cfg = cfg.clone();
    let spawned = std::thread::Builder::new()
        .name("preflight".into())
        .spawn(move || {
            let checks = preflight::Checks {
                cfg: &cfg,
                base: base.as_deref(),
                ports: false,
            };
            for p in preflight::problems(&checks) {
                tracing::warn!(target: LOG_TARGET, "preflight: {p}");
            }
        });
    if let Err(e) = spawned {
        tracing::debug!(target: LOG_TARGET, "preflight not run: {e}");
    }
}

/// Runs the agent with the configuration file at `path` until SIGTERM or SIGINT.
/// `web_config`: node_exporter's `--web.config.file`, over `[web_server] web_config_file`.
pub fn run_agent(path: &Path, web_config: Option<&Path>) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = service::logging::init(&cfg.global) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    for w in cfg.gala.iter().flat_map(config::GalaNotes::warnings) {
        tracing::warn!(target: LOG_TARGET, "{w}");
    }
    match service::limits::raise_nofile() {
        Ok((before, after)) if before != after => {
            tracing::debug!(target: LOG_TARGET, before, after, "raised the open-files soft limit");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(target: LOG_TARGET, "cannot raise the open-files soft limit: {e}"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Relative paths in extension probe commands and start checks are relative to this.
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from);
    let web_config = web_config.map(Path::to_path_buf);
    log_preflight(&cfg, base.clone());
    match runtime.block_on(run(cfg, base, path.to_owned(), web_config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(target: LOG_TARGET, "{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The meta files a valid config refers to (directories and extension probes' files), read the
/// way the agent will read them at start, so that `--check-config` vouches for them too.
pub(crate) fn meta_errors(cfg: &Config) -> Vec<config::ConfigError> {
    let mut errors = Vec::new();
    if let Err(e) = config::load_meta_dirs(&cfg.meta.dirs) {
        errors.push(e);
    }
    for path in cfg.extend_probes.iter().filter_map(|e| e.meta.as_ref()) {
        if let Err(e) = config::load_meta_file(path) {
            errors.push(e);
        }
    }
    errors
}

/// Capacity of the rows channel, in batches. Extension probes cap a batch at 64 KiB, so this
/// also caps what flooding probes can have in flight (they block on their full pipes beyond it).
const ROWS_CHANNEL: usize = 64;

/// How long in-flight control calls get to finish at shutdown.
const CONTROL_DRAIN: Duration = Duration::from_secs(2);

// The wiring in start-up and shutdown order, which reads best in one piece.
#[allow(clippy::too_many_lines)]
async fn run(
    cfg: Config,
    base: Option<PathBuf>,
    path: PathBuf,
    web_config: Option<PathBuf>,
) -> anyhow::Result<()> {
    // Starts the monotonic clock the store ages records on.
    let _ = clock::mono_ms();
    let metrics = Arc::new(SelfMetrics::new());
    let mut store = Store::new(Limits {
        max_tables: cfg.imdb.max_tables_num,
        max_records: cfg.imdb.max_records_num,
        max_metrics: cfg.imdb.max_metrics_num,
        record_timeout_ms: cfg.imdb.record_timeout.as_millis() as u64,
    });
    let (rows_tx, rows_rx) = mpsc::channel::<Batch>(ROWS_CHANNEL);
    let sup = &cfg.supervision;
    let policy = Policy {
        backoff_initial: sup.restart_backoff,
        backoff_max: sup.restart_backoff_max,
        max_quick_failures: sup.max_quick_failures,
        stable_after: sup.stable_after,
        // Extension probes get stop_grace before SIGKILL; allow for that plus reaping.
        stop_timeout: sup.stop_grace + Duration::from_secs(5),
    };
    let manager = Manager::with_policy(
        rows_tx,
        Arc::clone(&metrics),
        cfg.imdb.record_timeout,
        policy,
    );
    if let Some(path) = &cfg.control.state_file {
        state_file::prepare_dir(path)?;
    }
    let env = plan::extension_env(&cfg, base);
    let probes = plan::plan(&cfg, &env, &mut store)?;
    let ctl = Controller::new(
        manager.clone(),
        Arc::clone(&metrics),
        env,
        cfg.control.state_file.clone(),
        probes,
    )?;
    let store = Arc::new(Mutex::new(store));
    let liveness = manager.liveness();
    // A task that keeps failing says so here; the agent then stops with a failure status.
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<String>(4);
    let (ingest_stop, ingest_stop_rx) = watch::channel(false);
    let ingest = tokio::spawn(Beating::new(
        ingest::supervised_ingest(
            rows_rx,
            Arc::clone(&store),
            ingest_stop_rx,
            Restarts::new("ingest", policy, &metrics),
            fatal_tx.clone(),
        ),
        liveness.register("ingest", STALL_BOUND),
        TICK,
    ));
    let expiry = tokio::spawn(ingest::expire_every(
        ingest::expiry_period(cfg.imdb.record_timeout),
        Arc::clone(&store),
        Arc::clone(&metrics),
    ));
    let trimming = tokio::spawn(crate::mem::trim_every(crate::mem::TRIM_EVERY));
    ctl.start()?;

    let security = match web_config
        .as_ref()
        .or(cfg.web_server.web_config_file.as_ref())
    {
        None => http::Security::default(),
        Some(file) => http::Security::from_config(&config::load_web_config(file)?, &metrics)
            .with_context(|| format!("web_server.web_config_file {}", file.display()))?,
    };
    let listener = http::bind(&cfg.web_server.bind_addr, cfg.web_server.port).await?;
    tracing::info!(target: LOG_TARGET,
        addr = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
        tls = security.tls.is_some(),
        basic_auth = security.users.is_some(),
        "serving /metrics"
    );
    let (shutdown_tx, _shutdown_rx) = watch::channel(false);
    let naming = match cfg.web_server.metric_names {
        config::MetricNames::Gopher => Naming::Gopher,
        config::MetricNames::GalaGopher => Naming::gala_gopher(),
    };
    if let Naming::GalaGopher { machine_id } = &naming {
        tracing::info!(target: LOG_TARGET, machine_id, "/metrics uses gala-gopher's names");
    }
    let web_state = Arc::new(
        http::WebState::new(Arc::clone(&store), Arc::clone(&metrics), clock::mono_ms)
            .with_naming(naming)
            .secured(security),
    );
    let web = tokio::spawn(Beating::new(
        tasks::web(
            listener.into_std()?,
            web_state,
            shutdown_tx.subscribe(),
            Restarts::new("web", policy, &metrics),
            fatal_tx.clone(),
        ),
        liveness.register("web", STALL_BOUND),
        TICK,
    ));

    let kafka = start_kafka(
        &cfg,
        &store,
        &metrics,
        shutdown_tx.subscribe(),
        policy,
        &liveness,
        fatal_tx,
    )?;
    let control = start_control(&cfg, &ctl, &metrics, shutdown_tx.subscribe()).await?;
    let _rest = start_rest(&cfg, &ctl, &metrics, shutdown_tx.subscribe()).await?;

    // Ready for systemd (Type=notify) once /metrics is served and every sink started.
    let notifier = Arc::new(service::notify::Notifier::from_env());
    notifier.ready();
    let _watchdog = notifier.spawn_watchdog(liveness);
    let fatal = tokio::select! {
        r = signals::serve_signals(&path, cfg, &ctl, &store, &metrics) => {
            r?;
            None
        }
        Some(why) = fatal_rx.recv() => Some(why),
    };
    tracing::info!(target: LOG_TARGET, "stopping");
    notifier.stopping();
    // Start checks first (so that none starts a probe being stopped), then the probes.
    ctl.shutdown().await;
    // The probes' last rows into the store before the sinks' last pass.
    let _ = ingest_stop.send(true);
    let _ = ingest.await;
    expiry.abort();
    trimming.abort();
    let _ = shutdown_tx.send(true);
    let _ = web.await;
    if let Some(mut control) = control {
        // Graceful shutdown waits for clients to hang up; a `gopher ctl watch` never does.
        if tokio::time::timeout(CONTROL_DRAIN, &mut control)
            .await
            .is_err()
        {
            control.abort();
        }
    }
    // After the probes stopped: its last pass sends their final rows, then flushes (bounded).
    if let Some(kafka) = kafka {
        let _ = kafka.await;
    }
    match fatal {
        Some(why) => anyhow::bail!("stopped because the {why}"),
        None => Ok(()),
    }
}

/// Starts the Kafka sink when `kafka.switch = "on"`. A producer librdkafka refuses to create (an
/// unknown or invalid `kafka.properties` entry) stops the agent at start, like any config error;
/// an absent broker does not (librdkafka keeps connecting in the background).
fn start_kafka(
    cfg: &Config,
    store: &Arc<Mutex<Store>>,
    metrics: &Arc<SelfMetrics>,
    shutdown: watch::Receiver<bool>,
    policy: Policy,
    liveness: &Liveness,
    fatal: mpsc::Sender<String>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if !cfg.kafka.switch.is_on() {
        return Ok(None);
    }
    let sink = kafka::KafkaSink::new(
        &cfg.kafka,
        kafka::Identity::of_this_host(),
        Arc::clone(metrics),
    )?;
    tracing::info!(target: LOG_TARGET,
        brokers = %cfg.kafka.kafka_broker,
        topic = %cfg.kafka.kafka_topic,
        metadata_topic = %cfg.kafka.metadata_topic,
        "producing to Kafka"
    );
    // A pass may wait up to one interval for queue room, then the next tick comes.
    let heartbeat = liveness.register("kafka", cfg.egress.interval * 2 + STALL_BOUND);
    let task = tasks::KafkaTask {
        cfg: cfg.kafka.clone(),
        interval: cfg.egress.interval,
        store: Arc::clone(store),
        metrics: Arc::clone(metrics),
        shutdown,
        clock: clock::wall_ms,
        heartbeat,
    };
    let restarts = Restarts::new("kafka", policy, metrics);
    Ok(Some(tokio::spawn(task.supervise(sink, restarts, fatal))))
}

/// Serves the control channel when `control.switch = "on"`.
async fn start_control(
    cfg: &Config,
    ctl: &Controller,
    metrics: &Arc<SelfMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if !cfg.control.switch.is_on() {
        return Ok(None);
    }
    let (addr, serving) = control::server::bind(&cfg.control, ctl.clone(), metrics, async move {
        let _ = shutdown.wait_for(|s| *s).await;
    })
    .await?;
    let c = &cfg.control;
    if c.token_file.is_none() && c.tls_client_ca.is_none() {
        // Only with insecure = true: allowed (an operator may rely on network policy or a
        // single-user machine), said out loud.
        tracing::warn!(target: LOG_TARGET, %addr, "control channel open to any client that reaches it: no token_file and no tls_client_ca");
    }
    tracing::info!(target: LOG_TARGET,
        %addr,
        tls = cfg.control.tls(),
        token = cfg.control.token_file.is_some(),
        "serving the control channel (gRPC)"
    );
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = serving.await {
            tracing::error!(target: LOG_TARGET, "{e:#}");
        }
    })))
}

/// gala-gopher's REST probe API, when `[rest_api] switch = "on"`: the control channel's token.
async fn start_rest(
    cfg: &Config,
    ctl: &Controller,
    metrics: &Arc<SelfMetrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if !cfg.rest_api.switch.is_on() {
        return Ok(None);
    }
    let token = cfg
        .control
        .token_file
        .as_deref()
        .map(control::auth::ensure_token)
        .transpose()?;
    let auth = control::auth::TokenCheck::new(token, metrics);
    let tls = cfg
        .rest_api
        .tls()
        .as_ref()
        .map(|t| crate::egress::http::tls_acceptor(t, metrics))
        .transpose()
        .context("rest_api: tls_cert/tls_key/tls_client_ca")?;
    let (addr, task) = control::rest::serve(
        cfg.rest_api.listen,
        tls,
        ctl.clone(),
        auth,
        Arc::clone(metrics),
        shutdown,
    )
    .await?;
    tracing::info!(target: LOG_TARGET, %addr, tls = cfg.rest_api.tls_cert.is_some(), token = cfg.control.token_file.is_some(), "serving gala-gopher's REST probe API");
    Ok(Some(task))
}
