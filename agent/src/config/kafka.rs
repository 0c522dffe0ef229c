//! `[kafka]`: the Kafka sink's broker, topics and librdkafka settings.

use std::time::Duration;

use toml::Spanned;

use super::bounds::MAX_INTERVAL;
use super::error::{DiagnosticKind, Reporter};
use super::node::{Node, TableView};
use super::switch::OnOff;

/// Kafka's own limit on topic name length.
const MAX_TOPIC_LEN: usize = 249;

/// Compression librdkafka applies to message batches (`compression.codec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub const WORDS: [&'static str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
    const ALL: [Self; 5] = [Self::None, Self::Gzip, Self::Snappy, Self::Lz4, Self::Zstd];

    pub fn as_str(self) -> &'static str {
        Self::WORDS[Self::ALL.iter().position(|c| *c == self).unwrap_or(0)]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kafka {
    pub switch: OnOff,
    /// `host:port[,host:port…]` (librdkafka `bootstrap.servers`).
    pub kafka_broker: String,
    /// Topic of the table records.
    pub kafka_topic: String,
    /// Topic of the table definitions.
    pub metadata_topic: String,
    /// librdkafka `batch.num.messages`.
    pub batch_num_messages: u32,
    /// librdkafka `queue.buffering.max.messages`: the bound on messages waiting for the broker.
    pub queue_buffering_max_messages: u32,
    /// librdkafka `queue.buffering.max.kbytes`.
    pub queue_buffering_max_kbytes: u32,
    /// librdkafka `queue.buffering.max.ms` (linger), milliseconds.
    pub queue_buffering_max_ms: u32,
    pub compression_codec: Compression,
    /// librdkafka `message.max.bytes`.
    pub message_max_bytes: u32,
    /// librdkafka `message.timeout.ms`: how long a queued message is retried before it fails.
    pub message_timeout_ms: u32,
    /// How long shutdown waits for queued messages to be delivered.
    pub flush_timeout: Duration,
    /// Passed verbatim to librdkafka after the settings above (TLS, SASL, …), in file order.
    pub properties: Vec<(String, String)>,
}

impl Default for Kafka {
    fn default() -> Self {
        Self {
            switch: OnOff::Off,
            kafka_broker: "localhost:9092".to_owned(),
            kafka_topic: "gala_gopher".to_owned(),
            metadata_topic: "gala_gopher_metadata".to_owned(),
            batch_num_messages: 10_000,
            queue_buffering_max_messages: 100_000,
            queue_buffering_max_kbytes: 1_048_576,
            queue_buffering_max_ms: 5,
            compression_codec: Compression::None,
            message_max_bytes: 1_000_000,
            message_timeout_ms: 300_000,
            flush_timeout: Duration::from_secs(10),
            properties: Vec::new(),
        }
    }
}

/// Settings the agent owns; `kafka.properties` may not set them (use the keys above instead).
const KAFKA_OWNED_PROPERTIES: [&str; 10] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "batch.num.messages",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "compression.codec",
    "message.max.bytes",
    "message.timeout.ms",
];

const KEYS: &[&str] = &[
    "switch",
    "kafka_broker",
    "kafka_topic",
    "metadata_topic",
    "batch_num_messages",
    "queue_buffering_max_messages",
    "queue_buffering_max_kbytes",
    "queue_buffering_max_ms",
    "compression_codec",
    "message_max_bytes",
    "message_timeout_ms",
    "flush_timeout",
    "properties",
];

/// Reads `[kafka]`; problems are reported in the order of the steps below (topics, limits,
/// codec and properties, broker), as the tests of file order expect.
pub(super) fn kafka(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>) -> Kafka {
    let mut out = Kafka::default();
    let Some(t) = node.and_then(|n| TableView::of(rep, n, "kafka".into(), KEYS, true)) else {
        return out;
    };
    if let Some((i, _)) = t.word(rep, "switch", &["on", "off"]) {
        out.switch = [OnOff::On, OnOff::Off][i];
    }
    topics(rep, &t, &mut out);
    limits(rep, &t, &mut out);
    if let Some((i, _)) = t.word(rep, "compression_codec", &Compression::WORDS) {
        out.compression_codec = Compression::ALL[i];
    }
    if let Some(p) = t.get("properties") {
        out.properties = kafka_properties(rep, p, t.path_of("properties"));
    }
    broker(rep, &t, &mut out);
    out
}

/// `kafka_topic` and `metadata_topic`: legal names, and not the same topic.
fn topics(rep: &mut Reporter<'_>, t: &TableView<'_>, out: &mut Kafka) {
    for (key, slot) in [
        ("kafka_topic", &mut out.kafka_topic),
        ("metadata_topic", &mut out.metadata_topic),
    ] {
        if let Some((topic, span)) = t.string(rep, key) {
            if let Err(why) = check_topic(topic) {
                rep.report(&span, &t.path_of(key), DiagnosticKind::InvalidValue, why);
            }
            topic.clone_into(slot);
        }
    }
    if out.kafka_topic == out.metadata_topic {
        let span = t
            .get("metadata_topic")
            .map_or_else(|| t.span.clone(), Spanned::span);
        rep.report(
            &span,
            &t.path_of("metadata_topic"),
            DiagnosticKind::InvalidValue,
            format!(
                "must differ from kafka_topic ({:?}): records and table definitions need their own topics",
                out.kafka_topic
            ),
        );
    }
}

