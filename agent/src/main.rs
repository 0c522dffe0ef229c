//! `gopher`: the node agent's command line and wiring. Nothing clever lives here.
//!
//! The agent's own tasks run supervised (see `service::supervise`): the ingest task, the
//! /metrics server and the Kafka sink are restarted with back-off after a panic or an unexpected
//! end and counted in `gopher_task_restarts_total{task}`; when one keeps failing, the agent stops
//! with a failure status so that systemd (`Restart=on-failure`) restarts it whole. Each beats a
//! heartbeat that the systemd watchdog checks before every ping.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use gopher::{
    config::{self, Config},
    control::{self, Controller},
    egress::{http, kafka},
    clock,
    imdb::{Batch, Limits, Store},
    probes::{Manager, Policy, now_ms},
    selfmetrics::{CONFIG_RELOADS, SelfMetrics},
    service::{
        supervise::{Beating, CatchUnwind, Liveness, Restarts, STALL_BOUND, TICK},
        tasks,
    },
};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Parser)]
#[command(
    name = "gopher",
    version,
    about = "Host-resident node agent: eBPF and extension probes exported to Prometheus and Kafka"
)]
struct Cli {
    /// Configuration file to run with.
    #[arg(long, short, default_value = "/etc/gopher/probes.toml")]
    config: PathBuf,
    /// Validate FILE and exit: 0 when valid, 1 with every error (file:line:col: key: why).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Talk to a running agent over its control channel: list, get, set, reset, watch.
    Ctl(control::client::CtlArgs),
}

