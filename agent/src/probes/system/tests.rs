//! Tests shared by the system families: table definitions, the driver, and properties that
//! hold for every parser on any input.

use std::{collections::HashSet, sync::Arc, time::Duration};

use proptest::prelude::*;
use tokio::sync::mpsc;

use super::{
    Collect, Files, RateLimit, SYSTEM_PROBES, SystemProbe, cpu::Cpu, disk::Disk, inode::Inode,
    meminfo::Meminfo, native_probe, net::Net, tables, tcp::Tcp, vmstat::Vmstat,
};
use crate::{
    egress::prometheus,
    imdb::{Batch, FieldType, Limits, Row, Store},
    probes::{Manager, manager::State},
    telemetry::{PROBE_ERRORS, SelfMetrics},
};

/// The value of field `name` in a row of table `C`.
pub(crate) fn value<C: Collect>(row: &Row, name: &str) -> String {
    let i = C::FIELDS
        .iter()
        .position(|f| f.name == name)
        .unwrap_or_else(|| panic!("{} has no field {name}", C::TABLE));
    row.values[i].to_string()
}

/// A row fits its table: right table and width, keys present, numbers where numbers go.
pub(crate) fn check_row<C: Collect>(row: &Row) {
    assert_eq!(row.table, C::TABLE);
    assert_eq!(row.values.len(), C::FIELDS.len(), "{row:?}");
    for (f, v) in C::FIELDS.iter().zip(&row.values) {
        assert_eq!(f.ty.check(v.as_ref()), Ok(()), "{} in {row:?}", f.name);
        let v = v.to_string();
        match f.ty {
            FieldType::Key => assert!(!v.is_empty(), "empty key {} in {row:?}", f.name),
            FieldType::Counter | FieldType::Gauge => assert!(
                v.is_empty() || v.parse::<f64>().is_ok_and(|x| x.is_finite() && x >= 0.0),
                "{}={v:?} is not a number in {row:?}",
                f.name
            ),
            _ => {}
        }
    }
}

/// Runs one collection of `C` over `texts` and checks every row it produced.
fn collect_checked<C: Collect>(texts: &[String]) -> Result<Vec<Row>, &'static str> {
    let mut rows = Vec::new();
    let result = C::new().collect(texts, &mut rows);
    for r in &rows {
        check_row::<C>(r);
    }
    result.map(|()| rows)
}

/// Collects `C` from this machine's /proc through the real read layer.
fn collect_live<C: Collect>() -> Vec<Row> {
    let mut files = Files::new(C::FILES);
    let texts = files.read().unwrap();
    collect_checked::<C>(texts).unwrap()
}

#[test]
fn tables_are_valid_and_described() {
    let mut store = Store::new(Limits {
        max_tables: 64,
        max_records: 64,
        max_metrics: 64,
        record_timeout_ms: 0,
    });
    let metas = tables();
    let names: Vec<_> = metas.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, SYSTEM_PROBES, "one probe per table, named like it");
    for meta in metas {
        let mut seen = HashSet::new();
        for f in &meta.fields {
            assert!(seen.insert(&f.name), "{}: duplicate {}", meta.name, f.name);
            assert!(
                f.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}: {} is not lower_snake_case",
                meta.name,
                f.name
            );
            assert!(
                !f.name.ends_with("_total"),
                "the renderer adds _total to counters"
            );
            if f.ty == FieldType::Gauge {
                assert!(
                    !["_count", "_sum", "_bucket"]
                        .iter()
                        .any(|s| f.name.ends_with(s)),
                    "gauge {} would render untyped",
                    f.name
                );
            }
            assert!(f.description.len() > 10, "{}: thin HELP", f.name);
        }
        store.register(meta).unwrap();
    }
}

