//! Kafka egress, end to end: a real Kafka-protocol broker (tansu, memory storage) on a free
//! loopback port per test, the real agent producing to it, and an independent consumer
//! (Python confluent-kafka, `support/kafka_client.py`) reading what arrived. Records are checked
//! field by field against the rows the probes produced; faults are real (the broker process is
//! stopped and started again) and the agent's `gopher_kafka_*` counters must account for every
//! message. Counts are of consumed messages, never of high watermarks. Broker and consumer are in
//! `common/kafka.rs` (the load-balancer tests use them too).
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
// The agent.

/// An extension probe's rows arrive as flat JSON records, every value a string, exactly as
/// printed; empty values are sent as empty strings.
#[test]
fn extension_rows_arrive_field_by_field() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    let probe = ExtProbe::new(
        "while :; do\n  printf '|ext_demo|h1|80|web|n|42|1.5|\\n'\n  \
         printf '|ext_demo|h2||||7||\\n'\n  sleep 1\ndone",
    );
    let since = now_ms();
    let agent = Agent::start(&agent_config(&broker.addr(), &probe.config()));
    let consumer = Consumer::start(&broker, &[ROWS]);
    let got = consumer.wait_for(WAIT, "rows of h1 and h2", |m| {
        let r = rows(m, "ext_demo");
        ["h1", "h2"]
            .iter()
            .all(|h| r.iter().any(|x| x.get("host") == Some(&Value::from(*h))))
    });
    let expect: [(&str, [&str; 6]); 2] = [
        ("h1", ["h1", "80", "web", "n", "42", "1.5"]),
        ("h2", ["h2", "", "", "", "7", ""]),
    ];
    let r = rows(&got, "ext_demo");
    for (host, values) in expect {
        for row in r.iter().filter(|x| field(x, "host") == host) {
            check_envelope(row, "ext_demo", since);
            let keys: Vec<&str> = row.keys().map(String::as_str).collect();
            let mut want: Vec<&str> = ["timestamp", "hostname", "machine_id", "table_name"]
                .into_iter()
                .chain(EXT_FIELDS)
                .collect();
            want.sort_unstable();
            assert_eq!(keys, want, "{row:?}");
            for (name, value) in EXT_FIELDS.iter().zip(values) {
                assert_eq!(field(row, name), value, "{name} of {row:?}");
            }
        }
    }
    // Every message is a row of this table (no probe other than demo runs).
    assert!(got.iter().all(|m| m.json()["table_name"] == "ext_demo"));
    let c = counts(&agent.scrape().unwrap());
    assert!(c.delivered >= 2.0 && c.dropped_other == 0.0, "{c:?}");
}

