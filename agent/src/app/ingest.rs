//! Probe rows into the table store (the ingest task, supervised), and records aged out of it on
//! the monotonic clock.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use crate::{
    app::enrich::Enricher,
    clock,
    imdb::{Batch, Store},
    supervise::{CatchUnwind, Restarts},
    telemetry::SelfMetrics,
};

/// [`ingest`] under supervision. The receiver outlives a run, so a panic loses at most the
/// batch being stored, never the queue. Ingest ends normally when stopped or when every sender
/// is gone (the manager holds one for the agent's life, so that means the agent is going away).
pub async fn supervised_ingest(
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

/// Moves probe rows into the store until `stop` (after the probes stopped), then takes what is
/// still queued. Rejected rows are counted by the store itself. Ending on `stop` rather than on
/// the last sender going away: control-channel connections may hold the probes' handles.
async fn ingest(
    rx: &mut mpsc::Receiver<Batch>,
    store: Arc<Mutex<Store>>,
    mut stop: watch::Receiver<bool>,
) {
    // Per run: a restarted ingest starts with empty caches (only lookups are lost).
    let mut enricher = Enricher::default();
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
        let Some(mut batch) = batch else { break };
        // The store's clock is the monotonic one (see gopher::clock).
        let now = clock::mono_ms();
        enricher.label(&mut batch, &store, now);
        store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .apply(batch, now);
    }
}

/// How often records are aged out: a quarter of the record timeout, between 100 ms and 1 s,
/// so a record outlives its timeout by at most that.
pub fn expiry_period(record_timeout: Duration) -> Duration {
    (record_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Ages records out on the monotonic clock, whether or not anyone scrapes: a Kafka-only node
/// must keep room for new records. Also mirrors the store's counters into the self-metrics.
pub async fn expire_every(period: Duration, store: Arc<Mutex<Store>>, metrics: Arc<SelfMetrics>) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut store = store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        store.expire(clock::mono_ms());
        crate::egress::store_counts::sync_from_store(&store, &metrics);
    }
}
