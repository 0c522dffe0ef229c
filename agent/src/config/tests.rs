//! Tests for `probes.toml` and meta files: every error kind names its line and key path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::imdb::FieldType;

fn origin() -> &'static Path {
    Path::new("/etc/gopher/probes.toml")
}

fn ok(text: &str) -> Config {
    parse(text, origin()).unwrap_or_else(|e| panic!("expected valid config, got:\n{e}"))
}

fn errs(text: &str) -> Vec<Diagnostic> {
    match parse(text, origin()) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.diagnostics().to_vec(),
    }
}

/// Exactly one diagnostic, at `line`, for `key`, of `kind`; returns it for message checks.
fn one(text: &str, line: usize, key: &str, kind: DiagnosticKind) -> Diagnostic {
    let d = errs(text);
    assert_eq!(d.len(), 1, "expected one diagnostic, got {d:#?}");
    let d = d.into_iter().next().unwrap_or_else(|| unreachable!());
    assert_eq!((d.line, d.key.as_str(), d.kind), (line, key, kind), "{d}");
    assert!(
        d.to_string().starts_with(&format!(
            "/etc/gopher/probes.toml:{line}:{}: {key}: ",
            d.column
        )),
        "{d}"
    );
    d
}

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

// ---- probes.toml model ------------------------------------------------------------------

#[test]
fn empty_file_is_all_defaults() {
    let c = ok("");
    assert_eq!(c, Config::default());
    assert_eq!(c.web_server.port, 8888);
    assert_eq!(c.web_server.bind_addr, "0.0.0.0");
    assert_eq!(c.kafka.switch, OnOff::Off);
    assert_eq!(c.kafka.kafka_topic, "gala_gopher");
    assert_eq!(c.kafka.kafka_broker, "localhost:9092");
    assert_eq!(c.imdb.max_tables_num, 1024);
    assert_eq!(c.imdb.record_timeout, Duration::from_mins(1));
    assert_eq!(c.ingress.interval, Duration::from_secs(5));
    assert_eq!(c.global.log_level, LogLevel::Info);
    assert!(c.global.log_directory.is_none());
    assert!(c.probes.is_empty() && c.extend_probes.is_empty() && c.meta.dirs.is_empty());
}

#[test]
fn shipped_probes_toml_is_valid_and_safe() {
    let path = repo_file("probes.toml");
    let c = check(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.web_server.port, 8888);
    assert_eq!(
        c.kafka.switch,
        OnOff::Off,
        "Kafka must be off until a broker is configured"
    );
    assert_eq!(c.kafka.kafka_topic, "gala_gopher");
    let native: Vec<&str> = c.probes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(native[0], "tcp");
    assert_eq!(native[1..], *crate::probes::system::SYSTEM_PROBES);
    assert_eq!(c.probes[0].switch, Switch::On);
    assert_eq!(c.probes[0].interval, Duration::from_secs(5));
    let names: Vec<&str> = c.extend_probes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["nginx", "redis", "haproxy"]);
    // Shipped extension probes run only while their service does.
    for p in &c.extend_probes {
        assert_eq!(p.switch, Switch::Auto, "{}", p.name);
        assert_eq!(p.check_type, CheckType::Count, "{}", p.name);
        assert!(
            p.start_check
                .as_deref()
                .is_some_and(|s| s.starts_with("pgrep -x ")),
            "{}",
            p.name
        );
        assert!(p.meta.as_ref().is_some_and(|m| m.is_file()), "{}", p.name);
    }
    assert_eq!(c.supervision, Supervision::default());
    assert!(c.meta.dirs.is_empty());
    assert!(c.global.log_directory.is_none());
    assert_eq!(c.imdb, Imdb::default());
}