#[test]
fn probe_names_and_params() {
    for name in SYSTEM_PROBES {
        let probe = native_probe(name, &toml::Table::new()).unwrap().unwrap();
        assert_eq!(probe.name(), *name);
        assert_eq!(probe.tables()[0].name, *name);
    }
    for name in SYSTEM_PROBES {
        assert!(
            crate::config::NATIVE_PROBES.contains(name),
            "{name} is accepted in the probes list"
        );
    }
    assert!(native_probe("tcp", &toml::Table::new()).unwrap().is_none());
    assert!(
        native_probe("system_foo", &toml::Table::new())
            .unwrap()
            .is_none()
    );
    let mut params = toml::Table::new();
    params.insert("devices".into(), toml::Value::from("sda"));
    let err = native_probe("system_disk", &params)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("probes[system_disk].params.devices: unknown parameter"),
        "{err}"
    );
}

#[test]
fn live_proc_collects_and_renders() {
    let mut store = Store::new(Limits {
        max_tables: 64,
        max_records: 1024,
        max_metrics: 64,
        record_timeout_ms: 0,
    });
    for meta in tables() {
        store.register(meta).unwrap();
    }
    let rows: Vec<Row> = [
        collect_live::<Meminfo>(),
        collect_live::<Vmstat>(),
        collect_live::<Tcp>(),
        collect_live::<Inode>(),
        collect_live::<Cpu>(),
        collect_live::<Disk>(),
        collect_live::<Net>(),
    ]
    .concat();
    for row in rows {
        store.upsert(row, 1).unwrap();
    }
    let mut text = String::new();
    prometheus::render(&store.snapshot(), &SelfMetrics::new(), &mut text);
    for line in [
        "# TYPE gala_gopher_system_meminfo_mem_total_bytes gauge",
        "# HELP gala_gopher_system_vmstat_pgfault_total Page faults, minor and major (events)",
        "# TYPE gala_gopher_system_tcp_active_opens_total counter",
        "# TYPE gala_gopher_system_tcp_curr_estab gauge",
        "# TYPE gala_gopher_system_inode_file_handles_max gauge",
        "# TYPE gala_gopher_system_cpu_user_seconds_total counter",
        "# TYPE gala_gopher_system_net_rx_bytes_total counter",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("gala_gopher_system_cpu_idle_seconds_total{cpu=\"cpu0\"} "));
    assert!(text.contains("gala_gopher_system_net_tx_packets_total{dev=\"lo\"} "));
}

#[test]
fn rate_limit_lets_one_through_per_period() {
    let mut r = RateLimit::new(Duration::from_hours(1));
    assert_eq!(r.allow(), Some(0));
    assert_eq!(r.allow(), None);
    assert_eq!(r.allow(), None);
    r.last = r
        .last
        .and_then(|t| t.checked_sub(Duration::from_secs(3601)));
    assert_eq!(r.allow(), Some(2));
}

/// A family whose file does not exist: every interval is an error.
struct Missing;

impl Collect for Missing {
    const TABLE: &'static str = "system_missing";
    const DESCRIPTION: &'static str = "test";
    const FIELDS: &'static [super::Field] = &[super::gauge("x", "", "a number, units")];
    const FILES: &'static [&'static str] = &["/proc/gopher-test-no-such-file"];

    fn new() -> Self {
        Self
    }

    fn collect(&mut self, _: &[String], _: &mut Vec<Row>) -> Result<(), &'static str> {
        Ok(())
    }
}

