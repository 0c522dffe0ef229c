//! Copies the table store's own counts (rows ingested and dropped, records, tables) into the
//! self-metrics, so that neither imports the other: the store keeps plain numbers, the
//! self-metrics registry knows nothing of the store, and this bridge runs where both are at
//! hand (at each scrape, and on the agent's expiry tick).

use std::collections::BTreeMap;

use crate::imdb::Store;
use crate::telemetry::{
    IMDB_RECORDS, IMDB_TABLES, ROW_REFUSALS, ROWS_DROPPED, ROWS_INGESTED, SelfMetrics,
};

/// Copies the store's cumulative counters and current sizes into the `gopher_*` families.
/// Call with the store locked, right before rendering.
pub fn sync_from_store(store: &Store, metrics: &SelfMetrics) {
    let one = |s: String| -> Box<[String]> { Box::new([s]) };
    let ingested = store
        .ingested()
        .into_iter()
        .map(|(t, n)| (one(t), n))
        .collect();
    metrics.mirror_counters(ROWS_INGESTED, ingested);
    let counts = store.record_counts();
    // Every registered table's row refusals exist from the start, at 0, so that increase() in
    // the shipped alert sees the very first drop (a series born at 1 shows no increase).
    let mut drops: BTreeMap<Box<[String]>, u64> = counts
        .iter()
        .flat_map(|(t, _)| {
            ROW_REFUSALS
                .iter()
                .map(|r| (Box::from([t.clone(), (*r).to_owned()]), 0))
        })
        .collect();
    for (t, reason, n) in store.drops() {
        drops.insert(Box::from([t, reason.to_owned()]), n);
    }
    metrics.mirror_counters(ROWS_DROPPED, drops.into_iter().collect());
    metrics.gauge(IMDB_TABLES, &[]).set(counts.len() as f64);
    let records = counts
        .into_iter()
        .map(|(t, n)| (one(t), n as f64))
        .collect();
    metrics.mirror_gauges(IMDB_RECORDS, records);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::egress::prometheus::selfmetrics::rendered;
    use crate::imdb::{FieldMeta, FieldType, Limits, Row, TableMeta};

    #[test]
    fn mirrors_the_store() {
        let mut store = Store::new(Limits {
            max_records: 1,
            ..Limits::default()
        });
        let meta = TableMeta {
            name: "t".into(),
            description: String::new(),
            fields: vec![FieldMeta {
                name: "k".into(),
                ty: FieldType::Key,
                description: String::new(),
            }],
            max_records: None,
        };
        store.register(meta).unwrap();
        let row = |k: &str| Row {
            table: "t".into(),
            values: vec![k.into()],
        };
        store.upsert(row("a"), 0).unwrap();
        store.upsert(row("a"), 0).unwrap();
        let _ = store.upsert(row("b"), 0);
        let m = SelfMetrics::new();
        sync_from_store(&store, &m);
        let out = rendered(&m);
        assert!(
            out.contains("gopher_rows_ingested_total{table=\"t\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("gopher_rows_dropped_total{table=\"t\",reason=\"record_limit\"} 1\n"));
        assert!(out.contains("gopher_imdb_records{table=\"t\"} 1\n"));
        assert!(out.contains("gopher_imdb_tables 1\n"));
        store.unregister("t");
        sync_from_store(&store, &m);
        let out = rendered(&m);
        assert!(!out.contains("gopher_imdb_records{"), "{out}");
        assert!(out.contains("gopher_imdb_tables 0\n"));
        assert!(out.contains("gopher_rows_ingested_total{table=\"t\"} 2\n"));
    }
}
