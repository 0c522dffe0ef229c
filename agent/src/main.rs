//! `gopher`: the node agent's command line and wiring. Nothing clever lives here.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use gopher::{
    config::{self, Config, Switch},
    egress::{http, kafka},
    imdb::{Limits, Row, Store, TableMeta},
    probes::{
        Manager, Policy, Probe,
        extension::{
            Catalog, ExtensionProbe,
            start_check::{self, StartCheck},
        },
        now_ms, system,
        tcp::TcpProbe,
    },
    selfmetrics::SelfMetrics,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(run(cfg, base)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
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

/// Registers a table in the store and notes it in the catalog extension probes check rows with.
/// Registers a table; `catalog` (the tables extension probes may write) gets it too unless
/// it is a native probe's own table, which no extension probe may overwrite.
fn register(
    store: &mut Store,
    catalog: Option<&mut Catalog>,
    meta: TableMeta,
) -> anyhow::Result<()> {
    let name = meta.name.clone();
    store
        .register(meta.clone())
        .with_context(|| format!("registering table {name}"))?;
    if let Some(catalog) = catalog {
        catalog.insert(name, Arc::new(meta));
    }
    Ok(())
}

/// Builds every configured probe, registers its tables (and those of the meta directories) and
/// adds it to the manager, stopped.
fn add_probes(
    cfg: &Config,
    base: Option<&PathBuf>,
    store: &mut Store,
    manager: &Manager,
) -> anyhow::Result<()> {
    let mut catalog = Catalog::new();
    let mut native_tables = std::collections::HashSet::new();
    for meta in config::load_meta_dirs(&cfg.meta.dirs).context("loading meta files")? {
        register(store, Some(&mut catalog), meta)?;
    }
    for p in &cfg.probes {
        let probe: Arc<dyn Probe> = match p.name.as_str() {
            "tcp" => Arc::new(TcpProbe::from_params(&p.params)?),
            other => match system::native_probe(other, &p.params)? {
                Some(probe) => probe,
                None => anyhow::bail!("native probe {other:?} is not built into this agent"),
            },
        };
        for meta in probe.tables() {
            catalog.remove(&meta.name);
            native_tables.insert(meta.name.clone());
            register(store, None, meta)?;
        }
        manager.add(probe, p.interval);
    }
    let mut extensions = Vec::new();
    for e in &cfg.extend_probes {
        let tables = match &e.meta {
            Some(path) => config::load_meta_file(path)
                .with_context(|| format!("loading the meta file of extension probe {}", e.name))?,
            None => Vec::new(),
        };
        let probe = Arc::new(
            ExtensionProbe::new(
                &e.name,
                &e.command,
                &e.param,
                tables,
                cfg.supervision.stop_grace,
            )
            .in_dir(base.cloned()),
        );
        for meta in probe.tables() {
            if native_tables.contains(&meta.name) {
                anyhow::bail!(
                    "extension probe {}: its meta file defines table {:?}, which the native probes \
                     fill; rename the table",
                    e.name,
                    meta.name
                );
            }
            register(store, Some(&mut catalog), meta)?;
        }
        extensions.push(Arc::clone(&probe));
        // Extension probes keep their own cadence; the interval is not used by them.
        manager.add(probe, cfg.ingress.interval);
    }
    // Rows may go to any registered table (gala-gopher's meta directory was shared).
    let catalog = Arc::new(catalog);
    for probe in &extensions {
        probe.set_catalog(Arc::clone(&catalog));
    }
    Ok(())
}

/// Starts the probes switched on, and a start-check task per auto probe (they end when the
/// returned sender sends `true`).
fn start_probes(
    cfg: &Config,
    base: Option<&PathBuf>,
    manager: &Manager,
    metrics: &Arc<SelfMetrics>,
) -> anyhow::Result<(watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>)> {
    for p in &cfg.probes {
        if p.switch == Switch::On {
            manager.start(&p.name)?;
        }
    }
    let (checks_stop, checks_rx) = watch::channel(false);
    let mut checks = Vec::new();
    for e in &cfg.extend_probes {
        match (e.switch, &e.start_check) {
            (Switch::On, _) => manager.start(&e.name)?,
            (Switch::Auto, Some(command)) => checks.push(start_check::spawn_auto(
                manager.clone(),
                StartCheck {
                    probe: e.name.clone(),
                    command: command.clone(),
                    kind: e.check_type,
                    interval: cfg.supervision.start_check_interval,
                    timeout: cfg.supervision.start_check_timeout,
                    workdir: base.cloned(),
                },
                Arc::clone(metrics),
                checks_rx.clone(),
            )),
            // Off, or auto without a check (the config reader refuses that): registered, stopped.
            _ => {}
        }
    }
    Ok((checks_stop, checks))
}

async fn run(cfg: Config, base: Option<PathBuf>) -> anyhow::Result<()> {
    let metrics = Arc::new(SelfMetrics::new());
    let mut store = Store::new(Limits {
        max_tables: cfg.imdb.max_tables_num,
        max_records: cfg.imdb.max_records_num,
        max_metrics: cfg.imdb.max_metrics_num,
        record_timeout_ms: cfg.imdb.record_timeout.as_millis() as u64,
    });
    let (rows_tx, rows_rx) = mpsc::channel::<Vec<Row>>(ROWS_CHANNEL);
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
    add_probes(&cfg, base.as_ref(), &mut store, &manager)?;
    let store = Arc::new(Mutex::new(store));
    let ingest = tokio::spawn(ingest(rows_rx, Arc::clone(&store)));
    let (checks_stop, checks) = start_probes(&cfg, base.as_ref(), &manager, &metrics)?;

    let listener = http::bind(&cfg.web_server.bind_addr, cfg.web_server.port).await?;
    tracing::info!(
        addr = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
        "serving /metrics"
    );
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let web_state = Arc::new(http::WebState {
        store: Arc::clone(&store),
        metrics: Arc::clone(&metrics),
        clock: now_ms,
    });
    let web = tokio::spawn(http::serve(listener, web_state, async move {
        let _ = shutdown_rx.wait_for(|s| *s).await;
    }));

    let kafka = start_kafka(&cfg, &store, &metrics, shutdown_tx.subscribe())?;

    // Ready for systemd (Type=notify) once /metrics is served and every sink started.
    let notifier = Arc::new(gopher::service::notify::Notifier::from_env());
    notifier.ready();
    let _watchdog = notifier.spawn_watchdog();
    wait_for_signal().await?;
    tracing::info!("stopping");
    notifier.stopping();
    // Start checks first, so that none starts a probe that is being stopped.
    let _ = checks_stop.send(true);
    for check in checks {
        let _ = check.await;
    }
    manager.stop_all().await;
    let _ = shutdown_tx.send(true);
    let _ = web.await;
    // After the probes stopped: its last pass sends their final rows, then flushes (bounded).
    if let Some(kafka) = kafka {
        let _ = kafka.await;
    }
    drop(manager);
    let _ = ingest.await;
    Ok(())
}

/// Starts the Kafka sink when `kafka.switch = "on"`. A producer librdkafka refuses to create (an
/// unknown or invalid `kafka.properties` entry) stops the agent at start, like any config error;
/// an absent broker does not (librdkafka keeps connecting in the background).
fn start_kafka(
    cfg: &Config,
    store: &Arc<Mutex<Store>>,
    metrics: &Arc<SelfMetrics>,
    shutdown: watch::Receiver<bool>,
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
    Ok(Some(tokio::spawn(kafka::run(
        sink,
        Arc::clone(store),
        cfg.egress.interval,
        now_ms,
        shutdown,
    ))))
}

/// Moves probe rows into the store. Rejected rows are counted by the store itself.
async fn ingest(mut rx: mpsc::Receiver<Vec<Row>>, store: Arc<Mutex<Store>>) {
    while let Some(batch) = rx.recv().await {
        let now = now_ms();
        let mut store = store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for row in batch {
            let table = row.table.clone();
            if let Err(e) = store.upsert(row, now) {
                tracing::debug!(table, "row rejected: {e}");
            }
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
