//! System probes checked against /proc read independently, here, at about the same time.
//!
//! The test reads /proc itself (with its own, deliberately simple parsing) just before and
//! just after taking the probes' values. Static values must be equal; counters must lie between
//! the two reads (before ≤ value ≤ after) and never go back between scrapes.
// Values are compared exactly on purpose: they are copies of kernel numbers.
#![allow(
    clippy::float_cmp,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines
)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use common::{Agent, Sample, require};
use gopher::{
    imdb::{Batch, FieldType, Row, TableMeta},
    probes::{
        Manager,
        system::{SYSTEM_PROBES, native_probe},
    },
    telemetry::SelfMetrics,
};

// ---- Independent reads of /proc -------------------------------------------------------------

/// Everything the checks need, read once.
#[derive(Debug)]
struct Proc {
    /// /proc/meminfo, values in bytes (kB × 1024) or counts.
    meminfo: BTreeMap<String, f64>,
    vmstat: BTreeMap<String, f64>,
    /// /proc/net/snmp `Tcp:` names → values.
    tcp: BTreeMap<String, f64>,
    file_max: f64,
    /// /proc/stat cpu lines: name → ticks per column.
    cpus: BTreeMap<String, Vec<f64>>,
    /// /proc/diskstats: name → numbers after the name.
    disks: BTreeMap<String, Vec<f64>>,
    /// /proc/net/dev: interface → 16 numbers.
    devs: BTreeMap<String, Vec<f64>>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn nums(words: &[&str]) -> Vec<f64> {
    words.iter().map(|w| w.parse::<f64>().unwrap()).collect()
}

fn read_proc() -> Proc {
    let meminfo = read("/proc/meminfo")
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let v: f64 = w[1].parse().unwrap();
            let v = if w.get(2) == Some(&"kB") {
                v * 1024.0
            } else {
                v
            };
            (w[0].trim_end_matches(':').to_owned(), v)
        })
        .collect();
    let vmstat = read("/proc/vmstat")
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect();
    let snmp = read("/proc/net/snmp");
    let tcp_lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let tcp = tcp_lines[0]
        .split_whitespace()
        .zip(tcp_lines[1].split_whitespace())
        .skip(1)
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect();
    let file_nr = read("/proc/sys/fs/file-nr");
    let file_max = file_nr.split_whitespace().nth(2).unwrap().parse().unwrap();
    let cpus = read("/proc/stat")
        .lines()
        .filter(|l| l.starts_with("cpu"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].to_owned(), nums(&w[1..]))
        })
        .collect();
    let disks = read("/proc/diskstats")
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[2].to_owned(), nums(&w[3..]))
        })
        .collect();
    let devs = read("/proc/net/dev")
        .lines()
        .skip(2)
        .map(|l| {
            let (name, rest) = l.split_once(':').unwrap();
            let w: Vec<&str> = rest.split_whitespace().collect();
            (name.trim().to_owned(), nums(&w))
        })
        .collect();
    Proc {
        meminfo,
        vmstat,
        tcp,
        file_max,
        cpus,
        disks,
        devs,
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(hz > 0);
    hz as f64
}

// ---- What the probes reported, by metric name and labels ------------------------------------

/// Samples of `gala_gopher_system_*` metrics: (metric name, key label value or "") → value.
struct Reported(BTreeMap<(String, String), f64>);

impl Reported {
    fn from_samples(samples: &[Sample]) -> Self {
        Self(
            samples
                .iter()
                .filter(|s| s.name.starts_with("gala_gopher_system_"))
                .map(|s| {
                    let key = s.labels.values().next().cloned().unwrap_or_default();
                    ((s.name.clone(), key), s.value)
                })
                .collect(),
        )
    }

