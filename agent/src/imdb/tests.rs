//! Store behaviour: unit tests and property tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn field(name: &str, ty: FieldType) -> FieldMeta {
    FieldMeta {
        name: name.into(),
        ty,
        description: String::new(),
    }
}

/// `t(k key, l label, n counter, g gauge, h histogram)`
fn meta() -> TableMeta {
    TableMeta {
        name: "t".into(),
        description: String::new(),
        fields: vec![
            field("k", FieldType::Key),
            field("l", FieldType::Label),
            field("n", FieldType::Counter),
            field("g", FieldType::Gauge),
            field("h", FieldType::Histogram),
        ],
        max_records: None,
    }
}

/// Values through the text rule where it accepts them, else as strings (which the store
/// refuses in number fields: how its own check is exercised).
fn typed(values: &[&str]) -> Vec<Value> {
    let m = meta();
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            m.fields
                .get(i)
                .and_then(|f| f.ty.parse_value(v).ok())
                .unwrap_or_else(|| Value::from(*v))
        })
        .collect()
}

fn row(values: &[&str]) -> Row {
    Row {
        table: "t".into(),
        values: typed(values),
    }
}

fn limits(max_records: usize, timeout: u64) -> Limits {
    Limits {
        max_tables: 4,
        max_records,
        max_metrics: 8,
        record_timeout_ms: timeout,
    }
}

fn store(max_records: usize, timeout: u64) -> Store {
    let mut s = Store::new(limits(max_records, timeout));
    s.register(meta()).unwrap();
    s
}

fn values(s: &Store) -> Vec<Vec<String>> {
    s.snapshot().tables[0].texts()
}

#[test]
fn upsert_replaces_by_key_and_refreshes() {
    let mut s = store(10, 0);
    s.upsert(row(&["a", "x", "1", "2", ""]), 5).unwrap();
    s.upsert(row(&["b", "x", "1", "2", ""]), 6).unwrap();
    s.upsert(row(&["a", "y", "3", "4", "+Inf=1 sum=2"]), 7)
        .unwrap();
    let snap = s.snapshot();
    let recs = &snap.tables[0].records;
    assert_eq!(recs.len(), 2);
    assert_eq!(
        snap.tables[0].texts()[0],
        ["a", "y", "3", "4", "+Inf=1 sum=2"]
    );
    assert_eq!((recs[0].updated_ms, recs[0].version), (7, 3));
    assert_eq!((recs[1].updated_ms, recs[1].version), (6, 2));
    assert_eq!(s.version(), 3);
    assert_eq!(s.ingested(), vec![("t".to_owned(), 3)]);
}

#[test]
fn table_without_keys_keeps_one_record() {
    let mut s = Store::new(limits(10, 0));
    let m = TableMeta {
        name: "sys".into(),
        description: String::new(),
        fields: vec![field("free", FieldType::Gauge)],
        max_records: None,
    };
    s.register(m).unwrap();
    for v in [1_u64, 2, 3] {
        s.upsert(
            Row {
                table: "sys".into(),
                values: vec![v.into()],
            },
            0,
        )
        .unwrap();
    }
    let snap = s.snapshot();
    assert_eq!(snap.tables[0].records.len(), 1);
    assert_eq!(snap.tables[0].texts(), [["3"]]);
}

