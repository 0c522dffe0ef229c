//! Extension probe runtime, end to end: the real agent runs small probe scripts written here,
//! and /metrics (read with the reference parser) and /proc show what happened. Intervals are
//! set small through `[supervision]` so the whole file runs in well under a minute.
// Counters are compared exactly on purpose: they must be exact.
#![allow(
    clippy::float_cmp,
    clippy::too_many_lines,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;
// Start checks and the auto probes they start, beside this file in extension/.
#[path = "extension/start_checks.rs"]
mod start_checks;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{Agent, Sample};

const WAIT: Duration = Duration::from_secs(15);

/// Fast supervision for tests: restart after 1 s, then 2 s; failed after 3 quick failures;
/// start checks every second with a 1 s timeout.
const SUPERVISION: &str = r"
[supervision]
restart_backoff = 1
restart_backoff_max = 2
max_quick_failures = 3
stop_grace = 2
start_check_interval = 1
start_check_timeout = 1
";

/// key host, key port, label kind, unknown note, counter requests, gauge load.
const META: &str = r#"
[[tables]]
name = "ext_demo"
description = "extension probe test table"
fields = [
    { name = "host", type = "key" },
    { name = "port", type = "key" },
    { name = "kind", type = "label" },
    { name = "note", type = "unknown" },
    { name = "requests", type = "counter", description = "requests served" },
    { name = "load", type = "gauge", description = "current load" },
]
"#;

struct Scripts {
    dir: tempfile::TempDir,
}

impl Scripts {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("demo.toml"), META).unwrap();
        Scripts { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes an executable sh script; returns its path.
    fn sh(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    }

    fn meta(&self) -> String {
        self.path("demo.toml").display().to_string()
    }

    /// An `[[extend_probes]]` entry.
    fn probe(&self, name: &str, command: &Path, extra: &str) -> String {
        format!(
            "[[extend_probes]]\nname = \"{name}\"\ncommand = \"{}\"\nmeta = \"{}\"\n{extra}\n",
            command.display(),
            self.meta()
        )
    }
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
}

fn state_is(samples: &[Sample], probe: &str, state: &str) -> bool {
    value(
        samples,
        "gopher_probe_state",
        &[("probe", probe), ("state", state)],
    ) == Some(1.0)
}

fn rejected(samples: &[Sample], probe: &str, reason: &str) -> f64 {
    value(
        samples,
        "gopher_probe_rows_rejected_total",
        &[("probe", probe), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

/// The process with this pid is gone, or a zombie nobody reaped (this container's init does
/// not reap orphans): either way it no longer runs.
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("");
        state == "Z" || state == "X"
    })
}

fn wait_until(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_pid(path: &Path) -> u32 {
    let mut text = String::new();
    wait_until(&format!("{}", path.display()), WAIT, || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.ends_with('\n')
    });
    text.trim().parse().unwrap()
}

fn rss_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn rows_arrive_with_exact_values_and_empty_values_keep_their_columns() {
    let s = Scripts::new();
    let good = s.sh(
        "good.sh",
        "echo starting\nwhile :; do\n  printf '|ext_demo|h1|80|web|n|42|1.5|\\n'\n  \
         printf '|ext_demo|h2||||7||\\n'\n  sleep 0.3\ndone",
    );
    let agent = Agent::start(&format!(
        "{SUPERVISION}{}",
        s.probe("good", &good, "switch = \"on\"")
    ));
    let samples = agent.wait_for(WAIT, "rows of the good probe", |x| {
        value(x, "gala_gopher_ext_demo_requests_total", &[("host", "h2")]).is_some()
            && value(x, "gala_gopher_ext_demo_load", &[("host", "h1")]).is_some()
    });
    let h1 = [("host", "h1"), ("port", "80"), ("kind", "web")];
    assert_eq!(
        value(&samples, "gala_gopher_ext_demo_requests_total", &h1),
        Some(42.0)
    );
    assert_eq!(value(&samples, "gala_gopher_ext_demo_load", &h1), Some(1.5));
    // h2: port, kind and note empty, requests 7, load empty. With gala-gopher's token skipping
    // the 7 would have become the port; here it stays a request count and load has no sample.
    let h2: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.name.starts_with("gala_gopher_ext_demo_") && x.label("host") == "h2")
        .collect();
    assert_eq!(h2.len(), 1, "{h2:?}");
    assert_eq!(h2[0].name, "gala_gopher_ext_demo_requests_total");
    assert_eq!(h2[0].value, 7.0);
    assert_eq!((h2[0].label("port"), h2[0].label("kind")), ("", ""));
    assert!(state_is(&samples, "good", "running"));
    assert!(value(&samples, "gopher_probe_rows_total", &[("probe", "good")]).unwrap() >= 2.0);
    // "starting" is not a row: ignored, counted.
    assert_eq!(
        value(
            &samples,
            "gopher_probe_lines_ignored_total",
            &[("probe", "good")]
        ),
        Some(1.0)
    );
    for reason in ["malformed", "field_count", "bad_value", "unknown_table"] {
        assert_eq!(rejected(&samples, "good", reason), 0.0, "{reason}");
    }
    let text = agent.raw();
    assert!(
        text.contains("# HELP gala_gopher_ext_demo_requests_total requests served\n"),
        "{text}"
    );
}

