//! The encoder's tests: exact exposition text per field type, naming and clash rule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::imdb::TableMeta;

pub(super) fn field(name: &str, ty: FieldType, description: &str) -> FieldMeta {
    FieldMeta {
        name: name.into(),
        ty,
        description: description.into(),
    }
}

pub(super) fn table(name: &str, fields: Vec<FieldMeta>, rows: &[&[&str]]) -> TableSnapshot {
    let rows: Vec<Vec<_>> = rows
        .iter()
        .map(|r| {
            fields
                .iter()
                .zip(r.iter())
                .map(|(f, v)| f.ty.parse_value(v).unwrap())
                .collect()
        })
        .collect();
    let meta = TableMeta {
        name: name.into(),
        description: String::new(),
        fields,
        max_records: None,
    };
    TableSnapshot::from_rows(meta, &rows, 0)
}

/// Renders without self-metrics, which have their own tests.
fn render_tables(tables: Vec<TableSnapshot>) -> (String, f64) {
    let metrics = SelfMetrics::new();
    let mut out = String::new();
    render(&Snapshot { tables }, &metrics, &mut out);
    let cut = out.find("# HELP gopher_").unwrap_or(out.len());
    out.truncate(cut);
    (out, metrics.gauge(FAMILIES_SKIPPED, &[]).get())
}

#[test]
fn renders_exact_text() {
    let t = table(
        "tcp_link",
        vec![
            field("tgid", FieldType::Key, ""),
            field("comm", FieldType::Label, ""),
            field("pid", FieldType::Unknown, "not exported"),
            field("rx_bytes", FieldType::Counter, "bytes received"),
            field("link_count", FieldType::Gauge, "links\nopen \\ now"),
            field("rtt", FieldType::Gauge, "smoothed \"RTT\""),
        ],
        &[
            &["1", "a\"b\\c\nd", "9", "10", "2", ""],
            &["2", "ü", "9", "", "3", "inf"],
        ],
    );
    let (out, skipped) = render_tables(vec![t]);
    assert_eq!(
        out,
        "# HELP gala_gopher_tcp_link_rx_bytes_total bytes received\n\
         # TYPE gala_gopher_tcp_link_rx_bytes_total counter\n\
         gala_gopher_tcp_link_rx_bytes_total{tgid=\"1\",comm=\"a\\\"b\\\\c\\nd\"} 10\n\
         # HELP gala_gopher_tcp_link_link_count links\\nopen \\\\ now\n\
         # TYPE gala_gopher_tcp_link_link_count untyped\n\
         gala_gopher_tcp_link_link_count{tgid=\"1\",comm=\"a\\\"b\\\\c\\nd\"} 2\n\
         gala_gopher_tcp_link_link_count{tgid=\"2\",comm=\"ü\"} 3\n\
         # HELP gala_gopher_tcp_link_rtt smoothed \"RTT\"\n\
         # TYPE gala_gopher_tcp_link_rtt gauge\n\
         gala_gopher_tcp_link_rtt{tgid=\"2\",comm=\"ü\"} +Inf\n"
    );
    assert!(skipped.abs() < f64::EPSILON);
}

#[test]
fn counter_already_ending_in_total_and_unlabelled_samples() {
    let t = table(
        "sys",
        vec![
            field("ctx_total", FieldType::Counter, ""),
            field("empty", FieldType::Gauge, ""),
        ],
        &[&["5", ""]],
    );
    let (out, _) = render_tables(vec![t]);
    assert_eq!(
        out,
        "# HELP gala_gopher_sys_ctx_total Field ctx_total of gala-gopher table sys.\n\
         # TYPE gala_gopher_sys_ctx_total counter\n\
         gala_gopher_sys_ctx_total 5\n"
    );
}

#[test]
fn renders_histograms() {
    let t = table(
        "lat",
        vec![
            field("op", FieldType::Key, ""),
            field("seconds", FieldType::Histogram, "latency"),
        ],
        &[&["r", "0.001=2 0.01=5 +Inf=7 sum=0.042"], &["w", ""]],
    );
    let (out, _) = render_tables(vec![t]);
    assert_eq!(
        out,
        "# HELP gala_gopher_lat_seconds latency\n\
         # TYPE gala_gopher_lat_seconds histogram\n\
         gala_gopher_lat_seconds_bucket{op=\"r\",le=\"0.001\"} 2\n\
         gala_gopher_lat_seconds_bucket{op=\"r\",le=\"0.01\"} 5\n\
         gala_gopher_lat_seconds_bucket{op=\"r\",le=\"+Inf\"} 7\n\
         gala_gopher_lat_seconds_sum{op=\"r\"} 0.042\n\
         gala_gopher_lat_seconds_count{op=\"r\"} 7\n"
    );
    let bare = table(
        "h",
        vec![field("x", FieldType::Histogram, "d")],
        &[&["+Inf=1 sum=2"]],
    );
    let (out, _) = render_tables(vec![bare]);
    assert!(
        out.contains("gala_gopher_h_x_bucket{le=\"+Inf\"} 1\ngala_gopher_h_x_sum 2\n"),
        "{out}"
    );
}