#[test]
fn rejections_are_counted_by_reason() {
    let mut s = store(1, 0);
    let cases: [(Row, &str); 6] = [
        (
            Row {
                table: "nope".into(),
                values: vec![],
            },
            "unknown_table",
        ),
        (row(&["a"]), "field_count"),
        (row(&["a", "", "x", "", ""]), "bad_value"),
        (row(&["a", "", "", " 1", ""]), "bad_value"),
        (row(&["a", "", "", "", "1=2"]), "bad_value"),
        (row(&["a", "", "", "", ""]), ""),
    ];
    for (r, reason) in cases {
        let res = s.upsert(r, 0);
        match res {
            Ok(()) => assert_eq!(reason, ""),
            Err(e) => assert_eq!(e.reason(), reason, "{e}"),
        }
    }
    let err = s.upsert(row(&["b", "", "", "", ""]), 0).unwrap_err();
    assert_eq!(
        err,
        ImdbError::RecordLimit {
            table: "t".into(),
            limit: 1
        }
    );
    assert!(err.to_string().contains("\"t\""), "{err}");
    // An existing key is still updatable at the limit.
    s.upsert(row(&["a", "", "1", "", ""]), 0).unwrap();
    assert_eq!(
        s.drops(),
        vec![
            ("nope".to_owned(), "unknown_table", 1),
            ("t".to_owned(), "bad_value", 3),
            ("t".to_owned(), "field_count", 1),
            ("t".to_owned(), "record_limit", 1),
        ]
    );
}

#[test]
fn bad_value_names_table_and_field() {
    let mut s = store(1, 0);
    let err = s.upsert(row(&["a", "", "1", "12ab", ""]), 0).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"t\"") && msg.contains("\"g\"") && msg.contains("12ab"),
        "{msg}"
    );
}

#[test]
fn unknown_table_names_are_bounded() {
    let mut s = store(1, 0);
    for i in 0..100 {
        let _ = s.upsert(
            Row {
                table: format!("junk{i}"),
                values: vec![],
            },
            0,
        );
    }
    let _ = s.upsert(
        Row {
            table: "bad name|".into(),
            values: vec![],
        },
        0,
    );
    let drops = s.drops();
    assert_eq!(drops.len(), UNKNOWN_TABLE_NAMES + 1);
    let other = drops.iter().find(|d| d.0 == OTHER_TABLE).unwrap();
    assert_eq!(other.2, 101 - UNKNOWN_TABLE_NAMES as u64);
}

#[test]
fn expiry_drops_stale_records_only() {
    let mut s = store(10, 100);
    s.upsert(row(&["old", "", "", "", ""]), 0).unwrap();
    s.upsert(row(&["new", "", "", "", ""]), 50).unwrap();
    assert_eq!(s.expire(100), 0, "age == timeout is still fresh");
    assert_eq!(s.expire(101), 1);
    assert_eq!(values(&s), vec![vec!["new", "", "", "", ""]]);
    assert_eq!(s.drops(), vec![("t".to_owned(), "expired", 1)]);
    let mut never = store(10, 0);
    never.upsert(row(&["a", "", "", "", ""]), 0).unwrap();
    assert_eq!(never.expire(u64::MAX), 0);
}

#[test]
fn register_validates() {
    let mut s = Store::new(Limits {
        max_tables: 1,
        max_records: 1,
        max_metrics: 2,
        record_timeout_ms: 0,
    });
    let reason = |s: &mut Store, m: TableMeta| s.register(m).unwrap_err().reason();
    let mut m = meta();
    m.name = "9t".into();
    assert_eq!(reason(&mut s, m), "invalid_meta");
    let mut m = meta();
    m.fields[1].name = "k".into();
    assert_eq!(reason(&mut s, m), "invalid_meta");
    let mut m = meta();
    m.fields[1].name = "a-b".into();
    assert_eq!(reason(&mut s, m), "invalid_meta");
    let mut m = meta();
    m.fields[1].name = "__name__".into();
    assert_eq!(reason(&mut s, m), "invalid_meta");
    let mut m = meta();
    m.fields.clear();
    assert_eq!(reason(&mut s, m), "invalid_meta");
    assert_eq!(reason(&mut s, meta()), "metric_limit");
    let mut small = meta();
    small.fields.truncate(3);
    s.register(small.clone()).unwrap();
    let mut other = small.clone();
    other.name = "u".into();
    let err = s.register(other).unwrap_err();
    assert_eq!(err.reason(), "table_limit");
    assert!(err.to_string().contains("\"u\""));
    assert!(s.table("t").is_some() && s.table("u").is_none());
}

