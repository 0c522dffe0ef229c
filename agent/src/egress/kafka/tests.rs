#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use super::*;
use crate::config::Compression;
use crate::imdb::{FieldMeta, FieldType, Limits, Row, TableMeta, TableSnapshot, Value};

fn meta() -> TableMeta {
    let f = |name: &str, ty, description: &str| FieldMeta {
        name: name.into(),
        ty,
        description: description.into(),
    };
    TableMeta {
        name: "tcp_link".into(),
        description: "links".into(),
        fields: vec![
            f("tgid", FieldType::Key, "process id"),
            f("role", FieldType::Key, "0 server, 1 client"),
            f("process_name", FieldType::Label, "comm \"quoted\""),
            f("rx_bytes", FieldType::Counter, ""),
            f("rtt", FieldType::Gauge, ""),
            f("note", FieldType::Unknown, ""),
        ],
        max_records: None,
    }
}

/// A one-record table; values go through the field types' text rule, as an extension
/// probe's would.
fn record(values: &[&str]) -> TableSnapshot {
    let m = meta();
    let row: Vec<_> = m
        .fields
        .iter()
        .zip(values)
        .map(|(f, v)| f.ty.parse_value(v).unwrap())
        .collect();
    TableSnapshot::from_rows(m, &[row], 1_700_000_000_123)
}

fn id() -> Identity {
    Identity {
        hostname: "node-1".into(),
        machine_id: "abc123".into(),
    }
}

