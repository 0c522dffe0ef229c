//! The Prometheus output of a realistic store passes `promtool check metrics` without a single
//! lint, both rendered directly and fetched over HTTP.
//!
//! Needs promtool on PATH. Without it the tests print a loud SKIPPED line and pass, unless
//! `GOPHER_STRICT_TESTS=1`, in which case they fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use gopher::egress::http::{WebState, bind, serve};
use gopher::egress::prometheus::render;
use gopher::egress::store_counts::sync_from_store;
use gopher::imdb::{FieldMeta, FieldType, Limits, Row, Store, TableMeta, Value};
use gopher::telemetry::{EBPF_EVENTS_LOST, PROBE_RESTARTS, SelfMetrics};

const NOW_MS: u64 = 1_700_000_000_000;

fn field(name: &str, ty: FieldType, description: &str) -> FieldMeta {
    FieldMeta {
        name: name.into(),
        ty,
        description: description.into(),
    }
}

/// Values through the field types' text rule, as an extension probe's would be (strings where
/// the table is unknown or the row too short, which the store refuses and counts).
fn row(table: &str, values: &[&str]) -> Row {
    let types: Vec<FieldType> = match table {
        "tcp_link" => vec![
            FieldType::Key,
            FieldType::Key,
            FieldType::Key,
            FieldType::Key,
            FieldType::Key,
            FieldType::Key,
            FieldType::Label,
            FieldType::Unknown,
            FieldType::Gauge,
            FieldType::Counter,
            FieldType::Counter,
            FieldType::Counter,
            FieldType::Gauge,
        ],
        "io_latency" => vec![
            FieldType::Key,
            FieldType::Label,
            FieldType::Histogram,
            FieldType::Gauge,
        ],
        _ => Vec::new(),
    };
    Row {
        table: table.into(),
        values: values
            .iter()
            .enumerate()
            .map(|(i, v)| match types.get(i) {
                Some(ty) if values.len() == types.len() => ty.parse_value(v).unwrap(),
                _ => Value::from(*v),
            })
            .collect(),
    }
}

fn realistic_store() -> Store {
    let mut store = Store::new(Limits {
        max_records: 100,
        ..Limits::default()
    });
    store
        .register(TableMeta {
            name: "tcp_link".into(),
            description: "TCP connections".into(),
            fields: vec![
                field("tgid", FieldType::Key, "process id"),
                field("role", FieldType::Key, "0 = server, 1 = client"),
                field("client_ip", FieldType::Key, "client address"),
                field("server_ip", FieldType::Key, "server address"),
                field("server_port", FieldType::Key, "server port"),
                field(
                    "protocol",
                    FieldType::Key,
                    "address family (2 = IPv4, 10 = IPv6)",
                ),
                field("process_name", FieldType::Label, "comm of the process"),
                field("pid", FieldType::Unknown, "never exported"),
                field("link_count", FieldType::Gauge, "established links"),
                field("rx_bytes", FieldType::Counter, "bytes received"),
                field("tx_bytes", FieldType::Counter, "bytes sent"),
                field(
                    "retran_packets",
                    FieldType::Counter,
                    "retransmitted segments",
                ),
                field(
                    "rtt",
                    FieldType::Gauge,
                    "smoothed RTT \\ in \"microseconds\"\nper link",
                ),
            ],
            max_records: None,
        })
        .unwrap();
    store
        .register(TableMeta {
            name: "io_latency".into(),
            description: String::new(),
            fields: vec![
                field("disk", FieldType::Key, ""),
                field("op", FieldType::Label, ""),
                field("seconds", FieldType::Histogram, "block I/O latency"),
                field("in_flight", FieldType::Gauge, ""),
            ],
            max_records: None,
        })
        .unwrap();
    let rows = realistic_rows();
    for r in rows {
        store.upsert(r, NOW_MS).unwrap();
    }
    // Exercise the drop accounting families as well.
    let _ = store.upsert(row("tcp_link", &["1"]), NOW_MS);
    let _ = store.upsert(row("not_registered", &[]), NOW_MS);
    store
}

/// Three links (one with quotes, a backslash and a newline in its label, one with unicode and
/// an infinite RTT) and three disks (one histogram, one empty histogram, one without).
fn realistic_rows() -> [Row; 6] {
    [
        row(
            "tcp_link",
            &[
                "101",
                "1",
                "10.0.0.1",
                "10.0.0.2",
                "6379",
                "2",
                "redis-cli",
                "101",
                "3",
                "1024",
                "2048",
                "0",
                "120",
            ],
        ),
        row(
            "tcp_link",
            &[
                "202",
                "0",
                "::1",
                "::1",
                "8080",
                "10",
                "we\"ird\\name\nline2",
                "202",
                "1",
                "5",
                "7",
                "1",
                "95.5",
            ],
        ),
        row(
            "tcp_link",
            &[
                "303",
                "0",
                "10.0.0.3",
                "10.0.0.4",
                "443",
                "2",
                "nginx: 工作进程 ✓",
                "303",
                "2",
                "",
                "9",
                "",
                "inf",
            ],
        ),
        row(
            "io_latency",
            &["sda", "read", "0.001=2 0.01=5 0.1=5 +Inf=7 sum=0.042", "1"],
        ),
        row("io_latency", &["nvme0n1", "write", "+Inf=0 sum=0", ""]),
        row("io_latency", &["sdb", "read", "", "0"]),
    ]
}