#[test]
fn reregister_is_idempotent_or_replaces() {
    let mut s = store(10, 0);
    s.upsert(row(&["a", "", "", "", ""]), 0).unwrap();
    s.register(meta()).unwrap();
    assert_eq!(s.record_counts(), vec![("t".to_owned(), 1)]);
    let mut changed = meta();
    changed.fields[3].description = "now documented".into();
    s.register(changed.clone()).unwrap();
    assert_eq!(s.record_counts(), vec![("t".to_owned(), 0)]);
    assert_eq!(**s.table("t").unwrap(), changed);
    assert!(s.unregister("t"));
    assert!(!s.unregister("t"));
    assert!(s.record_counts().is_empty());
    assert_eq!(
        s.ingested(),
        vec![("t".to_owned(), 1)],
        "counters survive unregister"
    );
}

#[test]
fn changed_since_returns_newer_records_only() {
    let mut s = store(10, 0);
    s.upsert(row(&["a", "", "", "", ""]), 0).unwrap();
    let v = s.version();
    assert!(s.changed_since(v).tables.is_empty());
    s.upsert(row(&["b", "", "", "", ""]), 0).unwrap();
    let snap = s.changed_since(v);
    assert_eq!(snap.tables.len(), 1);
    assert_eq!(snap.tables[0].texts()[0][0], "b");
    assert_eq!(s.changed_since(0).tables[0].records.len(), 2);
}

#[test]
fn snapshot_is_sorted_and_detached() {
    let mut s = Store::new(limits(10, 0));
    for name in ["zeta", "alpha", "mid"] {
        let mut m = meta();
        m.name = name.into();
        s.register(m).unwrap();
    }
    let snap = s.snapshot();
    let names: Vec<_> = snap.tables.iter().map(|t| t.meta.name.as_str()).collect();
    assert_eq!(names, ["alpha", "mid", "zeta"]);
    s.upsert(
        Row {
            table: "mid".into(),
            values: vec![Value::Empty; 5],
        },
        0,
    )
    .unwrap();
    assert!(
        snap.tables[1].records.is_empty(),
        "a snapshot does not see later writes"
    );
}

#[test]
fn delta_upserts_removes_and_refreshes_the_rest() {
    let mut s = store(10, 100);
    for k in ["a", "b", "c"] {
        s.upsert(row(&[k, "", "1", "", ""]), 0).unwrap();
    }
    let before = s.version();
    let rejected = s.apply(
        Batch::TableDelta {
            table: "t".into(),
            upserts: vec![
                typed(&["a", "", "2", "", ""]),
                typed(&["d", "", "x", "", ""]),
            ],
            removed: vec![vec![Value::from("b")]],
            refresh_rest: true,
            replace: false,
            more: false,
        },
        90,
    );
    assert_eq!(rejected, 1, "the bad row is refused and counted");
    assert_eq!(
        values(&s),
        vec![vec!["a", "", "2", "", ""], vec!["c", "", "1", "", ""]]
    );
    // c was refreshed: it is "written" again for sinks that send changes (Kafka) ...
    let changed = s.changed_since(before);
    assert_eq!(changed.tables[0].records.len(), 2);
    assert!(changed.tables[0].records.iter().all(|r| r.updated_ms == 90));
    // ... and ages from the refresh.
    assert_eq!(s.expire(190), 0);
    assert_eq!(s.expire(191), 2);
    assert!(s.drops().contains(&("t".to_owned(), "bad_value", 1)));
}

#[test]
fn a_replacing_delta_drops_what_an_earlier_run_left() {
    let mut s = store(10, 100);
    for k in ["old1", "old2"] {
        s.upsert(row(&[k, "", "1", "", ""]), 0).unwrap();
    }
    let delta = |upserts, replace| Batch::TableDelta {
        table: "t".into(),
        upserts,
        removed: vec![],
        refresh_rest: true,
        replace,
        more: false,
    };
    assert_eq!(
        s.apply(delta(vec![typed(&["new", "", "1", "", ""])], true), 10),
        0
    );
    assert_eq!(values(&s), vec![vec!["new", "", "1", "", ""]]);
    // Later deltas refresh only what the new run wrote.
    assert_eq!(s.apply(delta(vec![], false), 20), 0);
    assert_eq!(values(&s), vec![vec!["new", "", "1", "", ""]]);
}