#[test]
#[allow(clippy::too_many_lines)]
fn full_file_round_trips_every_key() {
    let c = ok(r#"
        [global]
        log_directory = "logs"
        log_level = "debug"
        [ingress]
        interval = 2
        [egress]
        interval = 3
        time_range = 4
        [imdb]
        max_tables_num = 10
        max_records_num = 20
        max_metrics_num = 30
        record_timeout = 0
        [web_server]
        bind_addr = "::1"
        port = 9100
        [kafka]
        switch = "on"
        kafka_broker = "k1:9092, [::1]:9093,10.0.0.1:9094"
        kafka_topic = "gala.gopher-1"
        [meta]
        dirs = ["meta", "/abs/meta"]
        [[probes]]
        name = "tcp"
        switch = "off"
        interval = 10
        [probes.params]
        sample_period_ms = 5000
        ports = [80, 443]
        [[extend_probes]]
        name = "nginx"
        command = "/usr/bin/nginx_probe"
        param = "-t 5"
        start_check = "pgrep -x nginx"
        check_type = "exit"
        switch = "auto"
        meta = "meta/nginx.meta"
    "#);
    assert_eq!(
        c.global.log_directory,
        Some(PathBuf::from("/etc/gopher/logs"))
    );
    assert_eq!(c.global.log_level, LogLevel::Debug);
    assert_eq!(c.ingress.interval, Duration::from_secs(2));
    assert_eq!(
        c.egress,
        Egress {
            interval: Duration::from_secs(3),
            time_range: Duration::from_secs(4)
        }
    );
    assert_eq!(
        c.imdb,
        Imdb {
            max_tables_num: 10,
            max_records_num: 20,
            max_metrics_num: 30,
            record_timeout: Duration::ZERO
        }
    );
    assert_eq!(
        c.web_server,
        WebServer {
            bind_addr: "::1".into(),
            port: 9100
        }
    );
    assert_eq!(c.kafka.switch, OnOff::On);
    assert_eq!(c.kafka.kafka_topic, "gala.gopher-1");
    assert_eq!(
        c.meta.dirs,
        [
            PathBuf::from("/etc/gopher/meta"),
            PathBuf::from("/abs/meta")
        ]
    );
    let tcp = &c.probes[0];
    assert_eq!(
        (tcp.switch, tcp.interval),
        (Switch::Off, Duration::from_secs(10))
    );
    assert_eq!(
        tcp.params.get("sample_period_ms"),
        Some(&toml::Value::Integer(5000))
    );
    assert!(matches!(tcp.params.get("ports"), Some(toml::Value::Array(a)) if a.len() == 2));
    let nginx = &c.extend_probes[0];
    assert_eq!(
        *nginx,
        ExtendProbe {
            name: "nginx".into(),
            command: "/usr/bin/nginx_probe".into(),
            param: "-t 5".into(),
            start_check: Some("pgrep -x nginx".into()),
            check_type: CheckType::Exit,
            switch: Switch::Auto,
            meta: Some(PathBuf::from("/etc/gopher/meta/nginx.meta")),
            remote_param: false,
        }
    );
}

#[test]
fn relative_origin_keeps_relative_paths() {
    let c = parse("[meta]\ndirs = [\"m\"]\n", Path::new("probes.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.meta.dirs, [PathBuf::from("m")]);
}

#[test]
fn brief_example_messages() {
    let d = one(
        "\n[kafka]\nswitch = \"maybe\"\n",
        3,
        "kafka.switch",
        DiagnosticKind::InvalidValue,
    );
    assert_eq!(
        d.to_string(),
        r#"/etc/gopher/probes.toml:3:10: kafka.switch: expected "on" or "off", found "maybe""#
    );
    let d = one(
        "[[extend_probes]]\nname = \"a\"\ncommand = \"a\"\nswitch = \"off\"\n\n[[extend_probes]]\nname = \"b\"\ncommand = \"b\"\nswitch = \"auto\"\n",
        6,
        "extend_probes[1].start_check",
        DiagnosticKind::Missing,
    );
    assert_eq!(
        d.to_string(),
        r#"/etc/gopher/probes.toml:6:1: extend_probes[1].start_check: required when switch = "auto""#
    );
}

#[test]
fn syntax_error_has_position() {
    let d = errs("[kafka]\nswitch = \n");
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].line, d[0].kind), (2, DiagnosticKind::Syntax));
    assert!(d[0].key.is_empty());
    assert!(
        !d[0].message.contains('\n'),
        "one line per diagnostic: {:?}",
        d[0].message
    );
    let d = errs("[kafka]\nswitch = \"on\"\nswitch = \"off\"\n");
    assert_eq!((d[0].line, d[0].kind), (3, DiagnosticKind::Syntax));
}

#[test]
fn unknown_keys_everywhere() {
    let cases = [
        ("kafak = 1\n", 1, "kafak"),
        ("[kafka]\nswich = \"on\"\n", 2, "kafka.swich"),
        ("[global]\nlog_file = \"x\"\n", 2, "global.log_file"),
        ("[ingress]\nperiod = 1\n", 2, "ingress.period"),
        ("[egress]\nx = 1\n", 2, "egress.x"),
        ("[imdb]\nmax_table_num = 1\n", 2, "imdb.max_table_num"),
        ("[web_server]\nssl = true\n", 2, "web_server.ssl"),
        ("[meta]\ndir = []\n", 2, "meta.dir"),
        (
            "[[probes]]\nname = \"tcp\"\nswitch = \"on\"\nperiod = 5\n",
            4,
            "probes[0].period",
        ),
        (
            "[[extend_probes]]\nname = \"a\"\ncommand = \"a\"\nswitch = \"on\"\nargs = \"\"\n",
            5,
            "extend_probes[0].args",
        ),
    ];
    for (text, line, key) in cases {
        let d = one(text, line, key, DiagnosticKind::UnknownKey);
        assert!(d.message.contains("unknown key (expected one of:"), "{d}");
    }
}

#[test]
fn wrong_types() {
    let cases = [
        (
            "kafka = 1\n",
            1,
            "kafka",
            "expected a table, found integer 1",
        ),
        (
            "[ingress]\ninterval = \"5\"\n",
            2,
            "ingress.interval",
            "expected an integer, found string \"5\"",
        ),
        (
            "[web_server]\nport = 8888.0\n",
            2,
            "web_server.port",
            "expected an integer, found float",
        ),
        (
            "[web_server]\nbind_addr = 0\n",
            2,
            "web_server.bind_addr",
            "expected a string, found integer 0",
        ),
        (
            "[global]\nlog_directory = false\n",
            2,
            "global.log_directory",
            "expected a string, found boolean false",
        ),
        (
            "[meta]\ndirs = \"/x\"\n",
            2,
            "meta.dirs",
            "expected an array of strings",
        ),
        (
            "[meta]\ndirs = [\"/x\", 3]\n",
            2,
            "meta.dirs[1]",
            "expected a string, found integer 3",
        ),
        ("probes = 3\n", 1, "probes", "expected an array of tables"),
        ("probes = [1]\n", 1, "probes[0]", "expected a table"),
        (
            "[[probes]]\nname = \"tcp\"\nswitch = \"on\"\nparams = 1\n",
            4,
            "probes[0].params",
            "expected a table",
        ),
        (
            "[[probes]]\nname = 7\nswitch = \"on\"\n",
            2,
            "probes[0].name",
            "expected a string",
        ),
        (
            "[[probes]]\nname = \"tcp\"\nswitch = true\n",
            3,
            "probes[0].switch",
            "found boolean true",
        ),
    ];
    for (text, line, key, needle) in cases {
        let d = errs(text);
        assert_eq!(d.len(), 1, "{text:?}: {d:#?}");
        assert_eq!((d[0].line, d[0].key.as_str()), (line, key), "{}", d[0]);
        assert!(d[0].message.contains(needle), "{text:?}: {}", d[0]);
    }
}

