//! The Prometheus / OpenMetrics writer (egress/prometheus.rs), fed through the real path:
//! table definitions registered in a store, rows through the extension probes' ingest rule,
//! a snapshot rendered by `render_format_to` in both formats and both namings.
//!
//! Oracles: the body reads under a strict, independent reader of the format
//! (gopher_fuzz::exposition: names, escapes, values, TYPE before samples, groups, no series
//! twice, histogram buckets); every label value of a table sample is one of the values stored
//! (escaping reads back exactly); and when no family was skipped for a clash, there is one
//! sample per non-empty metric value (histograms: one per bucket, `+Inf`, `_sum`, `_count`).
#![no_main]

use std::collections::HashSet;

use arbitrary::Arbitrary;
use gopher::egress::prometheus::{self, Format, Naming};
use gopher::imdb::ValueRef;
use gopher::telemetry::{FAMILIES_SKIPPED, SelfMetrics};
use gopher_fuzz::{Tables, exposition};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    tables: Tables,
    openmetrics: bool,
    machine_id: Option<String>,
}

fuzz_target!(|input: Input| {
    let snapshot = input.tables.snapshot();
    let naming = input
        .machine_id
        .clone()
        .map_or(Naming::Gopher, |machine_id| Naming::GalaGopher { machine_id });
    let format = if input.openmetrics { Format::OpenMetrics } else { Format::Text };
    let metrics = SelfMetrics::new();
    let mut body = Vec::new();
    prometheus::render_format_to(&snapshot, &metrics, &naming, format, &mut body)
        .unwrap_or_else(|e| panic!("writing into a Vec failed: {e}"));
    let body = String::from_utf8(body).unwrap_or_else(|e| panic!("body is not UTF-8: {e}"));
    let exp = exposition::parse(&body, input.openmetrics);

    // What the store holds, as text, and what it should produce.
    let mut texts: HashSet<String> = input.machine_id.iter().cloned().collect();
    let mut expected = 0_usize;
    let mut values = Vec::new();
    for table in &snapshot.tables {
        for record in &table.records {
            table.values(record, &mut values);
            for (f, v) in table.meta.fields.iter().zip(&values) {
                if f.ty.is_label() {
                    texts.insert(v.to_string());
                } else if f.ty.is_metric() {
                    expected += match v {
                        ValueRef::Empty => 0,
                        ValueRef::Hist(h) => h.buckets().count() + 3,
                        _ => 1,
                    };
                }
            }
        }
    }
    let mut samples = 0;
    for s in exp.samples.iter().filter(|s| s.name.starts_with("gala_gopher_")) {
        samples += 1;
        for (name, value) in &s.labels {
            if name != "le" {
                assert!(texts.contains(value), "label {name}={value:?} is no stored value:\n{body}");
            }
        }
    }
    if metrics.gauge(FAMILIES_SKIPPED, &[]).get() == 0.0 {
        assert_eq!(samples, expected, "samples lost or invented:\n{body}");
    }
});