#[test]
fn a_crashing_probe_is_restarted_with_backoff_then_failed_and_others_carry_on() {
    let s = Scripts::new();
    let counter = s.path("runs");
    let crash = s.sh(
        "crash.sh",
        &format!(
            "date +%s.%N >> {}\nprintf '|ext_demo|c|1|x|y|1|1|\\n'\necho 'boom: no service' >&2\nexit 3",
            counter.display()
        ),
    );
    let good = s.sh(
        "good.sh",
        "i=0\nwhile :; do i=$((i+1)); printf '|ext_demo|g|1|x|y|%d|1|\\n' $i; sleep 0.2; done",
    );
    let agent = Agent::start(&format!(
        "{SUPERVISION}{}{}",
        s.probe("crash", &crash, "switch = \"on\""),
        s.probe("good", &good, "switch = \"on\"")
    ));
    let started = Instant::now();
    let samples = agent.wait_for(WAIT, "crash probe failed", |x| {
        state_is(x, "crash", "failed")
    });
    // Three runs: at 0, after 1 s, after 2 more seconds; then it stays failed.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(
        value(
            &samples,
            "gopher_probe_restarts_total",
            &[("probe", "crash")]
        ),
        Some(2.0)
    );
    let info: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.name == "gopher_probe_last_failure_info" && x.label("probe") == "crash")
        .collect();
    assert_eq!(info.len(), 1);
    assert_eq!(
        info[0].label("reason"),
        "exited with status 3; last stderr line: boom: no service"
    );
    let runs: Vec<f64> = std::fs::read_to_string(&counter)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(runs.len(), 3, "{runs:?}");
    let (gap1, gap2) = (runs[1] - runs[0], runs[2] - runs[1]);
    // Lower bounds are the back-off; upper bounds leave room for a loaded CI machine.
    assert!((0.9..3.0).contains(&gap1), "first back-off {gap1}");
    assert!((1.9..4.5).contains(&gap2), "second back-off {gap2}");
    assert!(gap2 > gap1 + 0.5, "back-off doubles: {gap1} then {gap2}");
    // Rows it printed before dying were taken.
    assert_eq!(
        value(
            &samples,
            "gala_gopher_ext_demo_requests_total",
            &[("host", "c")]
        ),
        Some(1.0)
    );
    // The neighbour was never disturbed: running, never restarted, rows still moving.
    assert!(state_is(&samples, "good", "running"));
    assert_eq!(
        value(
            &samples,
            "gopher_probe_restarts_total",
            &[("probe", "good")]
        ),
        Some(0.0)
    );
    let before = value(
        &samples,
        "gala_gopher_ext_demo_requests_total",
        &[("host", "g")],
    )
    .unwrap();
    agent.wait_for(WAIT, "good probe still reporting", |x| {
        value(x, "gala_gopher_ext_demo_requests_total", &[("host", "g")])
            .is_some_and(|v| v > before)
    });
    // Failed stays failed: no further runs.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap().lines().count(),
        3
    );
}