fn main() -> ExitCode {
    // Before any thread starts: the arena limit applies to arenas made from here on.
    gopher::mem::tune();
    let cli = Cli::parse();
    if let Some(Command::Ctl(args)) = cli.command {
        return ctl(args);
    }
    if let Some(path) = cli.check_config {
        let errors = match config::load(&path) {
            Ok(cfg) => meta_errors(&cfg),
            Err(e) => vec![e],
        };
        if errors.is_empty() {
            println!("{}: OK", path.display());
            return ExitCode::SUCCESS;
        }
        for e in errors {
            eprintln!("{e}");
        }
        return ExitCode::FAILURE;
    }
    let cfg = match config::load(&cli.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = gopher::service::logging::init(&cfg.global) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    match gopher::service::limits::raise_nofile() {
        Ok((before, after)) if before != after => {
            tracing::debug!(before, after, "raised the open-files soft limit");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-files soft limit: {e}"),
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
    let base = cli
        .config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from);
    match runtime.block_on(run(cfg, base, cli.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ctl(args: control::client::CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gopher ctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(control::client::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A refusal from the agent reads better as its gRPC code and message.
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("gopher ctl: {:?}: {}", s.code(), s.message()),
                None => eprintln!("gopher ctl: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// The meta files a valid config refers to (directories and extension probes' files), read the
/// way the agent will read them at start, so that `--check-config` vouches for them too.
fn meta_errors(cfg: &Config) -> Vec<config::ConfigError> {
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
async fn run(cfg: Config, base: Option<PathBuf>, path: PathBuf) -> anyhow::Result<()> {
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
        control::runtime::prepare_state_dir(path)?;
    }
    let ctl = Controller::new(
        &cfg,
        base,
        &mut store,
        manager.clone(),
        Arc::clone(&metrics),
    )?;
    let store = Arc::new(Mutex::new(store));
    let liveness = manager.liveness();
    // A task that keeps failing says so here; the agent then stops with a failure status.
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<String>(4);
    let (ingest_stop, ingest_stop_rx) = watch::channel(false);
    let ingest = tokio::spawn(Beating::new(
        supervised_ingest(
            rows_rx,
            Arc::clone(&store),
            ingest_stop_rx,
            Restarts::new("ingest", policy, &metrics),
            fatal_tx.clone(),
        ),
        liveness.register("ingest", STALL_BOUND),
        TICK,
    ));
    let expiry = tokio::spawn(expire_every(
        expiry_period(cfg.imdb.record_timeout),
        Arc::clone(&store),
        Arc::clone(&metrics),
    ));
    let trimming = tokio::spawn(trim_every(TRIM_EVERY));
    ctl.start()?;

    let listener = http::bind(&cfg.web_server.bind_addr, cfg.web_server.port).await?;
    tracing::info!(
        addr = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
        "serving /metrics"
    );
    let (shutdown_tx, _shutdown_rx) = watch::channel(false);
    let web_state = Arc::new(http::WebState::new(
        Arc::clone(&store),
        Arc::clone(&metrics),
        clock::mono_ms,
    ));
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

    // Ready for systemd (Type=notify) once /metrics is served and every sink started.
    let notifier = Arc::new(gopher::service::notify::Notifier::from_env());
    notifier.ready();
    let _watchdog = notifier.spawn_watchdog(liveness);
    let fatal = tokio::select! {
        r = serve_signals(&path, cfg, &ctl, &store, &metrics) => {
            r?;
            None
        }
        Some(why) = fatal_rx.recv() => Some(why),
    };
    tracing::info!("stopping");
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
    tracing::info!(
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
        clock: now_ms,
        heartbeat,
    };
    let restarts = Restarts::new("kafka", policy, metrics);
    Ok(Some(tokio::spawn(task.supervise(sink, restarts, fatal))))
}

/// [`ingest`] under supervision. The receiver outlives a run, so a panic loses at most the
/// batch being stored, never the queue. Ingest ends normally when stopped or when every sender
/// is gone (the manager holds one for the agent's life, so that means the agent is going away).
async fn supervised_ingest(
    mut rx: mpsc::Receiver<Batch>,
    store: Arc<Mutex<Store>>,
    stop: watch::Receiver<bool>,
    mut restarts: Restarts,
    fatal: mpsc::Sender<String>,
) {
    loop {
        restarts.started();
        let Err(panic) = CatchUnwind::new(ingest(&mut rx, Arc::clone(&store), stop.clone())).await
        else {
            return;
        };
        if let Err(e) = restarts.failed(&format!("panicked: {panic}")).await {
            let _ = fatal.send(e).await;
            return;
        }
    }
}

/// Serves the control channel when `control.switch = "on"`.
async fn start_control(
    cfg: &Config,
    ctl: &Controller,
    metrics: &Arc<SelfMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if !cfg.control.switch {
        return Ok(None);
    }
    let (addr, serving) = control::server::bind(&cfg.control, ctl.clone(), metrics, async move {
        let _ = shutdown.wait_for(|s| *s).await;
    })
    .await?;
    let c = &cfg.control;
    if !addr.ip().is_loopback() && c.token_file.is_none() && c.tls_client_ca.is_none() {
        // TLS alone encrypts but authenticates no client: allowed (an operator may rely on
        // network policy), said out loud.
        tracing::warn!(%addr, "control channel open to any client that reaches it: no token_file and no tls_client_ca");
    }
    tracing::info!(
        %addr,
        tls = cfg.control.tls(),
        token = cfg.control.token_file.is_some(),
        "serving the control channel (gRPC)"
    );
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = serving.await {
            tracing::error!("{e:#}");
        }
    })))
}

/// Moves probe rows into the store until `stop` (after the probes stopped), then takes what is
/// still queued. Rejected rows are counted by the store itself. Ending on `stop` rather than on
/// the last sender going away: control-channel connections may hold the probes' handles.
async fn ingest(
    rx: &mut mpsc::Receiver<Batch>,
    store: Arc<Mutex<Store>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let batch = tokio::select! {
            b = rx.recv() => b,
            _ = stop.wait_for(|s| *s) => None,
        };
        let batch = match batch {
            Some(b) => Some(b),
            None if *stop.borrow() => {
                rx.close();
                rx.recv().await
            }
            None => None,
        };
        let Some(batch) = batch else { break };
        // The store's clock is the monotonic one (see gopher::clock).
        let now = clock::mono_ms();
        store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .apply(batch, now);
    }
}

/// How often records are aged out: a quarter of the record timeout, between 100 ms and 1 s,
/// so a record outlives its timeout by at most that.
fn expiry_period(record_timeout: Duration) -> Duration {
    (record_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Ages records out on the monotonic clock, whether or not anyone scrapes: a Kafka-only node
/// must keep room for new records. Also mirrors the store's counters into the self-metrics.
async fn expire_every(period: Duration, store: Arc<Mutex<Store>>, metrics: Arc<SelfMetrics>) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut store = store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        store.expire(clock::mono_ms());
        gopher::selfmetrics::sync_from_store(&store, &metrics);
    }
}

/// How often the allocator's free memory is checked (and handed back when there is enough).
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Hands the memory a peak left free (a tcp collection and its batch, a scrape's render) back
/// to the kernel within a second of it; see `gopher::mem`.
async fn trim_every(period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        let free = gopher::mem::trim();
        if free > 0 {
            tracing::debug!(
                free,
                trim_us = started.elapsed().as_micros() as u64,
                "returned free heap memory to the kernel"
            );
        }
    }
}

/// Until SIGTERM or SIGINT; SIGHUP reloads the configuration file in between.
async fn serve_signals(
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
                        tracing::error!("configuration reload refused, the running configuration stays: {e:#}");
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
    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
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
    ];
    for (section, changed) in restart_only {
        if changed {
            tracing::warn!(
                section,
                "config reload: [{section}] changed; it takes effect at the next restart"
            );
        }
    }
    ctl.reload(&new, store).await?;
    Ok(new)
}
