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

/// Every family of a table reads its records' label sets from one pass over them: a table with
/// label fields between its metrics, escapes, empty labels and values, and text many chunks
/// long renders exactly as written out here, family by family.
#[test]
fn many_rows_render_family_by_family_with_each_rows_labels() {
    use std::fmt::Write as _;

    let rows: Vec<Vec<String>> = (0..5000_u32)
        .map(|i| {
            let comm = match i % 3 {
                0 => format!("p\"{i}\\x\ny"),
                1 => String::new(),
                _ => "plain".to_owned(),
            };
            vec![
                i.to_string(),
                (f64::from(i) / 4.0).to_string(),
                comm,
                if i % 7 == 0 {
                    String::new()
                } else {
                    (i * 10).to_string()
                },
                if i % 2 == 0 {
                    format!("0.5={} +Inf={} sum=1.5", i % 3, i % 3 + 1)
                } else {
                    String::new()
                },
                format!("10.0.{}.{}", i / 256, i % 256),
            ]
        })
        .collect();
    let refs: Vec<Vec<&str>> = rows
        .iter()
        .map(|r| r.iter().map(String::as_str).collect())
        .collect();
    let refs: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
    let t = table(
        "w",
        vec![
            field("k", FieldType::Key, ""),
            field("a", FieldType::Gauge, ""),
            field("comm", FieldType::Label, ""),
            field("n", FieldType::Counter, "n \"count\""),
            field("h", FieldType::Histogram, "h"),
            field("ip", FieldType::Key, ""),
        ],
        &refs,
    );
    let (out, skipped) = render_tables(vec![t]);

    let labels = |r: &[String]| {
        let escaped = r[2]
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let comm = if r[2].is_empty() {
            String::new()
        } else {
            format!(",comm=\"{escaped}\"")
        };
        format!("k=\"{}\"{comm},ip=\"{}\"", r[0], r[5])
    };
    let mut want = String::from(
        "# HELP gala_gopher_w_a Field a of gala-gopher table w.\n# TYPE gala_gopher_w_a gauge\n",
    );
    for r in &rows {
        let _ = writeln!(want, "gala_gopher_w_a{{{}}} {}", labels(r), r[1]);
    }
    want += "# HELP gala_gopher_w_n_total n \"count\"\n# TYPE gala_gopher_w_n_total counter\n";
    for r in rows.iter().filter(|r| !r[3].is_empty()) {
        let _ = writeln!(want, "gala_gopher_w_n_total{{{}}} {}", labels(r), r[3]);
    }
    want += "# HELP gala_gopher_w_h h\n# TYPE gala_gopher_w_h histogram\n";
    for r in rows.iter().filter(|r| !r[4].is_empty()) {
        let l = labels(r);
        let k: u32 = r[0].parse().unwrap();
        let (le, all) = (k % 3, k % 3 + 1);
        let _ = writeln!(
            want,
            "gala_gopher_w_h_bucket{{{l},le=\"0.5\"}} {le}\ngala_gopher_w_h_bucket{{{l},le=\"+Inf\"}} {all}\n\
             gala_gopher_w_h_sum{{{l}}} 1.5\ngala_gopher_w_h_count{{{l}}} {all}"
        );
    }
    assert!(out.len() > 10 * CHUNK_BYTES, "{} bytes only", out.len());
    if out != want {
        let at = out
            .bytes()
            .zip(want.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        panic!(
            "differs at byte {at}: {:?} against {:?}",
            &out[at.saturating_sub(80)..(at + 80).min(out.len())],
            &want[at.saturating_sub(80)..(at + 80).min(want.len())]
        );
    }
    assert!(skipped.abs() < f64::EPSILON);
}