/// tcp_link rows from a real loopback link with known byte counts, both ends.
#[test]
fn tcp_link_rows_match_real_traffic() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    let since = now_ms();
    let agent = Agent::start(&agent_config(
        &broker.addr(),
        "[[probes]]\nname = \"tcp\"\nswitch = \"on\"\ninterval = 1\n",
    ));
    agent.wait_for(WAIT, "tcp probe running", |s| {
        s.iter().any(|x| {
            x.name == "gopher_probe_state"
                && x.label("probe") == "tcp"
                && x.label("state") == "running"
                && x.value == 1.0
        })
    });
    let consumer = Consumer::start(&broker, &[ROWS]);

    let (c2s, s2c) = (5000usize, 3000usize);
    let mut server = Peer::spawn(
        &[],
        &[
            "server",
            "127.0.0.1",
            "0",
            &s2c.to_string(),
            &c2s.to_string(),
        ],
    );
    let port: u16 = server
        .line()
        .strip_prefix("ready ")
        .unwrap()
        .parse()
        .unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(&vec![b'x'; c2s]).unwrap();
    let mut buf = vec![0u8; s2c];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(server.line(), "done");
    let me = std::process::id().to_string();
    let (spid, scomm) = (server.pid().to_string(), server.comm());
    let my_comm = std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_owned();
    let port_s = port.to_string();
    let find = |m: &[Msg], role: &str, tx: usize, rx: usize, links: &str| {
        rows(m, "tcp_link").into_iter().rev().find(|x| {
            x.get("server_port") == Some(&Value::from(port_s.as_str()))
                && x.get("role") == Some(&Value::from(role))
                && x.get("tx_bytes") == Some(&Value::from(tx.to_string()))
                && x.get("rx_bytes") == Some(&Value::from(rx.to_string()))
                && x.get("link_count") == Some(&Value::from(links))
        })
    };
    let got = consumer.wait_for(WAIT, "both ends of the live link", |m| {
        find(m, "1", c2s, s2c, "1").is_some() && find(m, "0", s2c, c2s, "1").is_some()
    });
    let tcp_fields = [
        "tgid",
        "role",
        "client_ip",
        "server_ip",
        "server_port",
        "protocol",
        "netns",
        "process_name",
        "link_count",
        "rx_bytes",
        "tx_bytes",
        "packets_in",
        "packets_out",
        "retran_packets",
        "lost_packets",
        "rtt",
        "start_time",
        "send_rsts",
        "receive_rsts",
        "srtt",
        // Container and pod labels (empty here: both ends are host processes).
        "container_id",
        "container_name",
        "container_image",
        "pod_id",
        "pod",
        "pod_namespace",
    ];
    let netns = std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string();
    let netns = netns
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .to_owned();
    for (role, tgid, comm, tx, rx) in [
        ("1", me.as_str(), my_comm.as_str(), c2s, s2c),
        ("0", spid.as_str(), scomm.as_str(), s2c, c2s),
    ] {
        let row = find(&got, role, tx, rx, "1").unwrap();
        check_envelope(&row, "tcp_link", since);
        let mut want: Vec<&str> = ["timestamp", "hostname", "machine_id", "table_name"]
            .into_iter()
            .chain(tcp_fields)
            .collect();
        want.sort_unstable();
        assert_eq!(
            row.keys().map(String::as_str).collect::<Vec<_>>(),
            want,
            "{row:?}"
        );
        assert_eq!(field(&row, "tgid"), tgid, "{row:?}");
        assert_eq!(field(&row, "process_name"), comm, "{row:?}");
        for label in &tcp_fields[tcp_fields.len() - 6..] {
            assert_eq!(field(&row, label), "", "{label} of a host process: {row:?}");
        }
        assert_eq!(field(&row, "client_ip"), "127.0.0.1");
        assert_eq!(field(&row, "server_ip"), "127.0.0.1");
        assert_eq!(field(&row, "protocol"), "2");
        assert_eq!(field(&row, "netns"), netns);
        for counter in ["packets_in", "packets_out"] {
            let n: u64 = field(&row, counter).parse().unwrap();
            assert!(n >= 1, "{counter} of {row:?}");
        }
        for number in ["retran_packets", "lost_packets", "rtt"] {
            field(&row, number).parse::<f64>().unwrap();
        }
        assert_eq!(
            (field(&row, "send_rsts"), field(&row, "receive_rsts")),
            ("0", "0")
        );
        // The histogram's text form: cumulative `le=count` pairs, `+Inf=` the open connections.
        let srtt = field(&row, "srtt");
        assert!(
            srtt.starts_with("50=") && srtt.contains(" +Inf=1 sum="),
            "srtt {srtt:?}"
        );
        // When the link's counters started: after the agent did (this link is newer).
        let start: i64 = field(&row, "start_time").parse().unwrap();
        assert!(
            start >= since - 1000 && start <= now_ms(),
            "start_time {start} of {row:?}"
        );
    }

    // Closed: the last record of each end says link_count 0 with the same bytes, and equals
    // what /metrics shows for the link.
    drop(client);
    server.close();
    let got = consumer.wait_for(WAIT, "both ends closed", |m| {
        find(m, "1", c2s, s2c, "0").is_some() && find(m, "0", s2c, c2s, "0").is_some()
    });
    let samples = agent.scrape().unwrap();
    for role in ["0", "1"] {
        let row = rows(&got, "tcp_link")
            .into_iter()
            .rev()
            .find(|x| {
                x.get("server_port") == Some(&Value::from(port_s.as_str()))
                    && x.get("role") == Some(&Value::from(role))
            })
            .unwrap();
        for metric in [
            "rx_bytes",
            "tx_bytes",
            "packets_in",
            "packets_out",
            "link_count",
        ] {
            let sample = samples
                .iter()
                .find(|s| {
                    s.name
                        .strip_prefix("gala_gopher_tcp_link_")
                        .is_some_and(|n| n.trim_end_matches("_total") == metric)
                        && s.label("server_port") == port_s
                        && s.label("role") == role
                        && s.label("tgid") == field(&row, "tgid")
                })
                .unwrap_or_else(|| panic!("no {metric} on /metrics for role {role}"));
            assert_eq!(
                field(&row, metric).parse::<f64>().unwrap(),
                sample.value,
                "{metric} of role {role}: Kafka {row:?} vs /metrics"
            );
        }
    }
}

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

