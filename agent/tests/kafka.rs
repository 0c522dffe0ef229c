//! Kafka egress, end to end: a real Kafka-protocol broker (tansu, memory storage) on a free
//! loopback port per test, the real agent producing to it, and an independent consumer
//! (Python confluent-kafka, `support/kafka_client.py`) reading what arrived. Records are checked
//! field by field against the rows the probes produced; faults are real (the broker process is
//! stopped and started again) and the agent's `gopher_kafka_*` counters must account for every
//! message. Counts are of consumed messages, never of high watermarks. Broker and consumer are in
//! `common/kafka.rs` (the load-balancer tests use them too). Here: the harness, outages and the
//! metadata topic; by topic beside it in kafka/: rows field by field (`rows`), faults
//! (`faults`), TLS (`tls`).
//!
//! Needs `tansu` (scripts/test-deps.sh installs it into ~/.cache/gopher/tansu; `GOPHER_TANSU` names
//! another binary) and `python3 -c 'import confluent_kafka'`; skips loudly without them.
// Counters are compared exactly on purpose: they must be exact.
#![allow(
    clippy::float_cmp,
    clippy::too_many_lines,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;
// The crate root names its submodules from tests/: these live beside it in kafka/ (by topic;
// one test binary, so one link).
#[path = "kafka/faults.rs"]
mod faults;
#[path = "kafka/rows.rs"]
mod rows;
#[path = "kafka/tls.rs"]
mod tls;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    Agent, Peer, Sample, free_port, is_root,
    kafka::{
        Broker, Consumer, META_TOPIC, Msg, ROWS, agent_config, agent_config_with, check_envelope,
        field, kafka_available, now_ms, produce, rows,
    },
    require, support,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
/// Long enough for librdkafka to reconnect (backoff up to 10 s) and retry after an outage.
const SETTLE: Duration = Duration::from_secs(90);

/// key host, key port, label kind, unknown note, counter requests, gauge load.
const META: &str = r#"
[[tables]]
name = "ext_demo"
description = "kafka test table"
fields = [
    { name = "host", type = "key" },
    { name = "port", type = "key" },
    { name = "kind", type = "label" },
    { name = "note", type = "unknown" },
    { name = "requests", type = "counter", description = "requests served" },
    { name = "load", type = "gauge", description = "current load" },
]
"#;

const EXT_FIELDS: [&str; 6] = ["host", "port", "kind", "note", "requests", "load"];

/// An extension probe: a shell script and its TOML meta file in a temporary directory.
struct ExtProbe {
    dir: tempfile::TempDir,
}

impl ExtProbe {
    fn new(body: &str) -> ExtProbe {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("demo.toml"), META).unwrap();
        let p = dir.path().join("probe.sh");
        std::fs::write(
            &p,
            format!("#!/bin/sh\ncd '{}'\n{body}\n", dir.path().display()),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        ExtProbe { dir }
    }

