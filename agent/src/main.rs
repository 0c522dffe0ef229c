//! `gopher`: the node agent's command line and wiring. Nothing clever lives here.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use clap::Parser;
use gopher::{
    config::{self, Config},
    egress::http,
    imdb::{Limits, Row, Store},
    probes::{Manager, Probe, now_ms, tcp::TcpProbe},
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
        return match config::load(&path) {
            Ok(_) => {
                println!("{}: OK", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let cfg = match config::load(&cli.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&cfg);
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
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cfg.global.log_level.as_str()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Settings this version accepts (they belong to gala-gopher's configuration) but does not act
/// on yet: say so once rather than pretend.
fn warn_unimplemented(cfg: &Config) {
    if cfg.kafka.switch.is_on() {
        tracing::warn!(
            "kafka.switch = \"on\": Kafka egress is not in this version; rows go to /metrics only"
        );
    }
    for p in cfg
        .extend_probes
        .iter()
        .filter(|p| p.switch.as_str() != "off")
    {
        tracing::warn!(probe = %p.name, "extension probes are not in this version; not started");
    }
    if let Some(dir) = &cfg.global.log_directory {
        tracing::warn!(dir = %dir.display(), "global.log_directory is not in this version; logging to stderr");
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    warn_unimplemented(&cfg);
    let metrics = Arc::new(SelfMetrics::new());
    let mut store = Store::new(Limits {
        max_tables: cfg.imdb.max_tables_num,
        max_records: cfg.imdb.max_records_num,
        max_metrics: cfg.imdb.max_metrics_num,
        record_timeout_ms: cfg.imdb.record_timeout.as_millis() as u64,
    });
    for meta in config::load_meta_dirs(&cfg.meta.dirs).context("loading meta files")? {
        let name = meta.name.clone();
        store
            .register(meta)
            .with_context(|| format!("registering table {name}"))?;
    }

    let (rows_tx, rows_rx) = mpsc::channel::<Vec<Row>>(256);
    let mut manager = Manager::new(rows_tx, Arc::clone(&metrics), cfg.imdb.record_timeout);
    for p in &cfg.probes {
        let probe: Arc<dyn Probe> = match p.name.as_str() {
            "tcp" => Arc::new(TcpProbe::from_params(&p.params)?),
            other => anyhow::bail!("native probe {other:?} is not built into this agent"),
        };
        for meta in probe.tables() {
            let name = meta.name.clone();
            store
                .register(meta)
                .with_context(|| format!("registering table {name}"))?;
        }
        manager.add(probe, p.interval);
    }
    let store = Arc::new(Mutex::new(store));
    let ingest = tokio::spawn(ingest(rows_rx, Arc::clone(&store)));

    for p in &cfg.probes {
        if p.switch.as_str() == "on" {
            manager.start(&p.name)?;
        }
    }

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

    wait_for_signal().await?;
    tracing::info!("stopping");
    manager.stop_all().await;
    let _ = shutdown_tx.send(true);
    let _ = web.await;
    drop(manager);
    let _ = ingest.await;
    Ok(())
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
