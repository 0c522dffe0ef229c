//! Kafka egress: table records to `kafka.kafka_topic`, table definitions to
//! `kafka.metadata_topic`, with librdkafka (the `rdkafka` crate, bundled librdkafka).
//!
//! # Records
//!
//! Every `egress.interval` the sink takes the records written (or refreshed unchanged, see
//! `imdb::Batch::TableDelta`) since its previous pass ([`Store::changed_since`], under a brief
//! lock) and produces each one once, as one flat JSON
//! object, keys in this order:
//!
//! ```json
//! {"timestamp": 1700000000000, "hostname": "node1", "machine_id": "0123…", "table_name": "tcp_link",
//!  "tgid": "42", "role": "0", …}
//! ```
//!
//! `timestamp` is the record's update time in wall-clock ms (a JSON number; the store ages
//! records on the agent's monotonic clock, see `crate::clock`); `machine_id` comes from
//! `/etc/machine-id` (empty when unreadable); then every field of the table's meta, in meta
//! order, each value a JSON **string** (gala-spider compares `role == "0"`): numbers are written
//! as decimal text (integers as the probe printed them, other numbers as the shortest decimal
//! that reads back the same, so a gauge printed as `1.50` arrives as `"1.5"`). The message key is
//! the table name followed by the key field values, each after a `|` (`tcp_link|42|0|…`), so
//! the partitioner keeps one link's records in order.
//!
//! # Table definitions
//!
//! At start, whenever a table appears or its definition changes, and again on the next pass
//! after a definition's delivery failed (a record is sent again on its next change, a
//! definition would never be), one message per such table goes to the metadata topic, key =
//! table name:
//!
//! ```json
//! {"timestamp": 1700000000000, "meta_name": "tcp_link", "table_name": "tcp_link", "entity_name": "tcp_link",
//!  "version": "1", "keys": ["tgid", …], "labels": [...], "metrics": [...],
//!  "fields": [{"name": "tgid", "type": "key", "description": "…"}, …]}
//! ```
//!
//! # Faults
//!
//! librdkafka's producer queue is the only buffer, bounded by
//! `kafka.queue_buffering_max_messages` / `queue_buffering_max_kbytes`. A message that cannot
//! be queued is counted in `gopher_kafka_dropped_total{reason}` and not retried; but a pass
//! that finds the queue full first waits for room, up to one egress interval, so a pass larger
//! than the bound is not cut short while the broker keeps up. A queued
//! message is retried by librdkafka across broker outages until `kafka.message_timeout_ms`
//! (default 300000 = 5 min); after that it is counted in `gopher_kafka_failed_total{reason}`.
//! No broker at start, a broker that goes away, a missing topic: the agent keeps running and
//! serving /metrics, and delivery resumes by itself. In detail (each checked against a real
//! broker in agent/tests/kafka.rs):
//!
//! * a record whose JSON exceeds `kafka.message_max_bytes` is refused by the producer:
//!   dropped{too_large} (a broker's own, smaller limit fails it after queueing:
//!   failed{too_large});
//! * a topic missing on the broker (no auto-creation): librdkafka waits
//!   `topic.metadata.propagation.max.ms` (30 s; a `[kafka.properties]` entry) for it to appear,
//!   then the messages for it are counted under reason `unknown_topic` (failed once queued,
//!   dropped when refused at once); delivery starts when a metadata refresh sees the topic
//!   (`topic.metadata.refresh.interval.ms`, 5 min by default; the test sets 1 s);
//! * an outage longer than `kafka.message_timeout_ms`: the messages queued meanwhile fail
//!   (failed{timeout}) and are not sent later; a failed table definition is published again.
//!
//! On shutdown the sink sends what changed since its last pass, waits up to `kafka.flush_timeout` for delivery, and counts what is still
//! queued as `gopher_kafka_dropped_total{reason="shutdown"}`.
//!
//! # Self-metrics (all count both record and metadata messages)
//!
//! | family | labels | meaning |
//! |---|---|---|
//! | `gopher_kafka_queued_total` | | messages accepted into the producer queue |
//! | `gopher_kafka_delivered_total` | | messages the broker acknowledged |
//! | `gopher_kafka_failed_total` | `reason`: `timeout`, `unknown_topic`, `too_large`, `other` | queued messages whose delivery failed after librdkafka's retries |
//! | `gopher_kafka_dropped_total` | `reason`: `queue_full`, `too_large`, `unknown_topic`, `other`, `shutdown` | messages never queued (or still queued when shutdown's wait ran out) |
//! | `gopher_kafka_queue_messages` | | messages queued whose delivery report has not arrived yet (waiting or in flight), sampled each pass |
//!
//! Invariant once the queue is empty: queued = delivered + failed + dropped{shutdown}.
//!
//! # Configuration keys (`[kafka]`, see docs/config.md)
//!
//! `switch`, `kafka_broker`, `kafka_topic`, `metadata_topic`, `batch_num_messages`,
//! `queue_buffering_max_messages`, `queue_buffering_max_kbytes`, `queue_buffering_max_ms`,
//! `compression_codec`, `message_max_bytes`, `message_timeout_ms`, `flush_timeout` (seconds),
//! and `[kafka.properties]` (string → string, passed verbatim to librdkafka: TLS, SASL, …).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientContext, message::Message as _};
use tokio::sync::watch;