#[test]
fn out_of_range_values() {
    let cases = [
        ("[web_server]\nport = 0\n", 2, "web_server.port"),
        ("[web_server]\nport = 65536\n", 2, "web_server.port"),
        ("[ingress]\ninterval = 0\n", 2, "ingress.interval"),
        ("[egress]\ninterval = 3601\n", 2, "egress.interval"),
        ("[egress]\ntime_range = -1\n", 2, "egress.time_range"),
        ("[imdb]\nrecord_timeout = 86401\n", 2, "imdb.record_timeout"),
        ("[imdb]\nmax_records_num = 0\n", 2, "imdb.max_records_num"),
        (
            "[imdb]\nmax_tables_num = 99999999999\n",
            2,
            "imdb.max_tables_num",
        ),
        (
            "[[probes]]\nname = \"tcp\"\nswitch = \"on\"\ninterval = 0\n",
            4,
            "probes[0].interval",
        ),
    ];
    for (text, line, key) in cases {
        let d = one(text, line, key, DiagnosticKind::OutOfRange);
        assert!(d.message.contains("out of range"), "{d}");
    }
    let d = one(
        "[web_server]\nport = 0\n",
        2,
        "web_server.port",
        DiagnosticKind::OutOfRange,
    );
    assert_eq!(d.message, "0 is out of range: expected 1..=65535");
    assert_eq!(d.column, 8);
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "a flat table of cases reads better than split tests"
)]
fn invalid_values() {
    let cases = [
        (
            "[global]\nlog_level = \"verbose\"\n",
            2,
            "global.log_level",
            "\"error\", \"warn\", \"info\", \"debug\" or \"trace\"",
        ),
        (
            "[web_server]\nbind_addr = \"localhost\"\n",
            2,
            "web_server.bind_addr",
            "IPv4 or IPv6",
        ),
        (
            "[kafka]\nkafka_topic = \"\"\n",
            2,
            "kafka.kafka_topic",
            "must not be empty",
        ),
        (
            "[kafka]\nkafka_topic = \"gala gopher\"\n",
            2,
            "kafka.kafka_topic",
            "[a-zA-Z0-9._-]",
        ),
        (
            "[kafka]\nkafka_topic = \"..\"\n",
            2,
            "kafka.kafka_topic",
            "not a legal",
        ),
        (
            "[kafka]\nswitch = \"on\"\nkafka_broker = \"\"\n",
            3,
            "kafka.kafka_broker",
            "at least one broker",
        ),
        (
            "[kafka]\nswitch = \"on\"\nkafka_broker = \"k1:9092,k2\"\n",
            3,
            "kafka.kafka_broker",
            "\"k2\" is not \"host:port\"",
        ),
        (
            "[kafka]\nswitch = \"on\"\nkafka_broker = \"k1:0\"\n",
            3,
            "kafka.kafka_broker",
            "host:port",
        ),
        (
            "[kafka]\nswitch = \"on\"\nkafka_broker = \"::1:9092\"\n",
            3,
            "kafka.kafka_broker",
            "host:port",
        ),
        (
            "[meta]\ndirs = [\"\"]\n",
            2,
            "meta.dirs[0]",
            "must not be empty",
        ),
        (
            "[[probes]]\nname = \"udp\"\nswitch = \"on\"\n",
            2,
            "probes[0].name",
            "unknown native probe \"udp\" (known: tcp, system_meminfo, ",
        ),
        (
            "[[probes]]\nname = \"tcp\"\nswitch = \"auto\"\n",
            3,
            "probes[0].switch",
            "expected \"on\" or \"off\", found \"auto\"",
        ),
        (
            "[[extend_probes]]\nname = \"\"\ncommand = \"x\"\nswitch = \"on\"\n",
            2,
            "extend_probes[0].name",
            "must not be empty",
        ),
        (
            "[[extend_probes]]\nname = \"a b\"\ncommand = \"x\"\nswitch = \"on\"\n",
            2,
            "extend_probes[0].name",
            "[a-zA-Z0-9._-]",
        ),
        (
            "[[extend_probes]]\nname = \"a\"\ncommand = \"  \"\nswitch = \"on\"\n",
            3,
            "extend_probes[0].command",
            "must not be empty",
        ),
        (
            "[[extend_probes]]\nname = \"a\"\ncommand = \"x\"\nswitch = \"sometimes\"\n",
            4,
            "extend_probes[0].switch",
            "\"on\", \"off\" or \"auto\"",
        ),
        (
            "[[extend_probes]]\nname = \"a\"\ncommand = \"x\"\nswitch = \"on\"\ncheck_type = \"pid\"\n",
            5,
            "extend_probes[0].check_type",
            "\"count\" or \"exit\"",
        ),
        (
            "[[extend_probes]]\nname = \"a\"\ncommand = \"x\"\nswitch = \"on\"\nmeta = \"\"\n",
            5,
            "extend_probes[0].meta",
            "must not be empty",
        ),
    ];
    for (text, line, key, needle) in cases {
        let d = one(text, line, key, DiagnosticKind::InvalidValue);
        assert!(d.message.contains(needle), "{text:?}: {d}");
    }
}

#[test]
fn kafka_broker_is_only_checked_when_on() {
    let c = ok("[kafka]\nswitch = \"off\"\nkafka_broker = \"\"\n");
    assert_eq!(c.kafka.kafka_broker, "");
    // Default broker is valid, so switching on without naming one is accepted.
    assert!(ok("[kafka]\nswitch = \"on\"\n").kafka.switch.is_on());
}

