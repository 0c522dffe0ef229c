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
/// batch being stored, never the queue; that batch's rows are counted
/// (`gopher_rows_dropped_total{reason="ingest_panic"}`, per table). Ingest ends normally when
/// stopped or when every sender is gone (the manager holds one for the agent's life, so that
/// means the agent is going away).
pub async fn supervised_ingest(
    rx: mpsc::Receiver<Batch>,
    store: Arc<Mutex<Store>>,
    stop: watch::Receiver<bool>,
    restarts: Restarts,
    fatal: mpsc::Sender<String>,
) {
    supervised_with(rx, store, stop, restarts, fatal, Store::apply).await;
}

/// [`supervised_ingest`] with the store's apply step given (tests make it panic).
async fn supervised_with(
    mut rx: mpsc::Receiver<Batch>,
    store: Arc<Mutex<Store>>,
    stop: watch::Receiver<bool>,
    mut restarts: Restarts,
    fatal: mpsc::Sender<String>,
    apply: fn(&mut Store, Batch, u64) -> usize,
) {
    // Rows per table of the batch being stored, until it is stored.
    let in_flight = Mutex::new(Vec::new());
    loop {
        restarts.started();
        let run = ingest(&mut rx, Arc::clone(&store), stop.clone(), &in_flight, apply);
        let Err(panic) = CatchUnwind::new(run).await else {
            return;
        };
        let lost = std::mem::take(&mut *lock(&in_flight));
        if !lost.is_empty() {
            let mut store = lock(&store);
            for (table, rows) in &lost {
                store.count_lost(table, *rows);
            }
            tracing::error!(
                ?lost,
                "rows lost with the batch the ingest task was storing"
            );
        }
        if let Err(e) = restarts.failed(&format!("panicked: {panic}")).await {
            let _ = fatal.send(e).await;
            return;
        }
    }
}

/// A lock that a panic while it was held does not make unusable (the store and the in-flight
/// list stay consistent enough to count and go on).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Rows per table of a batch, for the loss count should storing it panic.
fn rows_per_table(batch: &Batch) -> Vec<(String, u64)> {
    match batch {
        Batch::TableDelta { table, upserts, .. } => vec![(table.clone(), upserts.len() as u64)],
        Batch::Rows(rows) => {
            let mut per: Vec<(String, u64)> = Vec::new();
            for r in rows {
                match per.iter_mut().find(|(t, _)| *t == r.table) {
                    Some((_, n)) => *n += 1,
                    None => per.push((r.table.clone(), 1)),
                }
            }
            per
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
    in_flight: &Mutex<Vec<(String, u64)>>,
    apply: fn(&mut Store, Batch, u64) -> usize,
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
        *lock(in_flight) = rows_per_table(&batch);
        apply(&mut lock(&store), batch, now);
        lock(in_flight).clear();
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::{
        imdb::{FieldMeta, FieldType, Limits, REASON_INGEST_PANIC, TableMeta, Value},
        supervise::Policy,
    };

    static PANICKED: AtomicBool = AtomicBool::new(false);

    /// The store's own apply, except that the first batch panics halfway: after one row.
    fn apply_panicking_once(store: &mut Store, batch: Batch, now: u64) -> usize {
        if PANICKED.swap(true, Ordering::SeqCst) {
            return store.apply(batch, now);
        }
        if let Batch::TableDelta { table, upserts, .. } = batch {
            let first = upserts.into_iter().take(1).collect();
            store.apply(
                Batch::TableDelta {
                    table,
                    upserts: first,
                    removed: Vec::new(),
                    refresh_rest: false,
                    replace: false,
                    more: false,
                },
                now,
            );
        }
        panic!("storing failed");
    }

    fn delta(keys: &[&str]) -> Batch {
        Batch::TableDelta {
            table: "t".into(),
            upserts: keys.iter().map(|k| vec![Value::from(*k)]).collect(),
            removed: Vec::new(),
            refresh_rest: false,
            replace: false,
            more: false,
        }
    }

    #[tokio::test]
    async fn the_batch_a_panic_interrupts_is_counted_and_the_next_is_stored() {
        let mut store = Store::new(Limits::default());
        store
            .register(TableMeta {
                name: "t".into(),
                description: String::new(),
                fields: vec![FieldMeta {
                    name: "k".into(),
                    ty: FieldType::Key,
                    description: String::new(),
                }],
                max_records: None,
            })
            .unwrap();
        let store = Arc::new(Mutex::new(store));
        let metrics = SelfMetrics::new();
        let policy = Policy {
            backoff_initial: Duration::from_millis(1),
            ..Policy::default()
        };
        let (tx, rx) = mpsc::channel(4);
        let (stop_tx, stop) = watch::channel(false);
        let (fatal, mut fatal_rx) = mpsc::channel(1);
        let task = tokio::spawn(supervised_with(
            rx,
            Arc::clone(&store),
            stop,
            crate::supervise::Restarts::new("ingest", policy, &metrics),
            fatal,
            apply_panicking_once,
        ));
        tx.send(delta(&["a", "b", "c"])).await.unwrap();
        tx.send(delta(&["d", "e"])).await.unwrap();
        // Both batches taken (the second after the restart), then stop.
        for _ in 0..500 {
            if lock(&store).record_counts().iter().any(|(_, n)| *n >= 3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        assert!(fatal_rx.try_recv().is_err(), "one panic is not fatal");
        let store = lock(&store);
        assert_eq!(
            store.record_counts(),
            vec![("t".to_owned(), 3)],
            "a (stored before the panic), d, e"
        );
        assert_eq!(
            store.drops(),
            vec![("t".to_owned(), REASON_INGEST_PANIC, 3)],
            "the interrupted batch's rows, counted"
        );
    }
}