    /// What /metrics would show for these rows: `gala_gopher_<table>_<field>[_total]`.
    fn from_rows(rows: &[Row], metas: &[TableMeta]) -> Self {
        let mut out = BTreeMap::new();
        for row in rows {
            let meta = metas.iter().find(|m| m.name == row.table).unwrap();
            let key = meta
                .fields
                .iter()
                .zip(&row.values)
                .find(|(f, _)| f.ty == FieldType::Key)
                .map(|(_, v)| v.to_string())
                .unwrap_or_default();
            for (f, v) in meta.fields.iter().zip(&row.values) {
                if v.is_empty() || !f.ty.is_metric() {
                    continue;
                }
                let suffix = if f.ty == FieldType::Counter {
                    "_total"
                } else {
                    ""
                };
                let name = format!("gala_gopher_{}_{}{suffix}", row.table, f.name);
                out.insert((name, key.clone()), v.to_string().parse().unwrap());
            }
        }
        Self(out)
    }

    fn get(&self, metric: &str, key: &str) -> f64 {
        *self
            .0
            .get(&(format!("gala_gopher_{metric}"), key.to_owned()))
            .unwrap_or_else(|| panic!("no gala_gopher_{metric}{{{key}}} reported"))
    }

    /// Key label values reported for a table (through one of its metrics).
    fn keys(&self, metric: &str) -> BTreeSet<String> {
        let name = format!("gala_gopher_{metric}");
        self.0
            .keys()
            .filter(|(n, _)| *n == name)
            .map(|(_, k)| k.clone())
            .collect()
    }

    fn tables(&self) -> BTreeSet<String> {
        self.0
            .keys()
            .filter_map(|(n, _)| {
                let rest = n.strip_prefix("gala_gopher_")?;
                SYSTEM_PROBES
                    .iter()
                    .find(|t| rest.starts_with(&format!("{t}_")))
                    .map(|t| (*t).to_owned())
            })
            .collect()
    }
}

/// `before ≤ v ≤ after`, with `slack` on both sides.
fn between(what: &str, before: f64, v: f64, after: f64, slack: f64) {
    assert!(
        before - slack <= v && v <= after + slack,
        "{what}: reported {v}, /proc said {before} before and {after} after"
    );
}