#[test]
fn garbage_lines_are_counted_per_reason_and_good_rows_still_land() {
    let s = Scripts::new();
    let garbage = s.sh(
        "garbage.sh",
        "echo 'hello, not a row'\n\
         printf '|ext_demo|onlyone|\\n'\n\
         printf '|no_such_table|a|\\n'\n\
         printf '|ext_demo|b|1|x|y|lots|1|\\n'\n\
         printf '|ext_demo|b|1|x|y|1|1\\n'\n\
         printf '|ext_demo|\\377|1|x|y|1|1|\\n'\n\
         printf '|ext_demo|'; head -c 20000 /dev/zero | tr '\\0' x; echo '|'\n\
         printf '|ext_demo|ok|1|x|y|5|2|\\n'\n\
         exec sleep 1000",
    );
    let agent = Agent::start(&format!(
        "{SUPERVISION}{}",
        s.probe("garbage", &garbage, "switch = \"on\"")
    ));
    let samples = agent.wait_for(WAIT, "good row after garbage", |x| {
        value(x, "gala_gopher_ext_demo_requests_total", &[("host", "ok")]).is_some()
    });
    assert_eq!(
        value(
            &samples,
            "gala_gopher_ext_demo_requests_total",
            &[("host", "ok")]
        ),
        Some(5.0)
    );
    assert_eq!(
        value(&samples, "gala_gopher_ext_demo_load", &[("host", "ok")]),
        Some(2.0)
    );
    for (reason, n) in [
        ("field_count", 1.0),
        ("unknown_table", 1.0),
        ("bad_value", 1.0),
        ("malformed", 1.0),
        ("not_utf8", 1.0),
        ("too_long", 1.0),
    ] {
        assert_eq!(rejected(&samples, "garbage", reason), n, "{reason}");
    }
    assert_eq!(
        value(
            &samples,
            "gopher_probe_lines_ignored_total",
            &[("probe", "garbage")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "gopher_probe_rows_total", &[("probe", "garbage")]),
        Some(1.0)
    );
    // Only the good row reached the table.
    let hosts: Vec<&str> = samples
        .iter()
        .filter(|x| x.name == "gala_gopher_ext_demo_requests_total")
        .map(|x| x.label("host"))
        .collect();
    assert_eq!(hosts, ["ok"]);
    assert!(state_is(&samples, "garbage", "running"));
    assert_eq!(
        value(
            &samples,
            "gopher_probe_restarts_total",
            &[("probe", "garbage")]
        ),
        Some(0.0)
    );
}

#[test]
fn a_flooding_probe_cannot_grow_the_agents_memory() {
    let s = Scripts::new();
    // As fast as the pipe goes: short rows, and one endless line with no newline at all.
    let rows = s.sh("rows.sh", "exec yes '|ext_demo|f|1|x|y|1|1|'");
    let endless = s.sh("endless.sh", "exec tr '\\0' x < /dev/zero");
    let agent = Agent::start(&format!(
        "{SUPERVISION}{}{}",
        s.probe("rows", &rows, "switch = \"on\""),
        s.probe("endless", &endless, "switch = \"on\"")
    ));
    let pid = agent_pid(&agent);
    let baseline = rss_kib(pid, "VmRSS:");
    let start = Instant::now();
    let mut first_rows = None;
    while start.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(500));
        if first_rows.is_none()
            && let Ok(x) = agent.scrape()
        {
            first_rows = value(&x, "gopher_probe_rows_total", &[("probe", "rows")]);
        }
    }
    let samples = agent.scrape().unwrap();
    let peak = rss_kib(pid, "VmHWM:");
    eprintln!("agent RSS: {baseline} KiB at start, peak {peak} KiB after 6 s of flooding");
    assert!(peak < 64 * 1024, "agent peak RSS {peak} KiB");
    let taken = value(&samples, "gopher_probe_rows_total", &[("probe", "rows")]).unwrap();
    assert!(taken > 10_000.0, "the flood was read: {taken} rows");
    assert!(taken > first_rows.unwrap_or(0.0), "and kept being read");
    // The endless line is one over-long line, discarded as it streams.
    assert_eq!(rejected(&samples, "endless", "too_long"), 1.0);
    assert!(state_is(&samples, "rows", "running") && state_is(&samples, "endless", "running"));
    // One key, one record: the table did not grow either.
    assert_eq!(
        value(&samples, "gopher_imdb_records", &[("table", "ext_demo")]),
        Some(1.0)
    );
}

/// The agent is the process whose command line names the test's config directory.
fn agent_pid(agent: &Agent) -> u32 {
    let config = agent.dir.path().join("probes.toml");
    let needle = config.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == needle.as_bytes()))
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "gopher")
        })
        .expect("the agent's process")
}

#[test]
fn check_config_reads_the_meta_files_of_extension_probes() {
    let s = Scripts::new();
    std::fs::write(
        s.path("bad.toml"),
        "[[tables]]\nname = \"t\"\nfields = [{ name = \"x\", type = \"gague\" }]\n",
    )
    .unwrap();
    let cfg = s.path("probes.toml");
    std::fs::write(
        &cfg,
        "[[extend_probes]]\nname = \"p\"\ncommand = \"true\"\nswitch = \"off\"\nmeta = \"bad.toml\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gopher"))
        .arg("--check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:3:", s.path("bad.toml").display())) && err.contains("gague"),
        "{err}"
    );
}