// ---------------------------------------------------------------------------------------------
// Faults.

/// Sum of `family` samples whose `reason` label is `why`.
fn by_reason(samples: &[Sample], family: &str, why: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == family && s.label("reason") == why)
        .map(|s| s.value)
        .sum()
}

/// The last `requests` value the probe printed, as /metrics shows it.
fn last_requests(samples: &[Sample]) -> f64 {
    samples
        .iter()
        .find(|s| s.name == "gala_gopher_ext_demo_requests_total")
        .map_or(0.0, |s| s.value)
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

/// Highest `requests` (the probe's sequence number) among the consumed rows of host `h1`.
fn top_seq(msgs: &[Msg]) -> u64 {
    rows(msgs, "ext_demo")
        .iter()
        .filter(|r| field(r, "host") == "h1")
        .map(ext_seq)
        .max()
        .unwrap_or(0)
}

/// A row whose JSON is larger than `message_max_bytes` is refused by the producer, counted as
/// dropped{too_large}, never reaches the broker; the agent keeps running and the normal rows
/// around it keep arriving.
#[test]
fn message_too_large_is_dropped_and_counted() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    // While `go` exists: h1 (small) and big (a 1500-byte note) rows, five times a second.
    let probe = ExtProbe::new(
        "big=$(head -c 1500 /dev/zero | tr '\\0' x)\ni=0\nwhile :; do\n  \
         if [ -e go ]; then\n    i=$((i+1))\n    \
         printf '|ext_demo|h1|80|web|n|%d|1.5|\\n' \"$i\"\n    \
         printf '|ext_demo|big|80|web|%s|%d|1.5|\\n' \"$big\" \"$i\"\n  fi\n  sleep 0.2\ndone",
    );
    probe.set_go(true);
    let agent = Agent::start(&agent_config_with(
        &broker.addr(),
        "message_max_bytes = 1000",
        1,
        &probe.config(),
    ));
    let consumer = Consumer::start(&broker, &[ROWS, META_TOPIC]);
    let s = agent.wait_for(WAIT, "too-large rows dropped", |s| {
        by_reason(s, "gopher_kafka_dropped_total", "too_large") >= 2.0
    });
    let dropped = by_reason(&s, "gopher_kafka_dropped_total", "too_large");
    let seen = top_seq(&consumer.messages());
    consumer.wait_for(WAIT, "h1 rows after the drops", |m| top_seq(m) >= seen + 5);
    agent.wait_for(WAIT, "more drops, agent still serving", |s| {
        by_reason(s, "gopher_kafka_dropped_total", "too_large") >= dropped + 2.0
    });
    probe.set_go(false);
    wait_quiet(&agent);
    let end = wait_settled(&agent, &consumer, 0.0);
    let got = consumer.messages();
    let r = rows(&got, "ext_demo");
    assert!(
        r.iter().all(|x| field(x, "host") == "h1"),
        "a big row arrived"
    );
    // Too large for the producer: never queued, so not in queued/delivered/failed.
    assert_eq!(end.failed, 0.0, "{end:?}");
    assert!(end.dropped_other >= dropped + 2.0, "{end:?}");
    assert!(end.settled(), "{end:?}");
}

