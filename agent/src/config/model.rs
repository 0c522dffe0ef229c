//! The `probes.toml` model: gala-gopher.conf's sections in TOML, validated with positions.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::error::{ConfigError, DiagnosticKind, Reporter};
use super::node::{self, Node, TableView};
// Probe vocabulary, defined where probes are (configuration reads it; probes never read
// configuration).
pub use crate::probes::settings::{CheckType, Switch};

/// Probes compiled into the agent: declared once, in the native-probe registry.
pub const NATIVE_PROBES: &[&str] = &crate::probes::registry::NAMES;

/// Longest period accepted for any interval: beyond an hour, data is too stale to be useful and
/// the value is more likely a unit mistake (milliseconds typed as seconds).
const MAX_INTERVAL_SECS: i64 = 3600;
/// `record_timeout` above a day is almost certainly a unit mistake too.
const MAX_RECORD_TIMEOUT_SECS: i64 = 86_400;
/// Sanity bound on table-store capacities; keeps a typo from reserving absurd memory.
const MAX_CAPACITY: i64 = 1 << 20;
/// Kafka's own limit on topic name length.
const MAX_TOPIC_LEN: usize = 249;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub global: Global,
    pub ingress: Ingress,
    pub egress: Egress,
    pub imdb: Imdb,
    pub web_server: WebServer,
    pub kafka: Kafka,
    pub probes: Vec<NativeProbe>,
    pub extend_probes: Vec<ExtendProbe>,
    pub meta: MetaSection,
    pub supervision: Supervision,
    pub control: super::control::Control,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Global {
    /// `None` = log to stderr (journald picks it up under systemd).
    pub log_directory: Option<PathBuf>,
    pub log_level: LogLevel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    const WORDS: [&'static str; 5] = ["error", "warn", "info", "debug", "trace"];
    const ALL: [LogLevel; 5] = [
        Self::Error,
        Self::Warn,
        Self::Info,
        Self::Debug,
        Self::Trace,
    ];

    pub fn as_str(self) -> &'static str {
        Self::WORDS[self as usize]
    }
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    pub interval: Duration,
}

impl Default for Ingress {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    pub interval: Duration,
    pub time_range: Duration,
}

