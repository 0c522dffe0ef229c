//! Tests for `probes.toml` and meta files: every error kind names its line and key path.
//!
//! The helpers and the whole-file tests are here; a section with many tests has its own file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::imdb::FieldType;

mod diagnostics;
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