/// The records' topic does not exist on a running broker (no auto-creation): the agent keeps
/// running, every message for it ends up counted (failed or dropped, reason unknown_topic)
/// while the metadata topic is served, and once the topic is created delivery starts by itself.
#[test]
fn missing_topic_is_counted_then_delivery_starts_once_created() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start_with(&[META_TOPIC]);
    // librdkafka gives a missing topic `topic.metadata.propagation.max.ms` (30 s by default)
    // to appear before failing its messages, and looks again every refresh interval.
    let (probe, agent) = counting_agent(
        &broker,
        "properties = { \"topic.metadata.propagation.max.ms\" = \"2000\", \
         \"topic.metadata.refresh.interval.ms\" = \"1000\" }",
        1,
        true,
    );
    let unknown = |s: &[Sample]| {
        by_reason(s, "gopher_kafka_failed_total", "unknown_topic")
            + by_reason(s, "gopher_kafka_dropped_total", "unknown_topic")
    };
    let s = agent.wait_for(WAIT, "messages to the missing topic counted", |s| {
        unknown(s) >= 3.0
    });
    assert_eq!(
        counts(&s).delivered,
        1.0,
        "only the metadata: {:?}",
        counts(&s)
    );
    let consumer = Consumer::start(&broker, &[ROWS, META_TOPIC]);
    broker.create_topic(ROWS);
    consumer.wait_for(WAIT, "rows once the topic exists", |m| {
        rows(m, "ext_demo").len() >= 3
    });
    probe.set_go(false);
    wait_quiet(&agent);
    let end = wait_settled(&agent, &consumer, 0.0);
    // Every message: delivered, or counted under unknown_topic.
    let s = agent.scrape().unwrap();
    assert_eq!(
        end.queued + end.dropped_other,
        end.delivered + unknown(&s),
        "{end:?}"
    );
}

/// The broker stays away longer than `message_timeout_ms`: the queued messages fail, counted
/// as failed{timeout}, none of them arrives later; the agent keeps running, and delivery
/// resumes by itself once the broker is back.
#[test]
fn outage_longer_than_message_timeout_fails_then_resumes() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    let (probe, agent) = counting_agent(&broker, "message_timeout_ms = 3000", 1, false);
    let mut consumer = Consumer::start(&broker, &[ROWS, META_TOPIC]);
    let before = first_rows_settled(&agent, &probe, &consumer);
    consumer.stop();

    broker.stop();
    probe.set_go(true);
    // One record (one key), one message per 1 s pass: about 4 of them.
    std::thread::sleep(Duration::from_secs(4));
    probe.set_go(false);
    let outage = wait_quiet(&agent);
    let made = outage.queued - before.queued;
    assert!(made >= 3.0, "{outage:?}");
    let s = agent.wait_for(WAIT, "the outage's messages failed by timeout", |s| {
        let c = counts(s);
        c.failed - before.failed == made && c.in_queue == 0.0
    });
    let timed_out = by_reason(&s, "gopher_kafka_failed_total", "timeout");
    assert_eq!(timed_out, made, "{:?}", counts(&s));
    let last_failed_seq = last_requests(&s);

    broker.start();
    let consumer = Consumer::start(&broker, &[ROWS, META_TOPIC]);
    probe.set_go(true);
    consumer.wait_for(WAIT, "fresh rows after the outage", |m| {
        rows(m, "ext_demo").len() >= 3
    });
    probe.set_go(false);
    wait_quiet(&agent);
    let end = wait_settled(&agent, &consumer, before.delivered);
    // Rows made while librdkafka reconnects (its back-off exceeds the 3 s timeout) may fail
    // too; every message is still delivered (and consumed) or failed.
    assert!(end.failed >= before.failed + made, "{end:?}");
    assert!(end.delivered > before.delivered, "{end:?}");
    assert_eq!(end.queued, end.delivered + end.failed, "{end:?}");
    // What failed stays failed: only rows made after the broker came back arrive.
    for r in rows(&consumer.messages(), "ext_demo") {
        assert!(ext_seq(&r) as f64 > last_failed_seq, "{r:?}");
    }
}

