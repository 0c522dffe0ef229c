//! The agent's own long-running tasks under supervision: the /metrics server and the Kafka
//! sink (the ingest task, which lives with the rest of the wiring in `main`, works the same
//! way). A run that panics or ends without being asked to is logged, counted in
//! `gopher_task_restarts_total{task}` and restarted after the back-off of [`Restarts`]; when
//! the budget is spent, the reason goes to `fatal` and the agent stops with a failure status
//! for systemd to restart it whole.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use crate::supervise::{CatchUnwind, Heartbeat, Restarts};
use crate::{
    egress::{
        http::{WebState, serve},
        kafka,
    },
    imdb::Store,
    telemetry::SelfMetrics,
};

/// The /metrics server under supervision. Each run serves a duplicate of the bound socket, so
/// a restart keeps the port (no window in which another process could take it).
pub async fn web(
    listener: std::net::TcpListener,
    state: Arc<WebState>,
    shutdown: watch::Receiver<bool>,
    mut restarts: Restarts,
    fatal: mpsc::Sender<String>,
) {
    loop {
        restarts.started();
        let socket = match listener
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std)
        {
            Ok(s) => s,
            Err(e) => {
                let _ = fatal.send(format!("web task cannot restart: {e}")).await;
                return;
            }
        };
        let mut until = shutdown.clone();
        let serving = serve(socket, Arc::clone(&state), async move {
            let _ = until.wait_for(|s| *s).await;
        });
        let why = match CatchUnwind::new(serving).await {
            Ok(Ok(())) if *shutdown.borrow() => return,
            Ok(Ok(())) => "ended without being asked to".to_owned(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(panic) => format!("panicked: {panic}"),
        };
        if let Err(e) = restarts.failed(&why).await {
            let _ = fatal.send(e).await;
            return;
        }
    }
}

/// What the Kafka sink runs with, kept to make a new sink when it is restarted.
pub struct KafkaTask {
    pub cfg: crate::config::Kafka,
    pub interval: Duration,
    pub store: Arc<Mutex<Store>>,
    pub metrics: Arc<SelfMetrics>,
    pub shutdown: watch::Receiver<bool>,
    /// The clock [`kafka::run`] stamps passes with (the store's).
    pub clock: fn() -> u64,
    /// Beaten by [`kafka::run`] after each pass, and during the back-off.
    pub heartbeat: Heartbeat,
}

impl KafkaTask {
    /// [`kafka::run`] under supervision; it beats the heartbeat after each pass, the back-off
    /// beats it too. The first run uses the sink made at start; a restart makes a new producer
    /// (the failed run took the old one down with it).
    pub async fn supervise(
        self,
        sink: kafka::KafkaSink,
        restarts: Restarts,
        fatal: mpsc::Sender<String>,
    ) {
        let mut restarts = restarts.with_heartbeat(self.heartbeat.clone());
        let mut sink = Some(sink);
        loop {
            restarts.started();
            let made = sink.take().map_or_else(
                || {
                    let id = kafka::Identity::of_this_host();
                    kafka::KafkaSink::new(&self.cfg, id, Arc::clone(&self.metrics))
                },
                Ok,
            );
            let sink = match made {
                Ok(s) => s,
                Err(e) => {
                    let _ = fatal
                        .send(format!("kafka task cannot restart: {e:#}"))
                        .await;
                    return;
                }
            };
            let run = kafka::run(
                sink,
                Arc::clone(&self.store),
                self.interval,
                self.clock,
                self.shutdown.clone(),
                self.heartbeat.clone(),
            );
            let why = match CatchUnwind::new(run).await {
                Ok(()) if *self.shutdown.borrow() => return,
                Ok(()) => "its pass failed".to_owned(),
                Err(panic) => format!("panicked: {panic}"),
            };
            if let Err(e) = restarts.failed(&why).await {
                let _ = fatal.send(e).await;
                return;
            }
        }
    }
}