#[test]
fn clashing_families_are_skipped_and_counted() {
    let a = table("a", vec![field("b_c", FieldType::Gauge, "")], &[&["1"]]);
    let a_b = table(
        "a_b",
        vec![
            field("c", FieldType::Gauge, ""),
            field("n", FieldType::Counter, ""),
            field("n_total", FieldType::Gauge, ""),
        ],
        &[&["2", "3", "4"]],
    );
    let le = table(
        "l",
        vec![
            field("le", FieldType::Label, ""),
            field("h", FieldType::Histogram, ""),
        ],
        &[&["x", "+Inf=1 sum=1"]],
    );
    let (out, skipped) = render_tables(vec![a, a_b, le]);
    assert_eq!(out.matches("# TYPE").count(), 2, "{out}");
    assert!(out.contains("gala_gopher_a_b_c 1\n") && out.contains("gala_gopher_a_b_n_total 3\n"));
    assert!((skipped - 3.0).abs() < f64::EPSILON);
}

#[test]
fn families_without_samples_are_omitted() {
    let t = table(
        "e",
        vec![
            field("k", FieldType::Key, ""),
            field("g", FieldType::Gauge, ""),
        ],
        &[],
    );
    assert_eq!(render_tables(vec![t]).0, "");
}

#[test]
fn gala_gopher_naming() {
    let t = table(
        "tcp_link",
        vec![
            field("tgid", FieldType::Key, ""),
            field("process_name", FieldType::Label, ""),
            field("rx_bytes", FieldType::Counter, "rx"),
            field("packets_in", FieldType::Counter, "in"),
            field("link_count", FieldType::Gauge, "n"),
        ],
        &[&["1", "nc", "10", "3", "2"]],
    );
    let metrics = SelfMetrics::new();
    let naming = Naming::GalaGopher {
        machine_id: "abc-10.0.0.1".into(),
    };
    let mut body = Vec::new();
    render_to(&Snapshot { tables: vec![t] }, &metrics, &naming, &mut body).unwrap();
    let out = String::from_utf8(body).unwrap();
    let out = &out[..out.find("# HELP gopher_").unwrap()];
    let l = "{tgid=\"1\",comm=\"nc\",machine_id=\"abc-10.0.0.1\"}";
    assert_eq!(
        out,
        format!(
            "# HELP gala_gopher_tcp_link_rx_bytes rx\n\
             # TYPE gala_gopher_tcp_link_rx_bytes counter\n\
             gala_gopher_tcp_link_rx_bytes{l} 10\n\
             # HELP gala_gopher_tcp_link_segs_in in\n\
             # TYPE gala_gopher_tcp_link_segs_in counter\n\
             gala_gopher_tcp_link_segs_in{l} 3\n\
             # HELP gala_gopher_tcp_link_link_count n\n\
             # TYPE gala_gopher_tcp_link_link_count untyped\n\
             gala_gopher_tcp_link_link_count{l} 2\n"
        )
    );
}

#[test]
fn appends_self_metrics() {
    let mut out = String::new();
    render(&Snapshot::default(), &SelfMetrics::new(), &mut out);
    assert!(out.starts_with("# HELP gopher_build_info "), "{out}");
}

/// Found by the `exposition` fuzz target: with gala-gopher naming (counters without `_total`)
/// the OpenMetrics body typed them `counter`, which OpenMetrics readers refuse.
#[test]
fn gala_gopher_counters_in_openmetrics_are_unknown() {
    let t = table(
        "t",
        vec![
            field("k", FieldType::Key, ""),
            field("rx", FieldType::Counter, "rx"),
        ],
        &[&["1", "10"]],
    );
    let naming = Naming::GalaGopher {
        machine_id: "m".into(),
    };
    let mut body = Vec::new();
    let snapshot = Snapshot { tables: vec![t] };
    render_format_to(
        &snapshot,
        &SelfMetrics::new(),
        &naming,
        Format::OpenMetrics,
        &mut body,
    )
    .unwrap();
    let out = String::from_utf8(body).unwrap();
    assert!(
        out.starts_with(
            "# HELP gala_gopher_t_rx rx\n# TYPE gala_gopher_t_rx unknown\n\
             gala_gopher_t_rx{k=\"1\",machine_id=\"m\"} 10\n"
        ),
        "{out}"
    );
}