/// SIGTERM: rows the agent holds but has not sent (egress interval far away) are sent by the
/// last pass and flushed before the agent exits, within the bounded wait; with the broker
/// gone the agent still exits after `flush_timeout`.
#[test]
fn sigterm_flushes_pending_rows_within_the_bound() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    // Egress every hour: only the start pass and the shutdown pass run.
    let (probe, mut agent) = counting_agent(
        &broker,
        "flush_timeout = 10\nqueue_buffering_max_ms = 500",
        3600,
        false,
    );
    let consumer = Consumer::start(&broker, &[ROWS]);
    probe.set_go(true);
    let s = agent.wait_for(WAIT, "rows stored", |s| last_requests(s) >= 5.0);
    let stored = last_requests(&s);
    std::thread::sleep(Duration::from_secs(1));
    assert!(consumer.messages().is_empty(), "rows sent before shutdown");
    let (status, took) = agent.terminate(Duration::from_secs(30));
    let status = status.expect("the agent did not exit within 30 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    // stop_grace (2 s) for the probes, then the flush (10 s at most; it needs far less).
    assert!(took < Duration::from_secs(12), "shutdown took {took:?}");
    let got = consumer.wait_for(WAIT, "the rows sent at shutdown", |m| {
        top_seq(m) as f64 >= stored
    });
    let r = rows(&got, "ext_demo");
    assert_eq!(r.len(), 1, "one record, sent once: {r:?}");
    check_envelope(&r[0], "ext_demo", 0);

    // The broker gone: the flush gives up after flush_timeout; the exit stays bounded.
    broker.stop();
    let mut agent = Agent::start(&agent_config_with(
        &broker.addr(),
        "flush_timeout = 2",
        3600,
        &probe.config(),
    ));
    agent.wait_for(WAIT, "rows stored", |s| last_requests(s) >= 1.0);
    let (status, took) = agent.terminate(Duration::from_secs(30));
    let status = status.expect("the agent did not exit within 30 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "shutdown took {took:?} (stop_grace 2 s + flush_timeout 2 s)"
    );
}