    /// A probe that prints `|ext_demo|h1|80|web|n|<seq>|1.5|` five times a second, with seq
    /// counting up, while the file `go` exists in its directory (it starts without).
    fn counting() -> ExtProbe {
        ExtProbe::new(
            "i=0\nwhile :; do\n  if [ -e go ]; then\n    i=$((i+1))\n    \
             printf '|ext_demo|h1|80|web|n|%d|1.5|\\n' \"$i\"\n  fi\n  sleep 0.2\ndone",
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn set_go(&self, on: bool) {
        if on {
            std::fs::write(self.path("go"), "").unwrap();
        } else {
            let _ = std::fs::remove_file(self.path("go"));
        }
    }

    fn config(&self) -> String {
        format!(
            "[[extend_probes]]\nname = \"demo\"\ncommand = \"{}\"\nmeta = \"{}\"\nswitch = \"on\"\n",
            self.path("probe.sh").display(),
            self.path("demo.toml").display()
        )
    }
}

/// Sum of every sample named `name` (whatever its labels); 0 when absent.
fn total(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    queued: f64,
    delivered: f64,
    failed: f64,
    /// Still queued at shutdown (so counted in `queued`).
    dropped_shutdown: f64,
    /// Never queued (queue full, too large, …).
    dropped_other: f64,
    in_queue: f64,
}

fn counts(samples: &[Sample]) -> Counts {
    let dropped = total(samples, "gopher_kafka_dropped_total");
    let dropped_shutdown = samples
        .iter()
        .filter(|s| s.name == "gopher_kafka_dropped_total" && s.label("reason") == "shutdown")
        .map(|s| s.value)
        .sum();
    Counts {
        queued: total(samples, "gopher_kafka_queued_total"),
        delivered: total(samples, "gopher_kafka_delivered_total"),
        failed: total(samples, "gopher_kafka_failed_total"),
        dropped_shutdown,
        dropped_other: dropped - dropped_shutdown,
        in_queue: total(samples, "gopher_kafka_queue_messages"),
    }
}

impl Counts {
    /// Every message the producer queued is delivered, failed, or still queued. (Only exact
    /// while no delivery report arrives between two passes: the queue gauge is sampled then.)
    fn balanced(&self) -> bool {
        self.queued == self.delivered + self.failed + self.dropped_shutdown + self.in_queue
    }

    fn settled(&self) -> bool {
        self.in_queue == 0.0 && self.balanced()
    }
}

/// Waits until the agent has queued nothing new for 3 s (the probe stopped printing and the
/// last rows went through ingress and an egress pass); returns the counts then.
fn wait_quiet(agent: &Agent) -> Counts {
    let start = Instant::now();
    let mut last = counts(&agent.scrape().unwrap());
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let c = counts(&agent.scrape().unwrap());
        if c.queued != last.queued || c.dropped_other != last.dropped_other {
            last = c;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(3) {
            return c;
        }
        assert!(start.elapsed() < WAIT, "the agent kept queueing: {c:?}");
    }
}

/// Waits until the agent's queue is empty and its counters balance, and the consumer has
/// seen exactly as many messages (both topics) as the agent counts delivered to this broker
/// (`delivered_before`: what earlier broker lifetimes received).
fn wait_settled(agent: &Agent, consumer: &Consumer, delivered_before: f64) -> Counts {
    let start = Instant::now();
    loop {
        let c = counts(&agent.scrape().unwrap());
        let seen = consumer.messages().len() as f64;
        if c.settled() && c.delivered - delivered_before == seen {
            return c;
        }
        assert!(
            start.elapsed() < SETTLE,
            "counters did not settle: {c:?}, consumed {seen} + {delivered_before} earlier"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The probe prints until at least 3 rows are consumed, then stops; returns the counts once
/// everything arrived.
fn first_rows_settled(agent: &Agent, probe: &ExtProbe, consumer: &Consumer) -> Counts {
    probe.set_go(true);
    consumer.wait_for(WAIT, "first rows", |m| rows(m, "ext_demo").len() >= 3);
    probe.set_go(false);
    wait_quiet(agent);
    wait_settled(agent, consumer, 0.0)
}

fn ext_seq(row: &BTreeMap<String, Value>) -> u64 {
    field(row, "requests").parse().unwrap()
}

/// Sum of `family` samples whose `reason` label is `why`.
fn by_reason(samples: &[Sample], family: &str, why: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == family && s.label("reason") == why)
        .map(|s| s.value)
        .sum()
}

/// A counting probe (see [`ExtProbe::counting`], printing when `go`) and an agent with it,
/// towards `broker`, with more `[kafka]` lines and an egress interval (seconds).
fn counting_agent(broker: &Broker, kafka: &str, egress: u32, go: bool) -> (ExtProbe, Agent) {
    let probe = ExtProbe::counting();
    probe.set_go(go);
    let agent = Agent::start(&agent_config_with(
        &broker.addr(),
        kafka,
        egress,
        &probe.config(),
    ));
    (probe, agent)
}

// ---------------------------------------------------------------------------------------------
// The harness by itself: what the agent tests stand on.

/// The broker takes topics, a librdkafka client produces to it, the consumer reads back
/// exactly what was produced; after a restart (memory storage) the topics are recreated and
/// the broker is empty again.
#[test]
fn harness_broker_round_trip_and_restart() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    assert_eq!(produce(&broker, ROWS, 50), "delivered 50 failed 0");
    let mut consumer = Consumer::start(&broker, &[ROWS, META_TOPIC]);
    let got = consumer.wait_for(WAIT, "50 messages", |m| m.len() >= 50);
    std::thread::sleep(Duration::from_secs(1));
    let got = {
        let later = consumer.messages();
        assert_eq!(later.len(), got.len(), "more than produced arrived");
        later
    };
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.topic, ROWS);
        assert_eq!(m.offset, i64::try_from(i).unwrap());
        assert_eq!(m.key.as_deref(), Some(format!("k{i}").as_str()));
        assert_eq!(m.value, format!("m{i}"));
    }
    consumer.stop();

    broker.stop();
    broker.start();
    assert_eq!(produce(&broker, META_TOPIC, 3), "delivered 3 failed 0");
    let consumer = Consumer::start(&broker, &[ROWS, META_TOPIC]);
    let got = consumer.wait_for(WAIT, "3 messages", |m| m.len() >= 3);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(consumer.messages().len(), 3, "{got:?}");
    assert!(got.iter().all(|m| m.topic == META_TOPIC), "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// The agent: outages and the metadata topic.

/// The broker goes away and comes back (memory storage: empty, topics recreated): the agent
/// keeps serving /metrics, rows produced meanwhile are queued, delivery resumes by itself, and
/// queued = delivered + failed + dropped + still queued, with delivered equal to what the
/// consumers read from both broker lifetimes.
#[test]
fn broker_outage_loses_nothing_silently() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    let probe = ExtProbe::counting();
    let agent = Agent::start(&agent_config(&broker.addr(), &probe.config()));
    let mut consumer = Consumer::start(&broker, &[ROWS, META_TOPIC]);

    // Phase 1: rows flow, then stop and let everything arrive.
    let before = first_rows_settled(&agent, &probe, &consumer);
    let first = consumer.stop();
    let last_seq = rows(&first, "ext_demo").iter().map(ext_seq).max().unwrap();
    let seqs: Vec<u64> = rows(&first, "ext_demo").iter().map(ext_seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Phase 2: broker down, rows keep coming; the agent serves /metrics and queues.
    broker.stop();
    probe.set_go(true);
    let samples = agent.wait_for(WAIT, "rows queued while the broker is down", |s| {
        let c = counts(s);
        c.queued >= before.queued + 3.0 && c.balanced()
    });
    let during = counts(&samples);
    assert_eq!(during.delivered, before.delivered, "{during:?}");
    std::thread::sleep(Duration::from_secs(3));
    probe.set_go(false);
    let outage = wait_quiet(&agent);
    assert_eq!(outage.delivered, before.delivered, "{outage:?}");
    assert!(outage.balanced(), "{outage:?}");
    let made_in_outage = outage.queued - before.queued;

    // Phase 3: the broker is back (empty); delivery resumes without help.
    broker.start();
    let consumer = Consumer::start(&broker, &[ROWS, META_TOPIC]);
    let after = wait_settled(&agent, &consumer, before.delivered);
    let second = consumer.messages();
    let resent = rows(&second, "ext_demo");
    // Every message of the outage is accounted for: delivered to the new broker (and read
    // back, one for one), or failed (counted); none was refused at the queue.
    let lost = after.failed - before.failed;
    assert_eq!(after.dropped_other, 0.0, "{after:?}");
    assert_eq!(
        after.delivered - before.delivered,
        made_in_outage - lost,
        "before {before:?} outage {outage:?} after {after:?}"
    );
    assert_eq!(second.len() as f64, made_in_outage - lost, "{second:?}");
    assert!(
        resent.iter().all(|r| ext_seq(r) > last_seq),
        "{resent:?} after {last_seq}"
    );

    // New rows after the restart arrive too.
    probe.set_go(true);
    let top = resent.iter().map(ext_seq).max().unwrap_or(last_seq);
    consumer.wait_for(WAIT, "fresh rows after the restart", |m| {
        rows(m, "ext_demo").iter().any(|r| ext_seq(r) > top + 2)
    });
    probe.set_go(false);
    wait_quiet(&agent);
    let end = wait_settled(&agent, &consumer, before.delivered);
    for r in rows(&consumer.messages(), "ext_demo") {
        assert_eq!(
            (field(&r, "host"), field(&r, "port"), field(&r, "load")),
            ("h1", "80", "1.5")
        );
    }
    assert!(end.settled(), "{end:?}");
}

/// No broker when the agent starts: /metrics is served, rows queue, and delivery starts by
/// itself once the broker appears.
#[test]
fn broker_absent_at_start_then_delivery_begins() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    let probe = ExtProbe::counting();
    probe.set_go(true);
    let agent = Agent::start(&agent_config(&broker.addr(), &probe.config()));
    let samples = agent.wait_for(WAIT, "rows queued without a broker", |s| {
        counts(s).queued >= 3.0
            && s.iter()
                .any(|x| x.name == "gala_gopher_ext_demo_requests_total")
    });
    assert_eq!(counts(&samples).delivered, 0.0);
    assert!(counts(&samples).balanced(), "{:?}", counts(&samples));

    broker.start();
    let consumer = Consumer::start(&broker, &[ROWS, META_TOPIC]);
    let got = consumer.wait_for(WAIT, "rows after the broker appeared", |m| {
        rows(m, "ext_demo").len() >= 3
    });
    let r = rows(&got, "ext_demo");
    let seqs: Vec<u64> = r.iter().map(ext_seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    probe.set_go(false);
    wait_quiet(&agent);
    let end = wait_settled(&agent, &consumer, 0.0);
    assert_eq!(end.dropped_other, 0.0, "{end:?}");
}

/// Table names of a metadata message (whatever the key naming it).
fn meta_table(v: &Value) -> String {
    ["table_name", "meta_name", "entity_name"]
        .iter()
        .find_map(|k| v[*k].as_str())
        .unwrap_or_else(|| panic!("metadata without a table name: {v}"))
        .to_owned()
}

/// Names listed under `key` (strings, or objects with a "name").
fn names(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no array {key} in {v}"))
        .iter()
        .map(|x| {
            x.as_str()
                .or_else(|| x["name"].as_str())
                .unwrap_or_else(|| panic!("{key} entry without a name: {x}"))
                .to_owned()
        })
        .collect()
}

/// The metadata topic carries one message per table with its keys, labels and metrics.
#[test]
fn metadata_topic_describes_each_table_once() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    let probe = ExtProbe::counting();
    probe.set_go(true);
    let agent = Agent::start(&agent_config(&broker.addr(), &probe.config()));
    let consumer = Consumer::start(&broker, &[META_TOPIC]);
    consumer.wait_for(WAIT, "ext_demo metadata", |m| {
        m.iter().any(|x| meta_table(&x.json()) == "ext_demo")
    });
    // Rows keep flowing for a while: the metadata is not repeated with them.
    std::thread::sleep(Duration::from_secs(4));
    let got = consumer.messages();
    let mut per_table: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for m in &got {
        let v = m.json();
        per_table.entry(meta_table(&v)).or_default().push(v);
    }
    for (table, msgs) in &per_table {
        assert_eq!(msgs.len(), 1, "{table}: {msgs:?}");
    }
    let demo = &per_table["ext_demo"][0];
    assert_eq!(names(demo, "keys"), ["host", "port"], "{demo}");
    assert_eq!(names(demo, "labels"), ["kind"], "{demo}");
    assert_eq!(names(demo, "metrics"), ["requests", "load"], "{demo}");
    assert_eq!(names(demo, "fields"), EXT_FIELDS, "{demo}");
    let m = got
        .iter()
        .find(|m| meta_table(&m.json()) == "ext_demo")
        .unwrap();
    assert_eq!(m.key.as_deref(), Some("ext_demo"));
    drop(agent);
}