#[test]
fn record_json_is_flat_ordered_and_all_strings() {
    let r = record(&["42", "0", "nginx", "100", "7", "x"]);
    let json = record_json(&id(), &r, &r.records[0]);
    assert_eq!(
        json,
        "{\"timestamp\":1700000000123,\"hostname\":\"node-1\",\"machine_id\":\"abc123\",\
         \"table_name\":\"tcp_link\",\"tgid\":\"42\",\"role\":\"0\",\"process_name\":\"nginx\",\
         \"rx_bytes\":\"100\",\"rtt\":\"7\",\"note\":\"x\"}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let obj = v.as_object().unwrap();
    assert_eq!(obj["timestamp"], serde_json::json!(1_700_000_000_123_u64));
    for (k, v) in obj {
        if k != "timestamp" {
            assert!(v.is_string(), "{k} is not a string: {v}");
        }
    }
    assert_eq!(obj["role"], "0");
}

#[test]
fn record_json_escapes_every_string() {
    let nasty = "a\"b\\c\nd\re\tf\u{1}g\u{1f}h é 🦀 </script>";
    let r = record(&["1", "1", nasty, "0", "0", ""]);
    let id = Identity {
        hostname: "h\"x".into(),
        machine_id: String::new(),
    };
    let json = record_json(&id, &r, &r.records[0]);
    assert!(
        json.contains("\\u0001") && json.contains("\\u001f"),
        "{json}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["process_name"], nasty);
    assert_eq!(v["hostname"], "h\"x");
    assert_eq!(v["machine_id"], "");
    assert_eq!(v["note"], "");
}

#[test]
fn key_is_table_then_key_fields() {
    let r = record(&["42", "1", "nginx", "100", "7", "x"]);
    assert_eq!(record_key(&r, &r.records[0]), "tcp_link|42|1");
}

#[test]
fn metadata_json_lists_keys_labels_metrics_and_fields() {
    let json = metadata_json(&meta(), 5);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["timestamp"], 5);
    assert_eq!(v["meta_name"], "tcp_link");
    assert_eq!(v["table_name"], "tcp_link");
    assert_eq!(v["version"], "1");
    assert_eq!(v["keys"], serde_json::json!(["tgid", "role"]));
    assert_eq!(v["labels"], serde_json::json!(["process_name"]));
    assert_eq!(v["metrics"], serde_json::json!(["rx_bytes", "rtt"]));
    let fields = v["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 6);
    assert_eq!(
        fields[2],
        serde_json::json!({"name": "process_name", "type": "label", "description": "comm \"quoted\""})
    );
    assert_eq!(fields[5]["type"], "unknown");
}

#[test]
fn identity_of_this_host_has_a_hostname() {
    let id = Identity::of_this_host();
    assert!(!id.hostname.is_empty());
    assert!(!id.machine_id.contains('\n'));
}

#[test]
fn client_config_maps_every_setting() {
    let cfg = KafkaConfig {
        kafka_broker: "k1:1,k2:2".into(),
        compression_codec: Compression::Lz4,
        properties: vec![("security.protocol".into(), "SSL".into())],
        ..KafkaConfig::default()
    };
    let c = client_config(&cfg);
    let get = |k| c.get(k).unwrap_or_default();
    assert_eq!(get("bootstrap.servers"), "k1:1,k2:2");
    assert_eq!(get("batch.num.messages"), "10000");
    assert_eq!(get("queue.buffering.max.messages"), "100000");
    assert_eq!(get("queue.buffering.max.kbytes"), "1048576");
    assert_eq!(get("queue.buffering.max.ms"), "5");
    assert_eq!(get("compression.codec"), "lz4");
    assert_eq!(get("message.max.bytes"), "1000000");
    assert_eq!(get("message.timeout.ms"), "300000");
    assert_eq!(get("security.protocol"), "SSL");
}

#[test]
fn reasons_are_bounded() {
    assert_eq!(reason(Some(RDKafkaErrorCode::QueueFull)), "queue_full");
    assert_eq!(
        reason(Some(RDKafkaErrorCode::MessageSizeTooLarge)),
        "too_large"
    );
    assert_eq!(reason(Some(RDKafkaErrorCode::MessageTimedOut)), "timeout");
    assert_eq!(
        reason(Some(RDKafkaErrorCode::UnknownTopic)),
        "unknown_topic"
    );
    assert_eq!(
        reason(Some(RDKafkaErrorCode::BrokerTransportFailure)),
        "other"
    );
    assert_eq!(reason(None), "other");
}

/// Without any broker: messages are queued (not lost, not blocking), too-large ones and those
/// beyond the queue bound are counted as dropped, and shutdown counts what is left.
#[test]
fn without_a_broker_everything_is_accounted_for() {
    let metrics = Arc::new(SelfMetrics::new());
    let cfg = KafkaConfig {
        // Nothing listens on port 1; librdkafka keeps retrying in the background.
        kafka_broker: "127.0.0.1:1".into(),
        queue_buffering_max_messages: 3,
        message_max_bytes: 1000,
        ..KafkaConfig::default()
    };
    let mut sink = KafkaSink::new(&cfg, id(), Arc::clone(&metrics)).unwrap();
    let mut store = Store::new(Limits::default());
    store.register(meta()).unwrap();
    let store = Mutex::new(store);
    let row = |tgid: &str, name: &str| Row {
        table: "tcp_link".into(),
        values: vec![
            tgid.into(),
            "0".into(),
            name.into(),
            Value::U64(1),
            Value::U64(2),
            Value::Empty,
        ],
    };
    {
        let mut s = store.lock().unwrap();
        s.upsert(row("1", "a"), 10).unwrap();
        s.upsert(row("2", &"x".repeat(2000)), 10).unwrap();
    }
    // metadata (1) + record 1 queued; the 2 KB record is too large.
    assert_eq!(sink.pass(&store, 20, Duration::ZERO), 1);
    // Nothing changed: nothing sent again.
    assert_eq!(sink.pass(&store, 30, Duration::ZERO), 0);
    {
        let mut s = store.lock().unwrap();
        for t in 3..6 {
            s.upsert(row(&t.to_string(), "b"), 40).unwrap();
        }
    }
    // Queue bound 3, two already held: one more fits, two are dropped.
    assert_eq!(sink.pass(&store, 50, Duration::ZERO), 1);
    let get = |name, labels: &[(&str, &str)]| metrics.counter(name, labels).get();
    assert_eq!(get(KAFKA_QUEUED, &[]), 3);
    assert_eq!(get(KAFKA_DROPPED, &[("reason", "too_large")]), 1);
    assert_eq!(get(KAFKA_DROPPED, &[("reason", "queue_full")]), 2);
    assert_eq!(metrics.gauge(KAFKA_QUEUE_MESSAGES, &[]).get() as u64, 3);
    assert_eq!(sink.close(Duration::from_millis(200)), 3);
    assert_eq!(get(KAFKA_DROPPED, &[("reason", "shutdown")]), 3);
    assert_eq!(get(KAFKA_DELIVERED, &[]), 0);
    // Purged messages are not counted a second time as failed.
    std::thread::sleep(Duration::from_millis(100));
    let mut out = String::new();
    metrics.render(&mut out);
    assert!(
        !out.contains("gopher_kafka_failed_total{reason=\"other\"}"),
        "{out}"
    );
}

/// A pass that finds the queue full waits for room up to its deadline, then drops (counted);
/// without a deadline it drops at once.
#[test]
fn a_full_queue_is_waited_for_up_to_the_deadline() {
    let metrics = Arc::new(SelfMetrics::new());
    let cfg = KafkaConfig {
        kafka_broker: "127.0.0.1:1".into(),
        queue_buffering_max_messages: 1,
        ..KafkaConfig::default()
    };
    let mut sink = KafkaSink::new(&cfg, id(), Arc::clone(&metrics)).unwrap();
    let mut store = Store::new(Limits::default());
    store.register(meta()).unwrap();
    let store = Mutex::new(store);
    let row = |tgid: &str| Row {
        table: "tcp_link".into(),
        values: vec![
            tgid.into(),
            "0".into(),
            "a".into(),
            Value::U64(1),
            Value::U64(2),
            Value::Empty,
        ],
    };
    store.lock().unwrap().upsert(row("1"), 10).unwrap();
    // The metadata message takes the only place; the record waits, then is dropped.
    let start = std::time::Instant::now();
    assert_eq!(sink.pass(&store, 20, Duration::from_millis(300)), 0);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let full = || {
        metrics
            .counter(KAFKA_DROPPED, &[("reason", "queue_full")])
            .get()
    };
    assert_eq!(full(), 1);
    store.lock().unwrap().upsert(row("2"), 30).unwrap();
    let start = std::time::Instant::now();
    assert_eq!(sink.pass(&store, 40, Duration::ZERO), 0);
    assert!(start.elapsed() < Duration::from_millis(200));
    assert_eq!(full(), 2);
    sink.close(Duration::ZERO);
}