#[tokio::test]
async fn probes_run_until_stopped_and_count_errors() {
    let (tx, mut rx) = mpsc::channel(64);
    let metrics = Arc::new(SelfMetrics::new());
    // `mut` for the Manager API that takes `&mut self`; harmless where it takes `&self`.
    #[allow(unused_mut)]
    let mut manager = Manager::new(tx, Arc::clone(&metrics), Duration::from_mins(1));
    let interval = Duration::from_millis(50);
    for name in SYSTEM_PROBES {
        manager.add(
            native_probe(name, &toml::Table::new()).unwrap().unwrap(),
            interval,
        );
        manager.start(name).unwrap();
    }
    manager.add(Arc::new(SystemProbe::<Missing>::new()), interval);
    manager.start(Missing::TABLE).unwrap();

    // Two rounds of every table: each probe keeps reporting on its own interval.
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    while SYSTEM_PROBES
        .iter()
        .any(|t| seen.get(*t).copied().unwrap_or(0) < 2)
    {
        let Batch::Rows(batch) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("rows within 10 s")
            .unwrap()
        else {
            panic!("system probes send rows")
        };
        let table = batch[0].table.clone();
        assert!(
            batch.iter().all(|r| r.table == table),
            "one table per batch"
        );
        *seen.entry(table).or_default() += 1;
    }
    for name in SYSTEM_PROBES {
        assert_eq!(manager.state(name).unwrap().0, State::Running, "{name}");
    }
    // The failing probe was started last and sends no rows, so the loop above may end before its
    // second interval: wait for it on its own (bounded) instead of assuming lockstep.
    let errors = metrics.counter(PROBE_ERRORS, &[("probe", Missing::TABLE)]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while errors.get() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(interval).await;
    }
    assert!(errors.get() >= 2, "unreadable file counted every interval");
    assert_eq!(
        manager.state(Missing::TABLE).unwrap().0,
        State::Running,
        "an unreadable file does not stop the probe"
    );
    for name in SYSTEM_PROBES {
        assert_eq!(
            metrics.counter(PROBE_ERRORS, &[("probe", name)]).get(),
            0,
            "{name}"
        );
    }
    tokio::time::timeout(Duration::from_secs(5), manager.stop_all())
        .await
        .expect("probes stop promptly");
    for name in SYSTEM_PROBES {
        assert_eq!(manager.state(name).unwrap().0, State::Stopped, "{name}");
    }
}

#[tokio::test]
async fn a_full_channel_does_not_delay_stop() {
    let (tx, _rx) = mpsc::channel(1);
    // `mut` for the Manager API that takes `&mut self`; harmless where it takes `&self`.
    #[allow(unused_mut)]
    let mut manager = Manager::new(tx, Arc::new(SelfMetrics::new()), Duration::from_mins(1));
    manager.add(
        native_probe("system_meminfo", &toml::Table::new())
            .unwrap()
            .unwrap(),
        Duration::from_millis(10),
    );
    manager.start("system_meminfo").unwrap();
    // One batch fills the channel; the next send waits for room that never comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(2), manager.stop_all())
        .await
        .expect("stopped while blocked on a full channel");
    assert_eq!(manager.state("system_meminfo").unwrap().0, State::Stopped);
}

/// Lines built from the words that matter to the parsers, so that generated input reaches
/// past the first checks.
fn procish() -> impl Strategy<Value = String> {
    let word = prop::sample::select(vec![
        "cpu",
        "cpu0",
        "cpu12",
        "MemTotal:",
        "Slab:",
        "HugePages_Total:",
        "kB",
        "MB",
        "Tcp:",
        "ActiveOpens",
        "CurrEstab",
        "pgfault",
        "pgalloc_normal",
        "pgalloc_dma",
        "8",
        "0",
        "sda",
        "loop0",
        "eth0:",
        "lo:",
        "|",
        "-1",
        "18446744073709551615",
        "36028797018963968",
        "4294967296",
        "x",
        ":",
        "",
        " ",
        "\t",
        "1.5",
    ]);
    prop::collection::vec(prop::collection::vec(word, 0..24), 0..24).prop_map(|lines| {
        lines
            .iter()
            .map(|l| l.join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn all_families(texts: &[String]) {
    // Errors are fine; panics and malformed rows (checked inside) are not.
    let _ = collect_checked::<Meminfo>(texts);
    let _ = collect_checked::<Vmstat>(texts);
    let _ = collect_checked::<Tcp>(texts);
    let _ = collect_checked::<Inode>(texts);
    let _ = collect_checked::<Cpu>(texts);
    let _ = collect_checked::<Disk>(texts);
    let _ = collect_checked::<Net>(texts);
}

proptest! {
    #[test]
    fn parsers_never_panic_on_any_text(a in any::<String>(), b in any::<String>()) {
        all_families(&[a, b]);
    }

    #[test]
    fn parsers_never_panic_on_proc_like_text(a in procish(), b in procish()) {
        all_families(&[a.clone(), b]);
        // Fewer texts than files (cannot happen through Files, but must not panic either).
        all_families(&[a]);
        all_families(&[]);
    }
}