/// Runs the agent with `config` expecting it to refuse to start; returns what it printed.
fn start_error(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probes.toml");
    let port = free_port();
    std::fs::write(
        &path,
        format!("{config}\n[web_server]\nbind_addr = \"127.0.0.1\"\nport = {port}\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gopher"))
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > WAIT {
            let _ = child.kill();
            panic!("the agent kept running with {config}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{config}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `[kafka.properties]` reaches librdkafka: a setting it refuses stops the agent at start with
/// a message naming the property, and accepted ones (TLS/SASL names included) let it run and
/// deliver.
#[test]
fn kafka_properties_reach_librdkafka() {
    let Some(bin) = kafka_available() else { return };
    let refused = [
        (
            "\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"/nonexistent/ca.pem\"",
            // librdkafka names the first of them it refuses; the order is not fixed.
            "security.protocol|ssl.ca.location",
        ),
        ("\"no.such.property\" = \"1\"", "no.such.property"),
        (
            "\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanism\" = \"NO-SUCH\"",
            "NO-SUCH",
        ),
        (
            "\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanism\" = \"PLAIN\"",
            "sasl.username",
        ),
        ("\"acks\" = \"sometimes\"", "acks"),
    ];
    // librdkafka has OpenSSL: the unreadable CA file is refused when the producer is made.
    for (props, named) in refused {
        let err = start_error(&format!(
            "[kafka]\nswitch = \"on\"\nkafka_broker = \"127.0.0.1:1\"\n[kafka.properties]\n{props}\n"
        ));
        assert!(err.contains("kafka.properties"), "{props}: {err}");
        assert!(named.split('|').any(|n| err.contains(n)), "{props}: {err}");
    }

    let mut broker = Broker::new(bin, free_port());
    broker.start();
    let (probe, agent) = counting_agent(
        &broker,
        "properties = { \"client.id\" = \"gopher-kafka-test\", \"acks\" = \"all\", \
         \"security.protocol\" = \"plaintext\", \"sasl.username\" = \"unused\" }",
        1,
        true,
    );
    let consumer = Consumer::start(&broker, &[ROWS]);
    consumer.wait_for(WAIT, "rows with the extra properties", |m| {
        rows(m, "ext_demo").len() >= 2
    });
    drop(agent);

    // SASL settings librdkafka accepts, SCRAM included (it comes with OpenSSL): the agent runs
    // (tansu speaks no SASL, so nothing is delivered; only the passthrough is checked here).
    for mechanism in ["PLAIN", "SCRAM-SHA-512"] {
        let agent = Agent::start(&agent_config_with(
            &broker.addr(),
            &format!(
                "properties = {{ \"security.protocol\" = \"sasl_plaintext\", \
                 \"sasl.mechanism\" = \"{mechanism}\", \"sasl.username\" = \"u\", \
                 \"sasl.password\" = \"p\" }}"
            ),
            1,
            &probe.config(),
        ));
        std::thread::sleep(Duration::from_secs(2));
        agent.scrape().unwrap();
    }
}

/// A table definition whose delivery failed (no broker, short message timeout) is published
/// again once a broker is there: a consumer can still learn the table.
#[test]
fn failed_metadata_is_published_again() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    let (_probe, agent) = counting_agent(&broker, "message_timeout_ms = 1000", 1, true);
    agent.wait_for(WAIT, "the first messages failed", |s| {
        by_reason(s, "gopher_kafka_failed_total", "timeout") >= 2.0
    });
    broker.start();
    let consumer = Consumer::start(&broker, &[META_TOPIC]);
    consumer.wait_for(WAIT, "ext_demo metadata after the failure", |m| {
        m.iter().any(|x| meta_table(&x.json()) == "ext_demo")
    });
    // Published again once, not on every pass.
    std::thread::sleep(Duration::from_secs(4));
    let n = consumer
        .messages()
        .iter()
        .filter(|x| meta_table(&x.json()) == "ext_demo")
        .count();
    assert_eq!(n, 1);
}

// ---------------------------------------------------------------------------------------------
// TLS (tansu has no TLS listener: a TLS-terminating proxy, support/tls_proxy.py, stands in
// front of it, and the broker advertises the proxy, so every connection a client makes after
// the bootstrap goes through TLS too).

/// A test CA, a server certificate for localhost/127.0.0.1 signed by it, and an unrelated
/// ("rogue") CA, as PEM files in a temporary directory (`common::pki`'s, written out).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let certs = common::pki::pki();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        for (name, text) in [
            ("ca.pem", &certs.ca),
            ("rogue-ca.pem", &certs.rogue_ca),
            ("server.pem", &certs.server.0),
            ("server.key", &certs.server.1),
        ] {
            common::pki::write(pki.dir.path(), name, text);
        }
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `support/tls_proxy.py` on `port`, terminating TLS with the [`Pki`] server certificate and
/// forwarding to `upstream` in plain TCP.
struct TlsProxy {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl TlsProxy {
    fn start(port: u16, upstream: &str, pki: &Pki) -> TlsProxy {
        let mut child = Command::new("python3")
            .arg(support("tls_proxy.py"))
            .arg(port.to_string())
            .arg(upstream)
            .arg(pki.path("server.pem"))
            .arg(pki.path("server.key"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening", "tls_proxy.py did not start");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let err = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in err.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        TlsProxy { child, log }
    }

    /// Connections whose TLS handshake succeeded so far.
    fn handshakes(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == "tls ok")
            .count()
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker behind a TLS proxy: tansu on a plain loopback port advertising the proxy's port;
/// clients bootstrap with [`TlsBroker::addr`].
struct TlsBroker {
    pki: Pki,
    proxy: TlsProxy,
    proxy_port: u16,
    _broker: Broker,
}

impl TlsBroker {
    fn start(bin: PathBuf) -> TlsBroker {
        let pki = Pki::new();
        let proxy_port = free_port();
        let mut broker = Broker::new(bin, free_port());
        broker.advertised = Some(format!("tcp://localhost:{proxy_port}"));
        broker.start();
        let proxy = TlsProxy::start(proxy_port, &broker.addr(), &pki);
        TlsBroker {
            pki,
            proxy,
            proxy_port,
            _broker: broker,
        }
    }

    fn addr(&self) -> String {
        format!("localhost:{}", self.proxy_port)
    }

    /// `[kafka]` lines: TLS trusting the CA file `ca` (a [`Pki`] file name), and `more`.
    fn kafka(&self, ca: &str, more: &str) -> String {
        format!(
            "{more}\n[kafka.properties]\n\"security.protocol\" = \"ssl\"\n\
             \"ssl.ca.location\" = \"{}\"\n",
            self.pki.path(ca).display()
        )
    }
}

/// `security.protocol = "ssl"` with the broker's CA: rows are delivered over TLS (the only
/// way to the broker the agent is given, and the one the broker advertises), a TLS consumer
/// reads them, and the counters balance.
#[test]
fn tls_delivers_rows_to_a_verified_broker() {
    let Some(bin) = kafka_available() else { return };
    let tls = TlsBroker::start(bin);
    let probe = ExtProbe::counting();
    let since = now_ms();
    let agent = Agent::start(&agent_config_with(
        &tls.addr(),
        &tls.kafka("ca.pem", ""),
        1,
        &probe.config(),
    ));
    let consumer = Consumer::start_at(
        &tls.addr(),
        &[ROWS, META_TOPIC],
        Some(&tls.pki.path("ca.pem")),
    );
    let c = first_rows_settled(&agent, &probe, &consumer);
    assert!(c.delivered >= 3.0 && c.failed == 0.0, "{c:?}");
    let msgs = consumer.messages();
    for row in rows(&msgs, "ext_demo") {
        check_envelope(&row, "ext_demo", since);
        assert_eq!(field(&row, "host"), "h1");
    }
    assert!(
        msgs.iter()
            .any(|m| m.topic == META_TOPIC && meta_table(&m.json()) == "ext_demo"),
        "no metadata for ext_demo"
    );
    // Agent and consumer each: the bootstrap connection and the advertised broker's.
    assert!(tls.proxy.handshakes() >= 2, "{:?}", tls.proxy.log);
}

/// A CA that did not sign the broker's certificate: the handshake fails, nothing is
/// delivered, the messages stay queued and then fail by timeout (counted); the agent keeps
/// running and serving /metrics.
#[test]
fn tls_with_the_wrong_ca_delivers_nothing_and_counts_it() {
    let Some(bin) = kafka_available() else { return };
    let tls = TlsBroker::start(bin);
    let probe = ExtProbe::counting();
    probe.set_go(true);
    let mut agent = Agent::start(&agent_config_with(
        &tls.addr(),
        &tls.kafka("rogue-ca.pem", "message_timeout_ms = 3000"),
        1,
        &probe.config(),
    ));
    // (Balanced: every message queued is failed or still queued.) Balanced is only exact at a
    // scrape with no timeout between the queue gauge's sample and the counters (see `balanced`),
    // and here messages time out every second: on a loaded machine such a scrape can take
    // longer to come than `WAIT`.
    let s = agent.wait_for(WAIT * 3, "messages failed by timeout", |s| {
        by_reason(s, "gopher_kafka_failed_total", "timeout") >= 3.0 && counts(s).balanced()
    });
    let c = counts(&s);
    assert_eq!(c.delivered, 0.0, "{c:?}");
    assert_eq!(
        c.failed,
        by_reason(&s, "gopher_kafka_failed_total", "timeout")
    );
    assert_eq!(tls.proxy.handshakes(), 0, "{:?}", tls.proxy.log);
    // Still running, still serving, still trying.
    std::thread::sleep(Duration::from_secs(2));
    let later = counts(&agent.scrape().unwrap());
    assert!(
        later.queued > c.queued && later.delivered == 0.0,
        "{later:?}"
    );
    let (status, _) = agent.terminate(Duration::from_secs(30));
    assert!(status.expect("no exit after SIGTERM").success());
}

/// `compression_codec = "zstd"`: rows are produced zstd-compressed and the consumer reads them.
#[test]
fn zstd_compressed_rows_arrive() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    let (probe, agent) = counting_agent(&broker, "compression_codec = \"zstd\"", 1, false);
    let consumer = Consumer::start(&broker, &[ROWS, META_TOPIC]);
    let c = first_rows_settled(&agent, &probe, &consumer);
    assert!(c.delivered >= 3.0 && c.failed == 0.0, "{c:?}");
    for row in rows(&consumer.messages(), "ext_demo") {
        check_envelope(&row, "ext_demo", 0);
    }
}

/// nginx_statistic rows of a real nginx (HTTP and stream proxy, see `common::nginx`) arrive
/// with gala-gopher's envelope and exactly the fields gala-spider reads, every value a string.
#[test]
fn nginx_statistic_rows_arrive_field_by_field() {
    let Some(bin) = kafka_available() else { return };
    // Held to the end: the nginx, its backends and the lock against the other nginx tests.
    let Some(setup) = common::nginx::setup() else {
        return;
    };
    let (hb, sb, http, stream) = (&setup.hb, &setup.sb, setup.http, setup.stream);
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    let since = now_ms();
    let agent = Agent::start(&agent_config(
        &broker.addr(),
        "[[probes]]\nname = \"nginx_link\"\nswitch = \"on\"\ninterval = 1\n",
    ));
    common::nginx::traced(&agent);
    let (a, b) = (
        std::net::Ipv4Addr::new(127, 1, 0, 4),
        std::net::Ipv4Addr::new(127, 1, 0, 5),
    );
    let _held = [
        common::nginx::http_session(a, http),
        common::nginx::http_session(a, http),
        common::nginx::stream_session(b, stream),
    ];
    common::nginx::wait_held(hb, sb, (2, 1));
    let want = [
        [
            "127.1.0.4",
            "127.0.0.1",
            &http.to_string(),
            "127.0.0.1",
            &hb.port.to_string(),
            "1",
            "2",
        ],
        [
            "127.1.0.5",
            "127.0.0.1",
            &stream.to_string(),
            "127.0.0.1",
            &sb.port.to_string(),
            "0",
            "1",
        ],
    ];
    let fields = common::nginx::FIELDS;
    let ours = |m: &[Msg]| -> Vec<BTreeMap<String, Value>> {
        rows(m, "nginx_statistic")
            .into_iter()
            .filter(|r| {
                want.iter()
                    .any(|w| r.get("virtual_port") == Some(&Value::from(w[2])))
            })
            .collect()
    };
    let got = Consumer::start(&broker, &[ROWS]).wait_for(WAIT, "both nginx rows", |m| {
        let r = ours(m);
        want.iter().all(|w| {
            r.iter().any(|x| {
                fields
                    .iter()
                    .zip(w)
                    .all(|(f, v)| x.get(*f) == Some(&Value::from(*v)))
            })
        })
    });
    for row in ours(&got) {
        check_envelope(&row, "nginx_statistic", since);
        let mut keys: Vec<&str> = row.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expect: Vec<&str> = ["timestamp", "hostname", "machine_id", "table_name"]
            .into_iter()
            .chain(fields)
            .collect();
        expect.sort_unstable();
        assert_eq!(keys, expect, "{row:?}");
    }
}
