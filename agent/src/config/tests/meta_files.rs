//! Meta files: gala-gopher's libconfig `.meta` and our TOML form, one file or whole directories.

use super::*;

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

/// Found by the `meta_toml` / `libconfig` fuzz targets: a key or label field named `__…` was
/// accepted by the meta readers and then refused by the store (Prometheus reserves such label
/// names), so the agent failed at start without naming the file and line.
#[test]
fn reserved_label_names_are_refused_with_their_place() {
    let toml = "[[tables]]\nname = \"t\"\nfields = [\n  { name = \"k\", type = \"key\" },\n  { name = \"__l\", type = \"label\" },\n  { name = \"__v\", type = \"gauge\" },\n]\n";
    let err = parse_meta_toml(toml, Path::new("m.meta.toml")).expect_err("__l must be refused");
    let d = err.diagnostics();
    assert_eq!(d.len(), 1, "{err}");
    assert_eq!(
        (d[0].line, d[0].key.as_str(), d[0].kind),
        (5, "tables[0].fields[1].name", DiagnosticKind::InvalidValue)
    );
    let conf =
        "measurements: (\n { name: \"t\",\n   fields: ( { name: \"__k\", type: \"key\" } ) }\n);\n";
    let err = parse_meta_libconfig(conf, Path::new("t.meta")).expect_err("__k must be refused");
    let d = err.diagnostics();
    assert_eq!(
        (d[0].line, d[0].key.as_str(), d[0].kind),
        (
            3,
            "measurements[0].fields[0].name",
            DiagnosticKind::InvalidValue
        )
    );
    // What the reader accepts, the store registers.
    let mut store = crate::imdb::Store::new(crate::imdb::Limits::default());
    for t in parse_meta_toml(&toml.replace("__l", "l"), Path::new("m.meta.toml")).unwrap() {
        store.register(t).unwrap();
    }
}