use crate::config::Kafka as KafkaConfig;
use crate::imdb::{Snapshot, Store, TableMeta};
use crate::service::supervise::Heartbeat;
use crate::telemetry::{
    Counter, Gauge, KAFKA_DELIVERED, KAFKA_DROPPED, KAFKA_FAILED, KAFKA_QUEUE_MESSAGES,
    KAFKA_QUEUED, SelfMetrics,
};

/// How often a message that found the queue full tries again.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(2);

/// Who sent a record: the first fields of every message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub hostname: String,
    pub machine_id: String,
}

impl Identity {
    /// `gethostname(2)` and `/etc/machine-id` (each empty when unavailable).
    pub fn of_this_host() -> Self {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
        // when the name fits (a truncated name is cut at the buffer's end below).
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let hostname = if rc == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        } else {
            String::new()
        };
        let machine_id = std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Self {
            hostname,
            machine_id,
        }
    }
}

/// The librdkafka settings for `cfg`: the agent's own first, then `kafka.properties` verbatim.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka_broker)
        .set("batch.num.messages", cfg.batch_num_messages.to_string())
        .set(
            "queue.buffering.max.messages",
            cfg.queue_buffering_max_messages.to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            cfg.queue_buffering_max_kbytes.to_string(),
        )
        .set(
            "queue.buffering.max.ms",
            cfg.queue_buffering_max_ms.to_string(),
        )
        .set("compression.codec", cfg.compression_codec.as_str())
        .set("message.max.bytes", cfg.message_max_bytes.to_string())
        .set("message.timeout.ms", cfg.message_timeout_ms.to_string());
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// A bounded label value for an error (so a flood of odd errors cannot grow the series).
fn reason(code: Option<RDKafkaErrorCode>) -> &'static str {
    match code {
        Some(RDKafkaErrorCode::QueueFull) => "queue_full",
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            "too_large"
        }
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut) => "timeout",
        Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition) => {
            "unknown_topic"
        }
        _ => "other",
    }
}

/// Delivery reports, on librdkafka's polling thread.
struct Reports {
    metrics: Arc<SelfMetrics>,
    delivered: Counter,
    /// Messages queued and not yet reported (delivered, failed or purged). librdkafka's own
    /// `outq_len` also counts protocol requests, so it is not used for the accounting.
    outstanding: Arc<AtomicI64>,
    /// The topic of table definitions: a failed one must be sent again.
    metadata_topic: String,
    /// Tables whose definition failed to arrive (message key = table name); the next pass
    /// publishes them again. A record can wait for the next change, a definition cannot: it
    /// is sent only once, so a consumer would never learn the table.
    republish: Arc<Mutex<Vec<String>>>,
}

impl ClientContext for Reports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::warn!(target: "gopher::kafka", fac, "{log_message}");
            }
            L::Warning | L::Notice => tracing::info!(target: "gopher::kafka", fac, "{log_message}"),
            L::Info | L::Debug => tracing::debug!(target: "gopher::kafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker down, resolution failures, …: librdkafka retries on its own.
        tracing::debug!(target: "gopher::kafka", "{error}: {reason}");
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(_) => self.delivered.inc(),
            Err((e, msg)) => {
                let code = e.rdkafka_error_code();
                // Purged by shutdown: already counted as dropped{shutdown}.
                if matches!(
                    code,
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                ) {
                    return;
                }
                let why = reason(code);
                tracing::debug!(target: "gopher::kafka", topic = msg.topic(), "delivery failed: {e}");
                self.metrics.counter(KAFKA_FAILED, &[("reason", why)]).inc();
                if msg.topic() == self.metadata_topic
                    && let Some(Ok(table)) = msg.key_view::<str>()
                {
                    self.republish
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(table.to_owned());
                }
            }
        }
    }
}