impl Default for Egress {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            time_range: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imdb {
    pub max_tables_num: usize,
    pub max_records_num: usize,
    pub max_metrics_num: usize,
    /// `Duration::ZERO` = records never age out.
    pub record_timeout: Duration,
}

impl Default for Imdb {
    fn default() -> Self {
        Self {
            max_tables_num: 1024,
            max_records_num: 1024,
            max_metrics_num: 1024,
            record_timeout: Duration::from_mins(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebServer {
    pub bind_addr: String,
    pub port: u16,
}

impl Default for WebServer {
    fn default() -> Self {
        Self {
            bind_addr: "0.0.0.0".to_owned(),
            port: 8888,
        }
    }
}

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

#[derive(Debug, Clone, PartialEq)]
pub struct NativeProbe {
    pub name: String,
    pub switch: Switch,
    pub interval: Duration,
    /// Probe-specific settings, validated by the probe itself.
    pub params: toml::Table,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendProbe {
    pub name: String,
    pub command: String,
    pub param: String,
    pub start_check: Option<String>,
    pub check_type: CheckType,
    pub switch: Switch,
    /// Meta file describing the probe's tables; resolved against the config file's directory.
    pub meta: Option<PathBuf>,
    /// Whether the control channel may change `param` (the arguments of `command`). Off by
    /// default: arguments can change what a program does (`--config=/elsewhere`), so the
    /// operator opts in per probe.
    pub remote_param: bool,
}

/// How probes are restarted and stopped, and how often auto start checks run (not in
/// gala-gopher, whose probes were threads it re-created at most every two minutes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervision {
    /// First pause before restarting a probe that ended on its own; doubles per quick failure.
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
    /// Quick failures in a row after which a probe is left `failed`.
    pub max_quick_failures: u32,
    /// A run at least this long is not a quick failure (resets the count and the back-off).
    pub stable_after: Duration,
    /// Between SIGTERM and SIGKILL when an extension probe's process group is stopped.
    pub stop_grace: Duration,
    pub start_check_interval: Duration,
    pub start_check_timeout: Duration,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            restart_backoff: Duration::from_secs(1),
            restart_backoff_max: Duration::from_mins(1),
            max_quick_failures: 5,
            stable_after: Duration::from_mins(1),
            stop_grace: Duration::from_secs(5),
            start_check_interval: Duration::from_secs(10),
            start_check_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaSection {
    /// Directories whose `*.meta` / `*.toml` files define extra tables.
    pub dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn is_on(self) -> bool {
        self == Self::On
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for OnOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const SECTIONS: &[&str] = &[
    "global",
    "ingress",
    "egress",
    "imdb",
    "web_server",
    "kafka",
    "probes",
    "extend_probes",
    "meta",
    "supervision",
    "control",
];

/// Parses and validates `probes.toml` text; `origin` names the file in diagnostics and anchors
/// relative paths.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let mut rep = Reporter::new(origin, text);
    let Some(root) = node::parse_toml(text, &mut rep) else {
        return Err(ConfigError::Invalid {
            diagnostics: rep.diagnostics,
        });
    };
    let base = origin.parent().unwrap_or(Path::new(""));
    let root = TableView::new(&mut rep, &root, 0..0, String::new(), SECTIONS, true);
    let mut names = NameRegistry::default();
    let config = Config {
        global: global(&mut rep, root.get("global"), base),
        ingress: ingress(&mut rep, root.get("ingress")),
        egress: egress(&mut rep, root.get("egress")),
        imdb: imdb(&mut rep, root.get("imdb")),
        web_server: web_server(&mut rep, root.get("web_server")),
        kafka: kafka(&mut rep, root.get("kafka")),
        probes: root
            .tables(&mut rep, "probes")
            .into_iter()
            .filter_map(|(i, n)| native_probe(&mut rep, n, format!("probes[{i}]"), &mut names))
            .collect(),
        extend_probes: root
            .tables(&mut rep, "extend_probes")
            .into_iter()
            .filter_map(|(i, n)| {
                extend_probe(&mut rep, n, format!("extend_probes[{i}]"), base, &mut names)
            })
            .collect(),
        meta: meta(&mut rep, root.get("meta"), base),
        supervision: supervision(&mut rep, root.get("supervision")),
        control: super::control::control(&mut rep, root.get("control"), base),
    };
    rep.finish(config)
}

/// Reads `path` and parses it; see [`parse`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

fn secs(v: Option<i64>, default: Duration) -> Duration {
    v.map_or(default, |s| Duration::from_secs(s.unsigned_abs()))
}

fn global(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>, base: &Path) -> Global {
    let mut out = Global::default();
    let Some(t) = node.and_then(|n| {
        TableView::of(
            rep,
            n,
            "global".into(),
            &["log_directory", "log_level"],
            true,
        )
    }) else {
        return out;
    };
    if let Some((dir, _)) = t.string(rep, "log_directory") {
        out.log_directory = (!dir.is_empty()).then(|| base.join(dir));
    }
    if let Some((i, _)) = t.word(rep, "log_level", &LogLevel::WORDS) {
        out.log_level = LogLevel::ALL[i];
    }
    out
}

fn ingress(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>) -> Ingress {
    let mut out = Ingress::default();
    if let Some(t) = node.and_then(|n| TableView::of(rep, n, "ingress".into(), &["interval"], true))
    {
        out.interval = secs(
            t.int_in(rep, "interval", 1..=MAX_INTERVAL_SECS, " seconds"),
            out.interval,
        );
    }
    out
}

fn egress(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>) -> Egress {
    let mut out = Egress::default();
    if let Some(t) =
        node.and_then(|n| TableView::of(rep, n, "egress".into(), &["interval", "time_range"], true))
    {
        out.interval = secs(
            t.int_in(rep, "interval", 1..=MAX_INTERVAL_SECS, " seconds"),
            out.interval,
        );
        out.time_range = secs(
            t.int_in(rep, "time_range", 1..=MAX_INTERVAL_SECS, " seconds"),
            out.time_range,
        );
    }
    out
}

fn imdb(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>) -> Imdb {
    let mut out = Imdb::default();
    let allowed = [
        "max_tables_num",
        "max_records_num",
        "max_metrics_num",
        "record_timeout",
    ];
    if let Some(t) = node.and_then(|n| TableView::of(rep, n, "imdb".into(), &allowed, true)) {
        let cap = |rep: &mut Reporter<'_>, key, default: usize| {
            t.int_in(rep, key, 1..=MAX_CAPACITY, "")
                .map_or(default, |v| v.unsigned_abs() as usize)
        };
        out.max_tables_num = cap(rep, "max_tables_num", out.max_tables_num);
        out.max_records_num = cap(rep, "max_records_num", out.max_records_num);
        out.max_metrics_num = cap(rep, "max_metrics_num", out.max_metrics_num);
        out.record_timeout = secs(
            t.int_in(
                rep,
                "record_timeout",
                0..=MAX_RECORD_TIMEOUT_SECS,
                " seconds (0 = never)",
            ),
            out.record_timeout,
        );
    }
    out
}

fn web_server(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>) -> WebServer {
    let mut out = WebServer::default();
    if let Some(t) =
        node.and_then(|n| TableView::of(rep, n, "web_server".into(), &["bind_addr", "port"], true))
    {
        if let Some((addr, span)) = t.string(rep, "bind_addr") {
            if addr.parse::<IpAddr>().is_ok() {
                addr.clone_into(&mut out.bind_addr);
            } else {
                rep.report(
                    &span,
                    &t.path_of("bind_addr"),
                    DiagnosticKind::InvalidValue,
                    format!("expected an IPv4 or IPv6 address such as \"0.0.0.0\" or \"::1\", found {addr:?}"),
                );
            }
        }
        if let Some(port) = t.int_in(rep, "port", 1..=i64::from(u16::MAX), "") {
            out.port = port as u16;
        }
    }
    out
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

// One flat walk over the [kafka] keys; splitting it further would scatter them.
#[allow(clippy::too_many_lines)]
fn kafka(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>) -> Kafka {
    let mut out = Kafka::default();
    let Some(t) = node.and_then(|n| {
        TableView::of(
            rep,
            n,
            "kafka".into(),
            &[
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
            ],
            true,
        )
    }) else {
        return out;
    };
    if let Some((i, _)) = t.word(rep, "switch", &["on", "off"]) {
        out.switch = [OnOff::On, OnOff::Off][i];
    }
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
        ("flush_timeout", &mut 0, 0..=MAX_INTERVAL_SECS, " seconds"),
    ];
    for (key, slot, range, unit) in ranges {
        if let Some(v) = t.int_in(rep, key, range, unit) {
            *slot = v as u32;
            if key == "flush_timeout" {
                out.flush_timeout = Duration::from_secs(v.unsigned_abs());
            }
        }
    }
    if let Some((i, _)) = t.word(rep, "compression_codec", &Compression::WORDS) {
        out.compression_codec = Compression::ALL[i];
    }
    if let Some(p) = t.get("properties") {
        out.properties = kafka_properties(rep, p, t.path_of("properties"));
    }
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
    out
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

fn supervision(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>) -> Supervision {
    let mut out = Supervision::default();
    let allowed = [
        "restart_backoff",
        "restart_backoff_max",
        "max_quick_failures",
        "stable_after",
        "stop_grace",
        "start_check_interval",
        "start_check_timeout",
    ];
    let Some(t) = node.and_then(|n| TableView::of(rep, n, "supervision".into(), &allowed, true))
    else {
        return out;
    };
    let dur = |rep: &mut Reporter<'_>, key, min, default| {
        secs(
            t.int_in(rep, key, min..=MAX_INTERVAL_SECS, " seconds"),
            default,
        )
    };
    out.restart_backoff = dur(rep, "restart_backoff", 1, out.restart_backoff);
    out.restart_backoff_max = dur(rep, "restart_backoff_max", 1, out.restart_backoff_max);
    out.stable_after = dur(rep, "stable_after", 1, out.stable_after);
    out.stop_grace = dur(rep, "stop_grace", 0, out.stop_grace);
    out.start_check_interval = dur(rep, "start_check_interval", 1, out.start_check_interval);
    out.start_check_timeout = dur(rep, "start_check_timeout", 1, out.start_check_timeout);
    if let Some(n) = t.int_in(rep, "max_quick_failures", 1..=1000, "") {
        out.max_quick_failures = n as u32;
    }
    if out.restart_backoff_max < out.restart_backoff {
        let key = if t.get("restart_backoff_max").is_some() {
            "restart_backoff_max"
        } else {
            "restart_backoff"
        };
        let span = t.get(key).map_or_else(|| t.span.clone(), Spanned::span);
        rep.report(
            &span,
            &t.path_of(key),
            DiagnosticKind::InvalidValue,
            format!(
                "restart_backoff_max ({} s) must not be below restart_backoff ({} s)",
                out.restart_backoff_max.as_secs(),
                out.restart_backoff.as_secs()
            ),
        );
    }
    out
}

fn meta(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>, base: &Path) -> MetaSection {
    let mut out = MetaSection::default();
    let Some(t) = node.and_then(|n| TableView::of(rep, n, "meta".into(), &["dirs"], true)) else {
        return out;
    };
    let Some(dirs) = t.get("dirs") else {
        return out;
    };
    let Node::Array(items) = dirs.get_ref() else {
        rep.report(
            &dirs.span(),
            &t.path_of("dirs"),
            DiagnosticKind::WrongType,
            format!(
                "expected an array of strings, found {}",
                dirs.get_ref().describe()
            ),
        );
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("meta.dirs[{i}]");
        match item.get_ref() {
            Node::Str(s) if !s.is_empty() => out.dirs.push(base.join(s)),
            Node::Str(_) => rep.report(
                &item.span(),
                &path,
                DiagnosticKind::InvalidValue,
                "must not be empty",
            ),
            other => rep.report(
                &item.span(),
                &path,
                DiagnosticKind::WrongType,
                format!("expected a string, found {}", other.describe()),
            ),
        }
    }
    out
}

/// Probe names are shared by native and extension probes: the manager addresses probes by name.
#[derive(Default)]
struct NameRegistry {
    seen: HashMap<String, (String, usize)>,
}

impl NameRegistry {
    fn claim(&mut self, rep: &mut Reporter<'_>, name: &str, span: &Range<usize>, path: &str) {
        if let Some((first_path, first_line)) = self.seen.get(name) {
            rep.report(
                span,
                path,
                DiagnosticKind::Duplicate,
                format!("duplicate probe name {name:?} (already used by {first_path} at line {first_line})"),
            );
        } else {
            let line = rep.position(span.start).0;
            self.seen.insert(name.to_owned(), (path.to_owned(), line));
        }
    }
}

/// Probe names end up in logs, metrics labels and control commands: keep them plain.
fn check_probe_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; probe names allow only [a-zA-Z0-9._-]"
        ));
    }
    Ok(())
}

/// Reads `name` (required), reporting problems; `None` if unusable.
fn probe_name(rep: &mut Reporter<'_>, t: &TableView<'_>) -> Option<(String, Range<usize>)> {
    let Some((name, span)) = t.string(rep, "name") else {
        if t.get("name").is_none() {
            rep.report(
                &t.span,
                &t.path_of("name"),
                DiagnosticKind::Missing,
                "required",
            );
        }
        return None;
    };
    if let Err(why) = check_probe_name(name) {
        rep.report(&span, &t.path_of("name"), DiagnosticKind::InvalidValue, why);
        return None;
    }
    Some((name.to_owned(), span))
}

fn required_switch(rep: &mut Reporter<'_>, t: &TableView<'_>, words: &[&str]) -> Option<Switch> {
    const ALL: [Switch; 3] = [Switch::On, Switch::Off, Switch::Auto];
    if t.get("switch").is_none() {
        rep.report(
            &t.span,
            &t.path_of("switch"),
            DiagnosticKind::Missing,
            format!("required ({})", node::one_of(words)),
        );
        return None;
    }
    t.word(rep, "switch", words).map(|(i, _)| ALL[i])
}

fn native_probe(
    rep: &mut Reporter<'_>,
    node: &Spanned<Node>,
    path: String,
    names: &mut NameRegistry,
) -> Option<NativeProbe> {
    let t = TableView::of(
        rep,
        node,
        path,
        &["name", "switch", "interval", "params"],
        true,
    )?;
    let name = probe_name(rep, &t);
    if let Some((name, span)) = &name {
        if NATIVE_PROBES.contains(&name.as_str()) {
            names.claim(rep, name, span, &t.path_of("name"));
        } else {
            rep.report(
                span,
                &t.path_of("name"),
                DiagnosticKind::InvalidValue,
                format!(
                    "unknown native probe {name:?} (known: {}); external programs belong in [[extend_probes]]",
                    NATIVE_PROBES.join(", ")
                ),
            );
        }
    }
    // Native probes have no start_check, so "auto" would have nothing to decide with.
    let switch = required_switch(rep, &t, &["on", "off"]);
    let interval = secs(
        t.int_in(rep, "interval", 1..=MAX_INTERVAL_SECS, " seconds"),
        Duration::from_secs(5),
    );
    let params = match t.get("params") {
        None => toml::Table::new(),
        Some(p) => match p.get_ref() {
            Node::Table(_) => match p.get_ref().clone().into_toml() {
                toml::Value::Table(table) => table,
                _ => toml::Table::new(),
            },
            other => {
                rep.report(
                    &p.span(),
                    &t.path_of("params"),
                    DiagnosticKind::WrongType,
                    format!("expected a table, found {}", other.describe()),
                );
                toml::Table::new()
            }
        },
    };
    Some(NativeProbe {
        name: name?.0,
        switch: switch?,
        interval,
        params,
    })
}

fn extend_probe(
    rep: &mut Reporter<'_>,
    node: &Spanned<Node>,
    path: String,
    base: &Path,
    names: &mut NameRegistry,
) -> Option<ExtendProbe> {
    let allowed = [
        "name",
        "command",
        "param",
        "start_check",
        "check_type",
        "switch",
        "meta",
        "remote_param",
    ];
    let t = TableView::of(rep, node, path, &allowed, true)?;
    let name = probe_name(rep, &t);
    if let Some((name, span)) = &name {
        names.claim(rep, name, span, &t.path_of("name"));
    }
    let command = match t.string(rep, "command") {
        Some((c, span)) if c.trim().is_empty() => {
            rep.report(
                &span,
                &t.path_of("command"),
                DiagnosticKind::InvalidValue,
                "must not be empty",
            );
            None
        }
        Some((c, _)) => Some(c.to_owned()),
        None => {
            if t.get("command").is_none() {
                rep.report(
                    &t.span,
                    &t.path_of("command"),
                    DiagnosticKind::Missing,
                    "required",
                );
            }
            None
        }
    };
    let param = t
        .string(rep, "param")
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default();
    // An empty start_check is how gala-gopher.conf spelled "none".
    let start_check = t
        .string(rep, "start_check")
        .map(|(s, _)| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let check_type = t
        .word(rep, "check_type", &["count", "exit"])
        .map_or(CheckType::Count, |(i, _)| {
            [CheckType::Count, CheckType::Exit][i]
        });
    let switch = required_switch(rep, &t, &["on", "off", "auto"]);
    if switch == Some(Switch::Auto) && start_check.is_none() {
        rep.report(
            &t.span,
            &t.path_of("start_check"),
            DiagnosticKind::Missing,
            "required when switch = \"auto\"",
        );
    }
    let meta = match t.string(rep, "meta") {
        Some(("", span)) => {
            rep.report(
                &span,
                &t.path_of("meta"),
                DiagnosticKind::InvalidValue,
                "must not be empty (leave the key out instead)",
            );
            None
        }
        Some((m, _)) => Some(base.join(m)),
        None => None,
    };
    let remote_param = match t.get("remote_param") {
        None => false,
        Some(n) => match n.get_ref() {
            Node::Bool(b) => *b,
            other => {
                rep.report(
                    &n.span(),
                    &t.path_of("remote_param"),
                    DiagnosticKind::WrongType,
                    format!("expected true or false, found {}", other.describe()),
                );
                false
            }
        },
    };
    Some(ExtendProbe {
        name: name?.0,
        command: command?,
        param,
        start_check,
        check_type,
        switch: switch?,
        meta,
        remote_param,
    })
}