#[test]
fn missing_required_keys_point_at_the_table_header() {
    let cases = [
        ("\n[[probes]]\nswitch = \"on\"\n", 2, "probes[0].name"),
        ("\n[[probes]]\nname = \"tcp\"\n", 2, "probes[0].switch"),
        (
            "\n\n[[extend_probes]]\nname = \"a\"\nswitch = \"on\"\n",
            3,
            "extend_probes[0].command",
        ),
        (
            "\n\n[[extend_probes]]\nname = \"a\"\ncommand = \"a\"\n",
            3,
            "extend_probes[0].switch",
        ),
        (
            "[[extend_probes]]\nname = \"a\"\ncommand = \"a\"\nswitch = \"auto\"\nstart_check = \" \"\n",
            1,
            "extend_probes[0].start_check",
        ),
    ];
    for (text, line, key) in cases {
        let d = one(text, line, key, DiagnosticKind::Missing);
        assert_eq!(d.column, 1, "{d}");
    }
}

#[test]
fn duplicate_probe_names() {
    let text = "[[probes]]\nname = \"tcp\"\nswitch = \"on\"\n\n[[probes]]\nname = \"tcp\"\nswitch = \"off\"\n";
    let d = one(text, 6, "probes[1].name", DiagnosticKind::Duplicate);
    assert!(
        d.message
            .contains("already used by probes[0].name at line 2"),
        "{d}"
    );

    let text = "[[extend_probes]]\nname = \"x\"\ncommand = \"a\"\nswitch = \"on\"\n[[extend_probes]]\nname = \"x\"\ncommand = \"b\"\nswitch = \"off\"\n";
    one(text, 6, "extend_probes[1].name", DiagnosticKind::Duplicate);

    // Native and extension probes share one name space.
    let text = "[[probes]]\nname = \"tcp\"\nswitch = \"on\"\n[[extend_probes]]\nname = \"tcp\"\ncommand = \"b\"\nswitch = \"off\"\n";
    one(text, 5, "extend_probes[0].name", DiagnosticKind::Duplicate);
}

#[test]
fn all_errors_are_collected_in_file_order() {
    let text = r#"
[global]
log_level = "loud"

[web_server]
port = 0

[kafka]
switch = "maybe"
kafka_topic = "a/b"

[[extend_probes]]
name = "x"
command = ""
switch = "auto"
"#;
    let err = parse(text, origin())
        .err()
        .unwrap_or_else(|| panic!("should fail"));
    let got: Vec<(usize, &str)> = err
        .diagnostics()
        .iter()
        .map(|d| (d.line, d.key.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (3, "global.log_level"),
            (6, "web_server.port"),
            (9, "kafka.switch"),
            (10, "kafka.kafka_topic"),
            (14, "extend_probes[0].command"),
            (12, "extend_probes[0].start_check"),
        ]
    );
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 6, "{shown}");
    assert!(
        shown
            .lines()
            .all(|l| l.starts_with("/etc/gopher/probes.toml:")),
        "{shown}"
    );
}

#[test]
fn load_reports_unreadable_file() {
    let err = load(Path::new("/nonexistent/probes.toml"))
        .err()
        .unwrap_or_else(|| panic!("should fail"));
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().starts_with("/nonexistent/probes.toml: "),
        "{err}"
    );
}

#[test]
fn load_resolves_against_the_files_directory() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("probes.toml");
    std::fs::write(&path, "[meta]\ndirs = [\"meta.d\"]\n").unwrap_or_else(|e| panic!("{e}"));
    let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.meta.dirs, [dir.path().join("meta.d")]);
}

#[test]
fn log_level_converts_to_tracing() {
    assert_eq!(tracing::Level::from(LogLevel::Warn), tracing::Level::WARN);
    assert_eq!(LogLevel::Trace.to_string(), "trace");
    assert_eq!(Switch::Auto.to_string(), "auto");
    assert_eq!(CheckType::Exit.to_string(), "exit");
    assert_eq!(OnOff::On.to_string(), "on");
}

#[test]
fn native_probe_list_is_extensible_in_one_place() {
    assert!(NATIVE_PROBES.contains(&"tcp"));
}

// ---- meta files ---------------------------------------------------------------------------

/// `tcp_link.meta` as gala-gopher shipped it in 2021-10: 15 fields, all "Unknown".
const TCP_LINK_2021: &str = r#"version = "1.0.0"

measurements:
(
    {
        name: "tcp_link",
        fields:
        (
            {
                description: "id of process",
                type: "Unknown",
                name: "pid",
            },
            { description: "name of process", type: "Unknown", name: "process_name", },
            { description: "0 server, 1 client", type: "Unknown", name: "role", },
            { description: "client ip", type: "Unknown", name: "client_ip", },
            { description: "server ip", type: "Unknown", name: "server_ip", },
            { description: "server port", type: "Unknown", name: "server_port", },
            { description: "protocol", type: "Unknown", name: "protocol", },
            { description: "link count", type: "Unknown", name: "link_count", },
            { description: "rx bytes", type: "Unknown", name: "rx_bytes", },
            { description: "tx bytes", type: "Unknown", name: "tx_bytes", },
            { description: "packets in", type: "Unknown", name: "packets_in", },
            { description: "packets out", type: "Unknown", name: "packets_out", },
            { description: "retransmitted packets", type: "Unknown", name: "retran_packets", },
            { description: "lost packets", type: "Unknown", name: "lost_packets", },
            { description: "smoothed rtt (us)", type: "Unknown", name: "rtt", }
        )
    }
)
"#;