fn self_metrics() -> SelfMetrics {
    let metrics = SelfMetrics::new();
    metrics.set_probe_state("tcp", "running");
    metrics.set_probe_state("redis \"ext\"", "failed");
    metrics
        .counter(PROBE_RESTARTS, &[("probe", "redis \"ext\"")])
        .add(3);
    metrics
        .counter(EBPF_EVENTS_LOST, &[("probe", "tcp")])
        .add(12);
    metrics
}

/// `None` when promtool is absent and the test should be skipped.
fn promtool_check(exposition: &str) -> Option<(i32, String, String)> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("GOPHER_STRICT_TESTS").as_deref() != Ok("1"),
                "promtool not installed and GOPHER_STRICT_TESTS=1"
            );
            // Straight to the stderr handle: libtest captures eprintln! of passing tests.
            let _ = std::io::stderr()
                .write_all(b"\n!!!!!!!! SKIPPED: promtool not installed !!!!!!!!\n\n");
            return None;
        }
        Err(err) => panic!("running promtool: {err}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn assert_clean(exposition: &str) {
    let Some((code, stdout, stderr)) = promtool_check(exposition) else {
        return;
    };
    assert!(
        code == 0 && stdout.is_empty() && stderr.is_empty(),
        "promtool exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}\ninput:\n{exposition}"
    );
}

#[test]
fn rendered_store_passes_promtool() {
    let store = realistic_store();
    let metrics = self_metrics();
    sync_from_store(&store, &metrics);
    let mut out = String::new();
    render(&store.snapshot(), &metrics, &mut out);
    // Make sure the interesting parts are actually in what promtool sees.
    for needle in [
        "gala_gopher_tcp_link_rx_bytes_total{tgid=\"202\",role=\"0\",client_ip=\"::1\",server_ip=\"::1\",server_port=\"8080\",protocol=\"10\",process_name=\"we\\\"ird\\\\name\\nline2\"} 5\n",
        "# TYPE gala_gopher_tcp_link_link_count untyped\n",
        "gala_gopher_tcp_link_rtt{tgid=\"303\",role=\"0\",client_ip=\"10.0.0.3\",server_ip=\"10.0.0.4\",server_port=\"443\",protocol=\"2\",process_name=\"nginx: 工作进程 ✓\"} +Inf\n",
        "gala_gopher_io_latency_seconds_bucket{disk=\"sda\",op=\"read\",le=\"+Inf\"} 7\n",
        "gala_gopher_io_latency_seconds_count{disk=\"nvme0n1\",op=\"write\"} 0\n",
        "gopher_rows_dropped_total{table=\"tcp_link\",reason=\"field_count\"} 1\n",
        "gopher_probe_state{probe=\"redis \\\"ext\\\"\",state=\"failed\"} 1\n",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    assert!(!out.contains("pid"), "unknown fields are never exported");
    assert_clean(&out);
}

#[test]
fn promtool_does_reject_bad_input() {
    // Guards against a harness that would pass anything.
    let bad = "# HELP x_bytes y\n# TYPE x_bytes counter\nx_bytes 1\n";
    let Some((code, _, stderr)) = promtool_check(bad) else {
        return;
    };
    assert_ne!(code, 0);
    assert!(stderr.contains("_total"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_scrape_passes_promtool() {
    let state = Arc::new(WebState::new(
        Arc::new(Mutex::new(realistic_store())),
        Arc::new(self_metrics()),
        || NOW_MS,
    ));
    let listener = bind("127.0.0.1", 0).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));
    let mut body = String::new();
    for _ in 0..2 {
        // Twice, so that the scrape-duration gauge is present too. curl: the body is streamed
        // (chunked), curl takes the framing off.
        let url = format!("http://{addr}/metrics");
        let out = tokio::task::spawn_blocking(move || {
            Command::new("curl").args(["-s", "-i", &url]).output()
        })
        .await
        .unwrap()
        .unwrap();
        let raw = String::from_utf8(out.stdout).unwrap();
        let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        body = rest.to_owned();
    }
    assert!(body.contains("gopher_scrape_duration_seconds "), "{body}");
    // The process collector's families, read at the scrape, pass the same lints.
    assert!(
        body.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "),
        "{body}"
    );
    assert!(body.contains("\nprocess_open_fds "), "{body}");
    assert!(
        body.contains("gala_gopher_tcp_link_tx_bytes_total{"),
        "{body}"
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert_clean(&body);
}