#[test]
fn a_replacing_delta_in_pieces_keeps_the_earlier_records_until_its_last_piece() {
    // Room for 3: the earlier run's 2 records make room for the new run's third row.
    let mut s = store(3, 100);
    for k in ["old1", "old2", "same"] {
        s.upsert(row(&[k, "", "1", "", ""]), 0).unwrap();
    }
    let piece = |keys: &[&str], replace: bool, more: bool| Batch::TableDelta {
        table: "t".into(),
        upserts: keys.iter().map(|k| typed(&[k, "", "1", "", ""])).collect(),
        removed: vec![],
        refresh_rest: !more,
        replace,
        more,
    };
    assert_eq!(s.apply(piece(&["same"], true, true), 10), 0);
    assert_eq!(
        s.record_counts(),
        vec![("t".to_owned(), 3)],
        "earlier records still there"
    );
    assert_eq!(
        s.apply(piece(&["new1"], false, true), 11),
        0,
        "room made by the earlier run"
    );
    assert_eq!(s.apply(piece(&["new2"], false, false), 12), 0);
    let keys: Vec<String> = values(&s).into_iter().map(|v| v[0].clone()).collect();
    assert_eq!(keys, vec!["new1", "new2", "same"]);
    // A replace in one piece: the same as before.
    assert_eq!(s.apply(piece(&["new2"], true, false), 13), 0);
    assert_eq!(values(&s).len(), 1);
}

#[test]
fn unchanged_rows_keep_their_bytes_and_snapshots_share_them() {
    let mut s = store(10, 0);
    s.upsert(row(&["a", "x", "1", "2", ""]), 1).unwrap();
    let first = s.snapshot();
    s.upsert(row(&["a", "x", "1", "2", ""]), 2).unwrap();
    let second = s.snapshot();
    let (r1, r2) = (&first.tables[0].records[0], &second.tables[0].records[0]);
    assert!(Arc::ptr_eq(&r1.data, &r2.data), "not rebuilt");
    assert_eq!((r2.updated_ms, r2.version), (2, 2), "but refreshed");
    s.upsert(row(&["a", "x", "1", "3", ""]), 3).unwrap();
    let third = s.snapshot();
    assert!(!Arc::ptr_eq(&r2.data, &third.tables[0].records[0].data));
    assert_eq!(values(&s), vec![vec!["a", "x", "1", "3", ""]]);
    assert_eq!(
        first.tables[0].texts(),
        [["a", "x", "1", "2", ""]],
        "snapshot unchanged"
    );
}

#[test]
fn a_table_may_set_its_own_record_cap() {
    let mut s = Store::new(limits(1, 0));
    let mut m = meta();
    m.max_records = Some(3);
    s.register(m).unwrap();
    for k in ["a", "b", "c"] {
        s.upsert(row(&[k, "", "", "", ""]), 0).unwrap();
    }
    let err = s.upsert(row(&["d", "", "", "", ""]), 0).unwrap_err();
    assert_eq!(
        err,
        ImdbError::RecordLimit {
            table: "t".into(),
            limit: 3
        }
    );
}

#[test]
fn a_tcp_link_record_is_compact() {
    // A tcp_link-like row: 7 keys, a label, 8 numbers.
    let names = [
        "tgid",
        "role",
        "client_ip",
        "server_ip",
        "server_port",
        "protocol",
        "netns",
        "comm",
        "m0",
        "m1",
        "m2",
        "m3",
        "m4",
        "m5",
        "m6",
        "m7",
    ];
    let fields: Vec<FieldMeta> = names
        .iter()
        .enumerate()
        .map(|(i, n)| match i {
            0..=6 => field(n, FieldType::Key),
            7 => field(n, FieldType::Label),
            _ => field(n, FieldType::Counter),
        })
        .collect();
    let m = TableMeta {
        name: "link".into(),
        description: String::new(),
        fields,
        max_records: None,
    };
    let mut values = vec![
        Value::from(123_456_u32),
        Value::from(1_u8),
        Value::from("127.1.200.201"),
        Value::from("127.0.0.1"),
        Value::from(8080_u16),
        Value::from(2_u8),
        Value::from(4_026_531_840_u64),
        Value::from("python3"),
    ];
    values.extend([1_u64, 12_345_678, 9_876_543, 40_000, 39_000, 2, 0, 120].map(Value::from));
    let t = TableSnapshot::from_rows(m, &[values], 0);
    let bytes = t.records[0].data.len();
    assert!(bytes <= 80, "{bytes} bytes");
    assert_eq!(t.texts()[0][2], "127.1.200.201");
    assert_eq!(t.texts()[0][9], "12345678");
}

