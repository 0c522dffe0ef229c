//! What a bad file gets: one diagnostic per problem, each naming its line, key and kind,
//! all of them collected in file order.

use super::*;

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