fn unused_virtual_disk(name: &str, n: &[f64]) -> bool {
    (name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram"))
        && n[0] == 0.0
        && n[4] == 0.0
}

/// Every check against /proc, for values taken between the `before` and `after` reads.
fn check(r: &Reported, before: &Proc, after: &Proc) {
    let want: BTreeSet<String> = SYSTEM_PROBES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(r.tables(), want, "every system table reported");

    // system_meminfo: static sizes exactly; moving ones plausibly.
    let mem = |m: &str| r.get(&format!("system_meminfo_{m}"), "");
    assert_eq!(mem("mem_total_bytes"), before.meminfo["MemTotal"]);
    assert_eq!(mem("swap_total_bytes"), before.meminfo["SwapTotal"]);
    assert_eq!(mem("huge_page_size_bytes"), before.meminfo["Hugepagesize"]);
    assert!(mem("mem_free_bytes") > 0.0 && mem("mem_free_bytes") <= mem("mem_total_bytes"));
    assert!(mem("mem_available_bytes") <= mem("mem_total_bytes"));

    // system_vmstat: event counters between the two reads.
    for f in [
        "pgpgin",
        "pgpgout",
        "pswpin",
        "pswpout",
        "pgfault",
        "pgmajfault",
        "pgfree",
    ] {
        between(
            f,
            before.vmstat[f],
            r.get(&format!("system_vmstat_{f}_total"), ""),
            after.vmstat[f],
            0.0,
        );
    }
    let pgalloc = |p: &Proc| {
        p.vmstat
            .iter()
            .filter(|(k, _)| k.starts_with("pgalloc_"))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    between(
        "pgalloc",
        pgalloc(before),
        r.get("system_vmstat_pgalloc_total", ""),
        pgalloc(after),
        0.0,
    );

    // system_tcp.
    for (field, src) in [
        ("active_opens", "ActiveOpens"),
        ("passive_opens", "PassiveOpens"),
        ("attempt_fails", "AttemptFails"),
        ("estab_resets", "EstabResets"),
        ("in_segs", "InSegs"),
        ("out_segs", "OutSegs"),
        ("retrans_segs", "RetransSegs"),
        ("in_errs", "InErrs"),
        ("out_rsts", "OutRsts"),
    ] {
        between(
            field,
            before.tcp[src],
            r.get(&format!("system_tcp_{field}_total"), ""),
            after.tcp[src],
            0.0,
        );
    }
    assert!(r.get("system_tcp_curr_estab", "") >= 0.0);

    // system_inode.
    assert_eq!(r.get("system_inode_file_handles_max", ""), before.file_max);
    assert!(r.get("system_inode_file_handles_allocated", "") > 0.0);
    assert!(r.get("system_inode_nr_inodes", "") > 0.0);

    // system_cpu: the same CPUs, times in seconds between the reads. Idle and iowait get one
    // second of slack: the kernel may move them backwards a little (proc(5)).
    let hz = clock_ticks();
    assert_eq!(
        r.keys("system_cpu_user_seconds_total"),
        before.cpus.keys().cloned().collect::<BTreeSet<_>>()
    );
    for (cpu, ticks) in &before.cpus {
        for (col, mode) in [
            "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
        ]
        .iter()
        .enumerate()
        {
            let slack = if matches!(*mode, "idle" | "iowait") {
                1.0
            } else {
                1e-9
            };
            between(
                &format!("{cpu} {mode}"),
                ticks[col] / hz,
                r.get(&format!("system_cpu_{mode}_seconds_total"), cpu),
                after.cpus[cpu][col] / hz,
                slack,
            );
        }
    }

    // system_disk: every device that is not an unused loop/ram/zram device.
    let disks: BTreeSet<String> = before
        .disks
        .iter()
        .filter(|(name, n)| !unused_virtual_disk(name, n))
        .map(|(name, _)| name.clone())
        .collect();
    assert_eq!(r.keys("system_disk_reads_completed_total"), disks);
    for disk in &disks {
        let (b, a) = (&before.disks[disk], &after.disks[disk]);
        let d = |m: &str| r.get(&format!("system_disk_{m}"), disk);
        between("reads", b[0], d("reads_completed_total"), a[0], 0.0);
        between(
            "read bytes",
            b[2] * 512.0,
            d("read_bytes_total"),
            a[2] * 512.0,
            0.0,
        );
        between("writes", b[4], d("writes_completed_total"), a[4], 0.0);
        between(
            "written",
            b[6] * 512.0,
            d("written_bytes_total"),
            a[6] * 512.0,
            0.0,
        );
        between(
            "io time",
            b[9] / 1e3,
            d("io_time_seconds_total"),
            a[9] / 1e3,
            1e-9,
        );
    }

    // system_net: exactly the interfaces of /proc/net/dev.
    assert_eq!(
        r.keys("system_net_rx_bytes_total"),
        before.devs.keys().cloned().collect::<BTreeSet<_>>()
    );
    for (dev, b) in &before.devs {
        let a = &after.devs[dev];
        for (col, m) in [
            (0, "rx_bytes"),
            (1, "rx_packets"),
            (2, "rx_errs"),
            (3, "rx_dropped"),
            (8, "tx_bytes"),
            (9, "tx_packets"),
            (10, "tx_errs"),
            (11, "tx_dropped"),
        ] {
            between(
                &format!("{dev} {m}"),
                b[col],
                r.get(&format!("system_net_{m}_total"), dev),
                a[col],
                0.0,
            );
        }
    }
}

/// Counters of `later` are never below those of `earlier`.
fn monotonic(earlier: &Reported, later: &Reported) {
    for ((name, key), v) in &earlier.0 {
        if name.ends_with("_total")
            && let Some(w) = later.0.get(&(name.clone(), key.clone()))
        {
            assert!(w >= v, "{name}{{{key}}} went back from {v} to {w}");
        }
    }
}

// ---- Tests ----------------------------------------------------------------------------------

/// The probes through the library, without the agent binary: a Manager, a channel, real /proc.
#[tokio::test]
async fn probe_rows_match_proc() {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(64);
    // `mut` for the Manager API that takes `&mut self`; harmless where it takes `&self`.
    #[allow(unused_mut)]
    let mut manager = Manager::new(tx, Arc::new(SelfMetrics::new()), Duration::from_mins(1));
    let mut metas = Vec::new();
    for name in SYSTEM_PROBES {
        let probe = native_probe(name, &toml::Table::new()).unwrap().unwrap();
        metas.extend(probe.tables());
        manager.add(probe, Duration::from_millis(200));
    }
    let mut earlier: Option<Reported> = None;
    for _round in 0..2 {
        let before = read_proc();
        for name in SYSTEM_PROBES {
            manager.start(name).unwrap();
        }
        // The first batch of every table after `before`: collected between the two reads.
        let mut latest = BTreeMap::<String, Vec<Row>>::new();
        while latest.len() < SYSTEM_PROBES.len() {
            let Batch::Rows(batch) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a batch within 10 s")
                .unwrap()
            else {
                panic!("system probes send rows")
            };
            latest.entry(batch[0].table.clone()).or_insert(batch);
        }
        manager.stop_all().await;
        let after = read_proc();
        while rx.try_recv().is_ok() {}
        let rows: Vec<Row> = latest.into_values().flatten().collect();
        let reported = Reported::from_rows(&rows, &metas);
        check(&reported, &before, &after);
        if let Some(e) = &earlier {
            monotonic(e, &reported);
        }
        earlier = Some(reported);
    }
}

const CONFIG: &str = r#"
[[probes]]
name = "system_meminfo"
switch = "on"
interval = 1
[[probes]]
name = "system_vmstat"
switch = "on"
interval = 1
[[probes]]
name = "system_tcp"
switch = "on"
interval = 1
[[probes]]
name = "system_inode"
switch = "on"
interval = 1
[[probes]]
name = "system_cpu"
switch = "on"
interval = 1
[[probes]]
name = "system_disk"
switch = "on"
interval = 1
[[probes]]
name = "system_net"
switch = "on"
interval = 1
"#;

/// The real agent with only the system probes on, scraped through the reference parser.
#[test]
fn agent_metrics_match_proc() {
    if !require(
        std::process::Command::new("python3")
            .args(["-c", "import prometheus_client"])
            .status()
            .is_ok_and(|s| s.success()),
        "python3 with prometheus_client (scripts/test-deps.sh installs it)",
    ) {
        return;
    }
    let agent = Agent::start(CONFIG);
    let all_tables = |s: &[Sample]| Reported::from_samples(s).tables().len() == SYSTEM_PROBES.len();
    agent.wait_for(Duration::from_secs(20), "every system table", all_tables);

    let mut earlier: Option<Reported> = None;
    for _round in 0..2 {
        let before = read_proc();
        // Longer than one interval plus ingestion: every record on /metrics is now from a
        // collection made after `before`.
        std::thread::sleep(Duration::from_millis(2500));
        let samples = agent.scrape().unwrap();
        let after = read_proc();
        let reported = Reported::from_samples(&samples);
        check(&reported, &before, &after);
        if let Some(e) = &earlier {
            monotonic(e, &reported);
        }
        earlier = Some(reported);

        for name in SYSTEM_PROBES {
            let running = samples.iter().any(|s| {
                s.name == "gopher_probe_state"
                    && s.label("probe") == *name
                    && s.label("state") == "running"
                    && s.value == 1.0
            });
            assert!(running, "{name} is running");
            let errors = samples
                .iter()
                .find(|s| s.name == "gopher_probe_errors_total" && s.label("probe") == *name)
                .map_or(0.0, |s| s.value);
            assert_eq!(errors, 0.0, "{name} had errors");
        }
    }

    // HELP text comes from the field descriptions, units included.
    let raw = agent.raw();
    for help in [
        "# HELP gala_gopher_system_meminfo_mem_total_bytes Usable RAM",
        "# HELP gala_gopher_system_cpu_user_seconds_total Time spent in user mode",
        "# HELP gala_gopher_system_disk_read_bytes_total Data read, bytes",
    ] {
        assert!(raw.contains(help), "missing {help:?}");
    }
    promtool_clean(&raw);
}

/// `promtool check metrics` accepts the exposition without a single lint (names, units,
/// counter suffixes).
fn promtool_clean(exposition: &str) {
    let have = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(have, "promtool (scripts/test-deps.sh installs it)") {
        return;
    }
    let (ok, said) = common::promtool_check(exposition);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}