#[derive(Debug, Clone)]
enum Op {
    Upsert {
        key: u8,
        value: u8,
        table_ok: bool,
        bad: bool,
        now: u64,
    },
    Expire {
        now: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..8_u8, any::<u8>(), prop::bool::weighted(0.9), prop::bool::weighted(0.1), 0..1000_u64)
            .prop_map(|(key, value, table_ok, bad, now)| Op::Upsert { key, value, table_ok, bad, now }),
        1 => (0..1000_u64).prop_map(|now| Op::Expire { now }),
    ]
}

fn op_row(key: u8, value: u8, table_ok: bool, bad: bool) -> Row {
    let g = if bad {
        "x".to_owned()
    } else {
        value.to_string()
    };
    Row {
        table: if table_ok { "t" } else { "gone" }.into(),
        values: typed(&[&format!("k{key}"), "", "", &g, ""]),
    }
}

proptest! {
    #[test]
    fn accounting_adds_up(ops in prop::collection::vec(op(), 0..200), max_records in 1..6_usize) {
        let mut s = store(max_records, 100);
        let (mut attempts, mut expired) = (0_u64, 0_u64);
        for op in ops {
            match op {
                Op::Upsert { key, value, table_ok, bad, now } => {
                    attempts += 1;
                    let _ = s.upsert(op_row(key, value, table_ok, bad), now);
                }
                Op::Expire { now } => expired += s.expire(now) as u64,
            }
            prop_assert!(s.record_counts()[0].1 <= max_records);
        }
        let ingested: u64 = s.ingested().iter().map(|i| i.1).sum();
        let rejected: u64 = s.drops().iter().filter(|d| d.1 != "expired").map(|d| d.2).sum();
        let expired_counted: u64 = s.drops().iter().filter(|d| d.1 == "expired").map(|d| d.2).sum();
        prop_assert_eq!(ingested + rejected, attempts);
        prop_assert_eq!(expired_counted, expired);
        prop_assert_eq!(s.version(), ingested);
        let live = s.record_counts()[0].1 as u64;
        prop_assert!(live <= ingested);
    }

    #[test]
    fn final_state_is_last_write_per_key(
        writes in prop::collection::vec((0..6_u8, any::<u8>()), 0..60),
        seed in any::<u64>(),
    ) {
        // Applying the same per-key last writes in any interleaving gives the same records.
        let mut last = BTreeMap::new();
        for (k, v) in &writes {
            last.insert(*k, *v);
        }
        let mut s1 = store(16, 0);
        for (k, v) in &writes {
            s1.upsert(op_row(*k, *v, true, false), 0).unwrap();
        }
        let mut shuffled: Vec<_> = last.iter().collect();
        let n = shuffled.len().max(1);
        shuffled.rotate_left((seed as usize) % n);
        let mut s2 = store(16, 0);
        for (k, v) in shuffled {
            s2.upsert(op_row(*k, *v, true, false), 0).unwrap();
        }
        prop_assert_eq!(values(&s1), values(&s2));
        let expected: Vec<Vec<String>> = last
            .iter()
            .map(|(k, v)| {
                op_row(*k, *v, true, false)
                    .values
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            })
            .collect();
        prop_assert_eq!(values(&s1), expected);
    }
}