/// 2021-11 typing plus the 2022-09 `table_name`/`entity_name` naming.
const TCP_2022: &str = r#"version = "1.0.0";
# tcp_link was split into per-topic tables in 2022-09.
measurements:
(
    {
        table_name: "tcp_tx_rx",
        entity_name: "tcp_link",
        fields:
        (
            { description: "id of process", type: "key", name: "tgid" },
            { description: "role", type: "key", name: "role" },
            { description: "client ip", type: "key", name: "client_ip" },
            { description: "server ip", type: "key", name: "server_ip" },
            { description: "server port", type: "key", name: "server_port" },
            { description: "protocol", type: "label", name: "protocol" },
            { description: "rx bytes", type: "gauge", name: "rx_bytes" },
            { description: "tx bytes", type: "gauge", name: "tx_bytes" },
            { description: "segs in", type: "counter", name: "segs_in" },
            { description: "an unknown future type", type: "summary", name: "odd" }
        )
    },
    {
        table_name: "tcp_rtt", entity_name: "tcp_link",
        fields: ( { description: "key", type: "key", name: "tgid" }, { description: "srtt", type: "histogram", name: "srtt" } )
    },
    {
        name: "legacy_only_name",
        fields: ( { name: "x" } )
    }
)
"#;

#[test]
fn libconfig_2021_tcp_link() {
    let tables = parse_meta_libconfig(TCP_LINK_2021, Path::new("tcp_link.meta"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tables.len(), 1);
    let t = &tables[0];
    assert_eq!(t.name, "tcp_link");
    assert_eq!(t.fields.len(), 15);
    assert_eq!(t.fields[0].name, "pid");
    assert_eq!(t.fields[0].description, "id of process");
    assert_eq!(t.fields[14].name, "rtt");
    assert!(t.fields.iter().all(|f| f.ty == FieldType::Unknown));
    assert_eq!(t.metric_count(), 0);
}

#[test]
fn libconfig_2022_table_name_and_types() {
    use FieldType::{Counter, Gauge, Key, Label, Unknown};
    let tables =
        parse_meta_libconfig(TCP_2022, Path::new("tcp.meta")).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["tcp_tx_rx", "tcp_rtt", "legacy_only_name"]);
    let types: Vec<FieldType> = tables[0].fields.iter().map(|f| f.ty).collect();
    assert_eq!(
        types,
        [
            Key, Key, Key, Key, Key, Label, Gauge, Gauge, Counter, Unknown
        ]
    );
    assert_eq!(tables[1].fields[1].ty, FieldType::Histogram);
    assert_eq!(
        tables[2].fields[0].ty,
        FieldType::Unknown,
        "missing type is Unknown, as in gala-gopher"
    );
}

#[test]
fn libconfig_meta_ignores_unused_keys_but_checks_shape() {
    let ok = "version = \"2\"\nfuture = 1\nmeasurements: ({ name: \"t\", extra: 1, fields: ({ name: \"f\", type: \"gauge\", unit: \"s\" }) })\n";
    let tables = parse_meta_libconfig(ok, Path::new("x.meta")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tables[0].fields[0].ty, FieldType::Gauge);

    let bad = |text: &str| {
        parse_meta_libconfig(text, Path::new("x.meta"))
            .err()
            .unwrap_or_else(|| panic!("should fail: {text}"))
            .diagnostics()
            .to_vec()
    };
    let d = bad("version = \"1\"\n");
    assert_eq!(
        (d[0].key.as_str(), d[0].kind),
        ("measurements", DiagnosticKind::Missing)
    );
    let d = bad("measurements: (\n{ fields: ({ name: \"f\" }) }\n)\n");
    assert_eq!((d[0].line, d[0].key.as_str()), (2, "measurements[0].name"));
    let d = bad("measurements: (\n{ name: \"t\" }\n)\n");
    assert_eq!(
        (d[0].line, d[0].key.as_str()),
        (2, "measurements[0].fields")
    );
    let d = bad("measurements: (\n{ name: \"t\",\n  fields: () }\n)\n");
    assert_eq!(
        (d[0].line, d[0].key.as_str()),
        (3, "measurements[0].fields")
    );
    let d = bad(
        "measurements: (\n{ name: \"t\",\n  fields: ( { name: \"a\" },\n { name: \"a\" } ) }\n)\n",
    );
    assert_eq!(
        (d[0].line, d[0].key.as_str(), d[0].kind),
        (
            4,
            "measurements[0].fields[1].name",
            DiagnosticKind::Duplicate
        )
    );
    let d = bad("measurements: (\n{ name: \"t\",\n  fields: ( { name: \"a-b\" } ) }\n)\n");
    assert_eq!(
        (d[0].line, d[0].key.as_str()),
        (3, "measurements[0].fields[0].name")
    );
    let d = bad("measurements: (\n{ name: \"t\",\n  fields: ( { name: \"a\", type: 3 } ) }\n)\n");
    assert_eq!(
        (d[0].line, d[0].key.as_str(), d[0].kind),
        (
            3,
            "measurements[0].fields[0].type",
            DiagnosticKind::WrongType
        )
    );
    let d = bad(
        "measurements: (\n{ name: \"t\", fields: ({ name: \"a\" }) },\n{ name: \"t\", fields: ({ name: \"a\" }) }\n)\n",
    );
    assert_eq!((d[0].line, d[0].kind), (3, DiagnosticKind::Duplicate));
}