/// The producer and what it has sent so far.
pub struct KafkaSink {
    producer: ThreadedProducer<Reports>,
    cfg: KafkaConfig,
    identity: Identity,
    metrics: Arc<SelfMetrics>,
    queued: Counter,
    queue_messages: Gauge,
    outstanding: Arc<AtomicI64>,
    /// Records with a version above this have not been produced yet.
    last_version: u64,
    /// Table definitions already published (by name).
    published: BTreeMap<String, Arc<TableMeta>>,
    /// Filled by the delivery reports: definitions to publish again (see [`Reports`]).
    republish: Arc<Mutex<Vec<String>>>,
    /// Until when the current pass waits for room in a full queue (see [`KafkaSink::pass`]).
    deadline: Option<Instant>,
}

impl KafkaSink {
    /// Creates the producer. This does not contact a broker: librdkafka connects in the
    /// background and keeps trying, so a broker absent at start is not an error.
    pub fn new(
        cfg: &KafkaConfig,
        identity: Identity,
        metrics: Arc<SelfMetrics>,
    ) -> anyhow::Result<Self> {
        let outstanding = Arc::new(AtomicI64::new(0));
        let republish = Arc::new(Mutex::new(Vec::new()));
        let reports = Reports {
            metrics: Arc::clone(&metrics),
            delivered: metrics.counter(KAFKA_DELIVERED, &[]),
            outstanding: Arc::clone(&outstanding),
            metadata_topic: cfg.metadata_topic.clone(),
            republish: Arc::clone(&republish),
        };
        let producer: ThreadedProducer<Reports> = client_config(cfg)
            .create_with_context(reports)
            .map_err(|e| {
            anyhow::anyhow!(
                "creating the Kafka producer: librdkafka refused the [kafka] settings \
                         or [kafka.properties]: {e}"
            )
        })?;
        let queued = metrics.counter(KAFKA_QUEUED, &[]);
        let queue_messages = metrics.gauge(KAFKA_QUEUE_MESSAGES, &[]);
        // Make the families visible at 0 from the start.
        for why in ["queue_full", "too_large", "shutdown"] {
            metrics.counter(KAFKA_DROPPED, &[("reason", why)]);
        }
        metrics.counter(KAFKA_FAILED, &[("reason", "timeout")]);
        Ok(Self {
            producer,
            cfg: cfg.clone(),
            identity,
            metrics,
            queued,
            queue_messages,
            outstanding,
            last_version: 0,
            published: BTreeMap::new(),
            republish,
            deadline: None,
        })
    }

