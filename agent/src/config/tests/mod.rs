//! Tests for `probes.toml` and meta files: every error kind names its line and key path.
//!
//! The helpers and the whole-file tests are here; a section with many tests has its own file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::imdb::FieldType;

mod kafka;
mod meta_files;
mod supervision;

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
    assert_eq!(native[..2], ["tcp", "endpoint"]);
    let systems = crate::probes::system::SYSTEM_PROBES.len();
    assert_eq!(
        native[2..systems + 2],
        *crate::probes::system::SYSTEM_PROBES
    );
    // The load-balancer link probes run while their built-in start checks find their target.
    assert_eq!(
        native[systems + 2..],
        ["haproxy_link", "lvs_link", "dnsmasq_link", "nginx_link"]
    );
    for p in &c.probes[systems + 2..systems + 5] {
        assert_eq!(p.switch, Switch::Auto, "{}", p.name);
    }
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
    // Supervision as by default, except that probes run as an unprivileged user.
    assert_eq!(
        c.supervision,
        Supervision {
            probe_user: "nobody".into(),
            ..Supervision::default()
        }
    );
    assert!(c.extend_probes.iter().all(|p| p.user.is_none()));
    assert_eq!(
        c.control.token_file.as_deref(),
        Some(Path::new(crate::config::DEFAULT_TOKEN_FILE))
    );
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
            port: 9100,
            web_config_file: None,
            metric_names: crate::config::MetricNames::Gopher,
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
            user: None,
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
            "unknown native probe \"udp\" (known: tcp, endpoint, system_meminfo, ",
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

#[test]
fn auto_is_accepted_for_native_probes_with_a_built_in_start_check() {
    let cfg = ok("[[probes]]\nname = \"haproxy_link\"\nswitch = \"auto\"\n");
    assert_eq!(cfg.probes[0].switch, Switch::Auto);
    let cfg = ok(
        "[[probes]]\nname = \"lvs_link\"\nswitch = \"auto\"\n[probes.params]\ntable = \"ipvs_link\"\n",
    );
    assert_eq!(cfg.probes[0].switch, Switch::Auto);
    // tcp has none: refused as before (see invalid_values).
    assert!(!errs("[[probes]]\nname = \"tcp\"\nswitch = \"auto\"\n").is_empty());
}