#[test]
fn libconfig_meta_syntax_errors_name_file_and_line() {
    // Unterminated string on line 6.
    let text = TCP_LINK_2021.replace("name: \"tcp_link\",", "name: \"tcp_link,");
    let err = parse_meta_libconfig(&text, Path::new("/opt/meta/tcp_link.meta"))
        .err()
        .unwrap_or_else(|| panic!("fail"));
    let d = &err.diagnostics()[0];
    assert_eq!((d.line, d.column, d.kind), (6, 15, DiagnosticKind::Syntax));
    assert!(
        err.to_string()
            .starts_with("/opt/meta/tcp_link.meta:6:15: unterminated string"),
        "{err}"
    );

    // The fields list loses its ')' : the "}" on line 28 is where a ',' or ')' was expected.
    let text = TCP_LINK_2021.replacen("        )\n    }", "    }", 1);
    let err = parse_meta_libconfig(&text, Path::new("tcp_link.meta"))
        .err()
        .unwrap_or_else(|| panic!("fail"));
    let d = &err.diagnostics()[0];
    assert_eq!(d.line, 28, "{d}");
    assert!(d.message.contains("list opened at line 8"), "{d}");
}

const REDIS_TOML: &str = r#"
[[tables]]
name = "redis_server"
description = "redis server statistics"
fields = [
    { name = "ip", type = "key", description = "listen address" },
    { name = "port", type = "key" },
    { name = "used_memory", type = "gauge", description = "bytes" },
    { name = "total_commands_processed", type = "counter", description = "commands" },
]

[[tables]]
name = "redis_client"
fields = [{ name = "addr", type = "label" }, { name = "raw", type = "unknown" }]
"#;