    /// Queues one message; counts it as queued or dropped. Never blocks.
    fn send(&self, topic: &str, key: &str, payload: &str) -> bool {
        let mut record = BaseRecord::to(topic).key(key).payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.outstanding.fetch_add(1, Ordering::Relaxed);
                    self.queued.inc();
                    return true;
                }
                // A full queue usually drains within milliseconds while the broker keeps up:
                // a pass larger than the queue bound waits for room (until its deadline)
                // rather than dropping what the broker could take.
                Err((e, back))
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                        && self.deadline.is_some_and(|d| Instant::now() < d) =>
                {
                    record = back;
                    std::thread::sleep(QUEUE_FULL_RETRY);
                }
                Err((e, _)) => {
                    let why = reason(e.rdkafka_error_code());
                    tracing::debug!(target: "gopher::kafka", topic, "message not queued: {e}");
                    self.metrics
                        .counter(KAFKA_DROPPED, &[("reason", why)])
                        .inc();
                    return false;
                }
            }
        }
    }

    /// One pass: table definitions that are new or changed, then every record written since
    /// the previous pass. Returns how many record messages were queued.
    ///
    /// A message that finds the queue full waits for room up to `queue_full_wait` after the
    /// pass began (zero: it is dropped at once); so a pass can block that long.
    pub fn pass(&mut self, store: &Mutex<Store>, now_ms: u64, queue_full_wait: Duration) -> usize {
        self.deadline = (!queue_full_wait.is_zero()).then(|| Instant::now() + queue_full_wait);
        let (tables, changed) = {
            let store = store.lock().unwrap_or_else(PoisonError::into_inner);
            let tables: Vec<Arc<TableMeta>> = store
                .record_counts()
                .into_iter()
                .filter_map(|(name, _)| store.table(&name).cloned())
                .collect();
            let changed = store.changed_since(self.last_version);
            self.last_version = store.version();
            (tables, changed)
        };
        self.publish_metadata(&tables, now_ms);
        let sent = self.publish_records(&changed, now_ms, crate::clock::mono_ms());
        self.queue_messages.set(self.outstanding() as f64);
        sent
    }

    /// Messages queued whose delivery report has not arrived yet.
    pub fn outstanding(&self) -> u64 {
        self.outstanding
            .load(Ordering::Relaxed)
            .max(0)
            .unsigned_abs()
    }

    fn publish_metadata(&mut self, tables: &[Arc<TableMeta>], now_ms: u64) {
        let failed = std::mem::take(
            &mut *self
                .republish
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for name in failed {
            tracing::info!(target: "gopher::kafka", table = name, "table definition not delivered; publishing it again");
            self.published.remove(&name);
        }
        self.published
            .retain(|name, _| tables.iter().any(|t| &t.name == name));
        for meta in tables {
            if self
                .published
                .get(&meta.name)
                .is_some_and(|old| **old == **meta)
            {
                continue;
            }
            let topic = self.cfg.metadata_topic.clone();
            // Not remembered when it could not be queued, so the next pass tries again.
            if self.send(&topic, &meta.name, &metadata_json(meta, now_ms)) {
                self.published.insert(meta.name.clone(), Arc::clone(meta));
            }
        }
    }

    /// `wall_now`/`mono_now`: the two clocks read now, to date records (stored on the
    /// monotonic clock) in wall-clock time.
    fn publish_records(&self, changed: &Snapshot, wall_now: u64, mono_now: u64) -> usize {
        let topic = &self.cfg.kafka_topic;
        let mut sent = 0;
        // librdkafka copies key and payload when queueing, so two buffers serve every record.
        let (mut json, mut key) = (String::with_capacity(1024), String::with_capacity(128));
        for table in &changed.tables {
            let mut values = Vec::new();
            for record in &table.records {
                let ts = crate::clock::wall_of(record.updated_ms, mono_now, wall_now);
                write_record_json(&mut json, &self.identity, table, record, ts, &mut values);
                write_record_key(&mut key, table, record, &mut values);
                if self.send(topic, &key, &json) {
                    sent += 1;
                }
            }
        }
        sent
    }

    /// Waits up to `timeout` for the queue to drain, then purges and counts what is left as
    /// dropped{shutdown}. Blocking.
    pub fn close(self, timeout: Duration) -> u64 {
        let _ = self.producer.flush(timeout);
        let left = self.outstanding();
        if left > 0 {
            tracing::warn!(left, "Kafka messages not delivered by shutdown");
            self.metrics
                .counter(KAFKA_DROPPED, &[("reason", "shutdown")])
                .add(left);
            self.producer
                .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        }
        self.queue_messages.set(0.0);
        left
    }
}

/// The sink's task: a pass every `interval` until `shutdown` turns true, then a last pass and
/// a bounded flush (`cfg.flush_timeout`). Passes run on the blocking pool: one that meets a
/// full queue waits for room, up to one `interval` (the last pass does not wait: the flush's
/// bound is what shutdown promises). `heartbeat` is beaten after every pass, for the systemd
/// watchdog: a pass that never ends stops the beats.
pub async fn run(
    mut sink: KafkaSink,
    store: Arc<Mutex<Store>>,
    interval: Duration,
    clock: fn() -> u64,
    mut shutdown: watch::Receiver<bool>,
    heartbeat: Heartbeat,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let store = Arc::clone(&store);
        let done = tokio::task::spawn_blocking(move || {
            sink.pass(&store, clock(), interval);
            sink
        })
        .await;
        match done {
            Ok(s) => {
                sink = s;
                heartbeat.beat();
            }
            Err(e) => {
                tracing::error!(target: "gopher::kafka", "Kafka egress pass failed, Kafka egress stops: {e}");
                return;
            }
        }
    }
    sink.pass(&store, clock(), Duration::ZERO);
    let timeout = sink.cfg.flush_timeout;
    let _ = tokio::task::spawn_blocking(move || sink.close(timeout)).await;
}

mod json;
#[cfg(test)]
mod tests;

pub use json::{
    metadata_json, record_json, record_key, write_json_str, write_record_json, write_record_key,
};
