//! Faults, each real: a row too large, a missing topic, an outage longer than the message
//! timeout, SIGTERM with rows pending, bad librdkafka properties, metadata that failed to go
//! out; each one counted in `gopher_kafka_*` and none silent.

use super::*;

/// The last `requests` value the probe printed, as /metrics shows it.
fn last_requests(samples: &[Sample]) -> f64 {
    samples
        .iter()
        .find(|s| s.name == "gala_gopher_ext_demo_requests_total")
        .map_or(0.0, |s| s.value)
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