#[test]
fn toml_meta() {
    let tables =
        parse_meta_toml(REDIS_TOML, Path::new("redis.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tables.len(), 2);
    assert_eq!(tables[0].name, "redis_server");
    assert_eq!(tables[0].description, "redis server statistics");
    assert_eq!(tables[0].fields[1].description, "");
    assert_eq!(tables[0].metric_count(), 2);
    assert_eq!(tables[1].fields[1].ty, FieldType::Unknown);
}

#[test]
fn toml_meta_is_strict() {
    let bad = |text: &str| {
        parse_meta_toml(text, Path::new("m.toml"))
            .err()
            .unwrap_or_else(|| panic!("should fail: {text}"))
            .diagnostics()
            .to_vec()
    };
    let d = bad("[[tables]]\nname = \"t\"\nfields = [\n  { name = \"a\", type = \"gague\" },\n]\n");
    assert_eq!(
        (d[0].line, d[0].key.as_str(), d[0].kind),
        (4, "tables[0].fields[0].type", DiagnosticKind::InvalidValue)
    );
    let d = bad("[[tables]]\nname = \"t\"\nfields = [\n  { name = \"a\" },\n]\n");
    assert_eq!(
        (d[0].line, d[0].key.as_str(), d[0].kind),
        (4, "tables[0].fields[0].type", DiagnosticKind::Missing)
    );
    let d = bad(
        "[[tables]]\nname = \"t\"\nentity = \"x\"\nfields = [{ name = \"a\", type = \"key\" }]\n",
    );
    assert_eq!(
        (d[0].line, d[0].key.as_str(), d[0].kind),
        (3, "tables[0].entity", DiagnosticKind::UnknownKey)
    );
    let d = bad("table = []\n");
    assert!(
        d.iter()
            .any(|d| d.key == "table" && d.kind == DiagnosticKind::UnknownKey)
    );
    assert!(
        d.iter()
            .any(|d| d.key == "tables" && d.kind == DiagnosticKind::Missing)
    );
    let d = bad(
        "[[tables]]\nname = \"t\"\nfields = [{ name = \"a\", type = \"key\", unit = \"s\" }]\n",
    );
    assert_eq!(
        (d[0].line, d[0].key.as_str()),
        (3, "tables[0].fields[0].unit")
    );
    let d = bad("[[tables]]\nname = \"t\"\nfields = [\n");
    assert_eq!(d[0].kind, DiagnosticKind::Syntax);
}

#[test]
fn meta_files_and_dirs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"));
    };
    write("b_tcp.meta", TCP_LINK_2021);
    write("a_redis.toml", REDIS_TOML);
    write("README", "not a meta file");
    std::fs::create_dir(dir.path().join("sub.meta")).unwrap_or_else(|e| panic!("{e}"));

    let tables = load_meta_file(&dir.path().join("a_redis.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tables.len(), 2);
    let tables = load_meta_dirs(&[dir.path().to_path_buf()]).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["redis_server", "redis_client", "tcp_link"],
        "files load in name order"
    );
    assert!(
        load_meta_dirs(&[])
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );

    // The same table in two files is an error naming both files.
    let dir2 = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir2.path().join("again.meta"), TCP_LINK_2021).unwrap_or_else(|e| panic!("{e}"));
    let err = load_meta_dirs(&[dir.path().to_path_buf(), dir2.path().to_path_buf()])
        .err()
        .unwrap_or_else(|| panic!("dup"));
    let d = &err.diagnostics()[0];
    assert_eq!(
        (d.kind, d.key.as_str(), d.line),
        (DiagnosticKind::Duplicate, "tcp_link", 5)
    );
    assert!(d.file.ends_with("again.meta"));
    assert!(d.message.contains("b_tcp.meta:5"), "{d}");

    // Errors in several files are all reported, each naming its file.
    write("c_bad.meta", "measurements: (\n");
    write("d_bad.toml", "[[tables]]\nname = 1\n");
    let err = load_meta_dirs(&[dir.path().to_path_buf()])
        .err()
        .unwrap_or_else(|| panic!("bad"));
    let files: Vec<String> = err
        .diagnostics()
        .iter()
        .map(|d| {
            d.file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    assert!(
        files.contains(&"c_bad.meta".to_owned()) && files.contains(&"d_bad.toml".to_owned()),
        "{err}"
    );

    let err = load_meta_dirs(&[dir.path().join("missing")])
        .err()
        .unwrap_or_else(|| panic!("missing"));
    assert!(
        matches!(err, ConfigError::Read { .. }) && err.to_string().contains("missing"),
        "{err}"
    );
    let err = load_meta_file(&dir.path().join("nope.meta"))
        .err()
        .unwrap_or_else(|| panic!("missing"));
    assert!(matches!(err, ConfigError::Read { .. }));
}

proptest::proptest! {
    /// Neither reader may panic, whatever the input.
    #[test]
    fn readers_never_panic(text in "\\PC{0,200}") {
        let _ = parse(&text, origin());
        let _ = parse_meta_libconfig(&text, Path::new("p.meta"));
        let _ = parse_meta_toml(&text, Path::new("p.toml"));
    }

    /// Structured-ish libconfig noise, to reach deeper parser states than random text.
    #[test]
    fn libconfig_never_panics_on_tokens(parts in proptest::collection::vec(
        proptest::sample::select(vec!["a", "=", ":", ";", ",", "(", ")", "{", "}", "[", "]", "\"s\"", "\"", "1", "-0x1f", "2.5", "true", "/*", "*/", "//", "#", "\n", "\\", "\"\\x4", "@"]), 0..60)) {
        let text = parts.join(" ");
        let _ = parse_meta_libconfig(&text, Path::new("p.meta"));
    }
}

// ---- [supervision] ----------------------------------------------------------------------

#[test]
fn supervision_defaults_and_values() {
    let d = ok("").supervision;
    assert_eq!(d, Supervision::default());
    assert_eq!(d.max_quick_failures, 5);
    assert_eq!(d.restart_backoff, Duration::from_secs(1));
    assert_eq!(d.restart_backoff_max, Duration::from_mins(1));
    assert_eq!(d.start_check_interval, Duration::from_secs(10));
    let s = ok(
        "[supervision]\nrestart_backoff = 2\nrestart_backoff_max = 8\n\
         max_quick_failures = 3\nstable_after = 30\nstop_grace = 0\n\
         start_check_interval = 1\nstart_check_timeout = 2\n",
    )
    .supervision;
    assert_eq!(
        s,
        Supervision {
            restart_backoff: Duration::from_secs(2),
            restart_backoff_max: Duration::from_secs(8),
            max_quick_failures: 3,
            stable_after: Duration::from_secs(30),
            stop_grace: Duration::ZERO,
            start_check_interval: Duration::from_secs(1),
            start_check_timeout: Duration::from_secs(2),
        }
    );
}

#[test]
fn supervision_errors_are_positioned() {
    one(
        "[supervision]\nmax_quick_failures = 0\n",
        2,
        "supervision.max_quick_failures",
        DiagnosticKind::OutOfRange,
    );
    one(
        "[supervision]\nstart_check_interval = 0\n",
        2,
        "supervision.start_check_interval",
        DiagnosticKind::OutOfRange,
    );
    one(
        "[supervision]\nrestart_backoff = 1\nrestart_backoff_max = \"60\"\n",
        3,
        "supervision.restart_backoff_max",
        DiagnosticKind::WrongType,
    );
    let d = one(
        "[supervision]\nrestart_backoff = 10\nrestart_backoff_max = 5\n",
        3,
        "supervision.restart_backoff_max",
        DiagnosticKind::InvalidValue,
    );
    assert!(d.message.contains("must not be below"), "{d}");
    one(
        "[supervision]\nrestart_backoff = 120\n",
        2,
        "supervision.restart_backoff",
        DiagnosticKind::InvalidValue,
    );
    one(
        "[supervision]\nbackoff = 1\n",
        2,
        "supervision.backoff",
        DiagnosticKind::UnknownKey,
    );
}

// ---- kafka producer settings ------------------------------------------------------------

#[test]
fn kafka_producer_defaults() {
    let k = ok("").kafka;
    assert_eq!(k.metadata_topic, "gala_gopher_metadata");
    assert_eq!(k.batch_num_messages, 10_000);
    assert_eq!(k.queue_buffering_max_messages, 100_000);
    assert_eq!(k.queue_buffering_max_kbytes, 1_048_576);
    assert_eq!(k.queue_buffering_max_ms, 5);
    assert_eq!(k.compression_codec, Compression::None);
    assert_eq!(k.message_max_bytes, 1_000_000);
    assert_eq!(k.message_timeout_ms, 300_000);
    assert_eq!(k.flush_timeout, Duration::from_secs(10));
    assert!(k.properties.is_empty());
}

#[test]
fn kafka_producer_settings_are_read() {
    let k = ok(r#"
[kafka]
switch = "on"
kafka_broker = "k1:9092,k2:9093"
metadata_topic = "meta"
batch_num_messages = 500
queue_buffering_max_messages = 2000
queue_buffering_max_kbytes = 4096
queue_buffering_max_ms = 50
compression_codec = "lz4"
message_max_bytes = 2000000
message_timeout_ms = 60000
flush_timeout = 3

[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "PLAIN"
"ssl.ca.location" = "/etc/ssl/ca.pem"
"#)
    .kafka;
    assert_eq!(k.metadata_topic, "meta");
    assert_eq!(k.batch_num_messages, 500);
    assert_eq!(k.queue_buffering_max_messages, 2000);
    assert_eq!(k.queue_buffering_max_kbytes, 4096);
    assert_eq!(k.queue_buffering_max_ms, 50);
    assert_eq!(k.compression_codec, Compression::Lz4);
    assert_eq!(k.compression_codec.as_str(), "lz4");
    assert_eq!(k.message_max_bytes, 2_000_000);
    assert_eq!(k.message_timeout_ms, 60_000);
    assert_eq!(k.flush_timeout, Duration::from_secs(3));
    assert_eq!(
        k.properties,
        vec![
            ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
            ("sasl.mechanisms".to_owned(), "PLAIN".to_owned()),
            ("ssl.ca.location".to_owned(), "/etc/ssl/ca.pem".to_owned()),
        ]
    );
}

#[test]
fn kafka_producer_settings_are_validated() {
    let cases: [(&str, usize, &str, DiagnosticKind, &str); 9] = [
        (
            "[kafka]\ncompression_codec = \"brotli\"\n",
            2,
            "kafka.compression_codec",
            DiagnosticKind::InvalidValue,
            "\"none\", \"gzip\", \"snappy\", \"lz4\" or \"zstd\"",
        ),
        (
            "[kafka]\nqueue_buffering_max_messages = 0\n",
            2,
            "kafka.queue_buffering_max_messages",
            DiagnosticKind::OutOfRange,
            "",
        ),
        (
            "[kafka]\nbatch_num_messages = \"10\"\n",
            2,
            "kafka.batch_num_messages",
            DiagnosticKind::WrongType,
            "",
        ),
        (
            "[kafka]\nmessage_max_bytes = 10\n",
            2,
            "kafka.message_max_bytes",
            DiagnosticKind::OutOfRange,
            "",
        ),
        (
            "[kafka]\nmetadata_topic = \"a/b\"\n",
            2,
            "kafka.metadata_topic",
            DiagnosticKind::InvalidValue,
            "[a-zA-Z0-9._-]",
        ),
        (
            "[kafka]\nkafka_topic = \"t\"\nmetadata_topic = \"t\"\n",
            3,
            "kafka.metadata_topic",
            DiagnosticKind::InvalidValue,
            "must differ",
        ),
        (
            "[kafka]\n[kafka.properties]\n\"sasl.username\" = 5\n",
            3,
            "kafka.properties.sasl.username",
            DiagnosticKind::WrongType,
            "expected a string",
        ),
        (
            "[kafka]\nproperties = { \"message.timeout.ms\" = \"1\" }\n",
            2,
            "kafka.properties.message.timeout.ms",
            DiagnosticKind::InvalidValue,
            "set by the agent",
        ),
        (
            "[kafka]\nflush_timeout = -1\n",
            2,
            "kafka.flush_timeout",
            DiagnosticKind::OutOfRange,
            "",
        ),
    ];
    for (text, line, key, kind, msg) in cases {
        let d = one(text, line, key, kind);
        assert!(d.to_string().contains(msg), "{d}");
    }
    // Unknown keys in [kafka] are still refused.
    one(
        "[kafka]\nlinger = 5\n",
        2,
        "kafka.linger",
        DiagnosticKind::UnknownKey,
    );
}

/// Tables TOML makes implicitly (`[kafka.properties]` with no `[kafka]` header, dotted keys)
/// have no place of their own in the reader's answer; they are read like any other table, and
/// a problem inside one still names file:line and the key path.
#[test]
fn implicit_tables_are_read_and_placed() {
    let k = ok("[kafka.properties]\n\"client.id\" = \"node-1\"\n").kafka;
    assert_eq!(k.switch, OnOff::Off);
    assert_eq!(
        k.properties,
        vec![("client.id".to_owned(), "node-1".to_owned())]
    );
    // Unquoted dotted names are librdkafka's names all the same, with or without [kafka].
    for text in [
        "[kafka.properties]\nsecurity.protocol = \"sasl_plaintext\"\nsasl.mechanism = \"PLAIN\"\n",
        "[kafka]\nswitch = \"on\"\n[kafka.properties]\nsecurity.protocol = \"sasl_plaintext\"\nsasl.mechanism = \"PLAIN\"\n",
        "kafka.properties.security.protocol = \"sasl_plaintext\"\nkafka.properties.\"sasl.mechanism\" = \"PLAIN\"\n",
    ] {
        assert_eq!(
            ok(text).kafka.properties,
            vec![
                ("security.protocol".to_owned(), "sasl_plaintext".to_owned()),
                ("sasl.mechanism".to_owned(), "PLAIN".to_owned()),
            ],
            "{text}"
        );
    }
    let cases: [(&str, usize, &str, DiagnosticKind, &str); 5] = [
        (
            "[kafka.properties]\n\"sasl.username\" = 5\n",
            2,
            "kafka.properties.sasl.username",
            DiagnosticKind::WrongType,
            "expected a string",
        ),
        (
            "\n[kafka.properties]\nmessage.timeout.ms = \"1\"\n",
            3,
            "kafka.properties.message.timeout.ms",
            DiagnosticKind::InvalidValue,
            "set by the agent",
        ),
        (
            "[kafak.properties]\n\"a\" = \"b\"\n",
            1,
            "kafak",
            DiagnosticKind::UnknownKey,
            "unknown key",
        ),
        (
            "[kafka.propertes]\n\"a\" = \"b\"\n",
            1,
            "kafka.propertes",
            DiagnosticKind::UnknownKey,
            "unknown key",
        ),
        (
            "[[extend_probes]]\nname = \"a\"\ncommand = \"a\"\nswitch = \"on\"\nstart.check = 1\n",
            5,
            "extend_probes[0].start",
            DiagnosticKind::UnknownKey,
            "unknown key",
        ),
    ];
    for (text, line, key, kind, msg) in cases {
        let d = one(text, line, key, kind);
        assert!(d.to_string().contains(msg), "{d}");
        assert!(!d.message.contains("borrowed"), "{d}");
    }
}