/// The librdkafka numbers and `flush_timeout`.
fn limits(rep: &mut Reporter<'_>, t: &TableView<'_>, out: &mut Kafka) {
    // Ranges are librdkafka's own, so that a bad value is reported here rather than at start.
    let ranges: [(&str, &mut u32, std::ops::RangeInclusive<i64>, &str); 7] = [
        (
            "batch_num_messages",
            &mut out.batch_num_messages,
            1..=1_000_000,
            "",
        ),
        (
            "queue_buffering_max_messages",
            &mut out.queue_buffering_max_messages,
            1..=2_147_483_647,
            "",
        ),
        (
            "queue_buffering_max_kbytes",
            &mut out.queue_buffering_max_kbytes,
            1..=2_147_483_647,
            " KiB",
        ),
        (
            "queue_buffering_max_ms",
            &mut out.queue_buffering_max_ms,
            0..=900_000,
            " ms",
        ),
        (
            "message_max_bytes",
            &mut out.message_max_bytes,
            1000..=1_000_000_000,
            " bytes",
        ),
        (
            "message_timeout_ms",
            &mut out.message_timeout_ms,
            1..=2_147_483_647,
            " ms",
        ),
        ("flush_timeout", &mut 0, 0..=MAX_INTERVAL, " seconds"),
    ];
    for (key, slot, range, unit) in ranges {
        if let Some(v) = t.int_in(rep, key, range, unit) {
            *slot = v as u32;
            if key == "flush_timeout" {
                out.flush_timeout = Duration::from_secs(v.unsigned_abs());
            }
        }
    }
}

/// `kafka_broker`, checked only when Kafka is on.
fn broker(rep: &mut Reporter<'_>, t: &TableView<'_>, out: &mut Kafka) {
    let broker = t.string(rep, "kafka_broker");
    if let Some((b, _)) = broker {
        b.clone_into(&mut out.kafka_broker);
    }
    // A broker list only matters when Kafka is on; an unused placeholder should not block startup.
    if out.switch.is_on() {
        let span = broker.map_or_else(|| t.span.clone(), |(_, s)| s);
        if let Err(why) = check_brokers(&out.kafka_broker) {
            rep.report(
                &span,
                &t.path_of("kafka_broker"),
                DiagnosticKind::InvalidValue,
                why,
            );
        }
    }
}

/// `[kafka.properties]`: string → string, in file order, minus the settings the agent owns.
/// librdkafka's names are dotted, and TOML reads an unquoted `security.protocol = "ssl"` as a
/// nested table; such tables are joined back into the dotted name (quoting is not required).
fn kafka_properties(
    rep: &mut Reporter<'_>,
    node: &Spanned<Node>,
    path: String,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(props) = TableView::of(rep, node, path, &[], false) {
        collect_properties(rep, &props, "", &mut out);
    }
    out
}

fn collect_properties(
    rep: &mut Reporter<'_>,
    props: &TableView<'_>,
    prefix: &str,
    out: &mut Vec<(String, String)>,
) {
    for (key, value) in props.entries() {
        let name = format!("{prefix}{}", key.get_ref());
        let path = props.path_of(key.get_ref());
        if let Node::Table(_) = value.get_ref() {
            if let Some(inner) = TableView::of(rep, value, path, &[], false) {
                collect_properties(rep, &inner, &format!("{name}."), out);
            }
            continue;
        }
        if KAFKA_OWNED_PROPERTIES.contains(&name.as_str()) {
            rep.report(
                &key.span(),
                &path,
                DiagnosticKind::InvalidValue,
                "set by the agent from the kafka keys above; set it there".to_owned(),
            );
            continue;
        }
        match value.get_ref() {
            Node::Str(v) => out.push((name, v.clone())),
            other => rep.report(
                &value.span(),
                &path,
                DiagnosticKind::WrongType,
                format!(
                    "expected a string (librdkafka takes every property as text), found {}",
                    other.describe()
                ),
            ),
        }
    }
}

fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "is {} characters long; Kafka allows at most {MAX_TOPIC_LEN}",
            topic.len()
        ));
    }
    if topic == "." || topic == ".." {
        return Err(format!("{topic:?} is not a legal Kafka topic name"));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{topic:?} contains {c:?}; Kafka topics allow only [a-zA-Z0-9._-]"
        ));
    }
    Ok(())
}

/// `host:port[,host:port…]`, the librdkafka `bootstrap.servers` form; IPv6 hosts in brackets.
fn check_brokers(list: &str) -> Result<(), String> {
    if list.trim().is_empty() {
        return Err(
            "must list at least one broker as \"host:port\" when kafka.switch = \"on\"".to_owned(),
        );
    }
    for broker in list.split(',').map(str::trim) {
        let bad =
            || format!("{broker:?} is not \"host:port\" (port 1-65535; IPv6 as \"[addr]:port\")");
        let (host, port) = broker.rsplit_once(':').ok_or_else(bad)?;
        let host_ok = if let Some(inner) = host.strip_prefix('[') {
            inner
                .strip_suffix(']')
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            !host.is_empty() && !host.contains(':') && !host.contains(char::is_whitespace)
        };
        if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad());
        }
    }
    Ok(())
}
