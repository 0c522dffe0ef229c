//! The table store and /metrics at the agent's edges, end to end: records age out with nobody
//! scraping, gzip answers parse like plain ones, concurrent scrapes share a render, HEAD renders
//! nothing. Extension probes written here fill the store; the reference parser
//! (prometheus_client, via support/scrape.py) reads /metrics.
#![allow(
    clippy::float_cmp,
    clippy::too_many_lines,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Agent, Sample};

/// Concurrent scrapes in `concurrent_scrapes_share_one_render`.
const N: usize = 6;

/// key k, counter n, gauge g.
const META: &str = r#"
[[tables]]
name = "st_demo"
description = "store test table"
fields = [
    { name = "k", type = "key" },
    { name = "n", type = "counter", description = "a count" },
    { name = "g", type = "gauge", description = "a level" },
]
"#;

struct Probe {
    dir: tempfile::TempDir,
}

impl Probe {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("st.toml"), META).unwrap();
        Probe { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An `[[extend_probes]]` entry running the sh script `body`.
    fn config(&self, body: &str, extra: &str) -> String {
        let script = self.path("probe.sh");
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        format!(
            "{extra}\n[[extend_probes]]\nname = \"st\"\ncommand = \"{}\"\nmeta = \"{}\"\nswitch = \"on\"\n",
            script.display(),
            self.path("st.toml").display()
        )
    }
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
}

fn wait_for_file(path: &Path, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A sample as the reference parser read it: name, labels, value (as JSON text).
type Parsed = (String, Vec<(String, String)>, String);

/// The samples of one scrape through the reference parser, asking for gzip or not.
fn parsed(agent: &Agent, gzip: bool) -> Vec<Parsed> {
    let mut cmd = Command::new("python3");
    cmd.arg(common::support("scrape.py")).arg(agent.url());
    if gzip {
        cmd.arg("gzip");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "scrape.py (gzip={gzip}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let labels = v["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            (
                v["name"].as_str().unwrap().to_owned(),
                labels,
                v["value"].to_string(),
            )
        })
        .collect()
}

/// GET or HEAD with curl; returns (headers, body bytes).
fn curl(agent: &Agent, args: &[&str]) -> (String, Vec<u8>) {
    let headers = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("curl")
        .args(["-s", "-D"])
        .arg(headers.path())
        .args(args)
        .arg(agent.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    (std::fs::read_to_string(headers.path()).unwrap(), out.stdout)
}

fn renders(agent: &Agent) -> f64 {
    let (_, body) = curl(agent, &[]);
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("gopher_scrape_renders_total "))
        .unwrap_or_else(|| panic!("no renders counter in\n{text}"))
        .parse()
        .unwrap()
}

/// A Kafka-only node (nobody scrapes) with a cap of 4 records: the first wave of keys must age
/// out on its own so that the second wave fits. Without ageing outside scrapes, the second
/// wave would be refused (record_limit) for good.
#[test]
fn records_age_out_without_any_scrape() {
    let p = Probe::new();
    let marker = p.path("wave2");
    // Wave 1: a1..a4 for 1 s. Then silence past the 1 s record timeout. Then wave 2: b1..b4,
    // printed on and on; the marker says wave 2 has been printed for a while.
    let body = format!(
        "for i in 1 2 3 4 5; do\n  for k in a1 a2 a3 a4; do printf '|st_demo|%s|1|2|\\n' $k; done\n  sleep 0.2\ndone\n\
         sleep 3\n\
         n=0\nwhile :; do\n  for k in b1 b2 b3 b4; do printf '|st_demo|%s|1|2|\\n' $k; done\n  \
         n=$((n+1)); [ $n -eq 10 ] && touch {}\n  sleep 0.2\ndone",
        marker.display()
    );
    let config = p.config(&body, "[imdb]\nmax_records_num = 4\nrecord_timeout = 1\n");
    let agent = Agent::start(&config);
    // No scrape from here until the end: only the probe's own marker is watched.
    wait_for_file(&marker, Duration::from_secs(30));
    let samples = agent.scrape().unwrap();
    let keys: BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.name == "gala_gopher_st_demo_n_total")
        .map(|s| s.label("k"))
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["b1", "b2", "b3", "b4"]),
        "second wave present, first gone"
    );
    let dropped = |reason| {
        value(
            &samples,
            "gopher_rows_dropped_total",
            &[("table", "st_demo"), ("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(dropped("record_limit"), 0.0, "nothing refused");
    assert_eq!(dropped("expired"), 4.0, "the first wave aged out");
    assert_eq!(
        value(&samples, "gopher_imdb_records", &[("table", "st_demo")]),
        Some(4.0)
    );
}

/// `Accept-Encoding: gzip` gets a gzip body that the reference parser reads as the same samples
/// as the plain one; HEAD answers with the headers and renders nothing.
#[test]
fn gzip_scrape_parses_like_the_plain_one_and_head_renders_nothing() {
    let p = Probe::new();
    let body = "while :; do\n  for k in x1 x2 x3; do printf '|st_demo|%s|42|1.50|\\n' $k; done\n  \
                printf '|st_demo|x4|7|-2.5e3|\\n'\n  sleep 0.2\ndone";
    let agent = Agent::start(&p.config(body, ""));
    agent.wait_for(Duration::from_secs(15), "rows", |s| {
        value(s, "gala_gopher_st_demo_g", &[("k", "x4")]).is_some()
    });
    let ours = |v: Vec<Parsed>| -> Vec<_> {
        v.into_iter()
            .filter(|s| s.0.starts_with("gala_gopher_st_demo"))
            .collect()
    };
    let plain = ours(parsed(&agent, false));
    let gz = ours(parsed(&agent, true));
    assert_eq!(plain.len(), 8, "{plain:?}");
    assert_eq!(plain, gz);
    // Numbers were parsed once at ingest and written back: 1.50 as 1.5, -2.5e3 as -2500.
    let (_, text) = curl(&agent, &[]);
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("gala_gopher_st_demo_g{k=\"x1\"} 1.5\n"),
        "{text}"
    );
    assert!(
        text.contains("gala_gopher_st_demo_g{k=\"x4\"} -2500\n"),
        "{text}"
    );
    assert!(
        text.contains("gala_gopher_st_demo_n_total{k=\"x4\"} 7\n"),
        "{text}"
    );

    let (headers, raw) = curl(&agent, &["-H", "Accept-Encoding: gzip"]);
    let lower = headers.to_ascii_lowercase();
    assert!(lower.contains("content-encoding: gzip"), "{headers}");
    assert!(lower.contains("vary: accept-encoding"), "{headers}");
    assert_eq!(&raw[..2], &[0x1f, 0x8b], "gzip magic");
    let (headers, _) = curl(&agent, &["-H", "Accept-Encoding: gzip;q=0"]);
    assert!(
        !headers.to_ascii_lowercase().contains("content-encoding"),
        "{headers}"
    );

    let before = renders(&agent);
    for _ in 0..3 {
        let (headers, body) = curl(&agent, &["-I"]);
        assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");
        assert!(body.is_empty() || body.starts_with(b"HTTP/1.1 200"));
    }
    assert_eq!(renders(&agent), before + 1.0, "HEAD rendered nothing");
}

/// Scrapes that arrive while a render is in progress share it: a store big enough that a
/// render takes a while, 6 scrapes at once, fewer than 6 renders, and identical bodies.
#[test]
fn concurrent_scrapes_share_one_render() {
    let p = Probe::new();
    // 60 000 records (120 000 samples), printed once; the probe then stays quiet.
    let body = "awk 'BEGIN { for (i = 0; i < 60000; i++) printf \"|st_demo|key%06d|%d|%d|\\n\", i, i, i }'\nexec sleep 600";
    let agent = Agent::start(&p.config(
        body,
        "[imdb]\nmax_records_num = 100000\nrecord_timeout = 600\n",
    ));
    agent.wait_for(Duration::from_mins(1), "the whole store", |s| {
        value(s, "gopher_imdb_records", &[("table", "st_demo")]) == Some(60000.0)
    });
    let before = renders(&agent);
    let barrier = std::sync::Barrier::new(N);
    let bodies: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (agent, barrier) = (&agent, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let args: &[&str] = if i % 2 == 0 {
                        &["-H", "Accept-Encoding: gzip", "--compressed"]
                    } else {
                        &[]
                    };
                    curl(agent, args).1
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let after = renders(&agent);
    // `after` counts its own render too.
    let shared = after - before - 1.0;
    assert!(
        shared >= 1.0 && shared < N as f64,
        "{N} concurrent scrapes took {shared} renders"
    );
    for b in &bodies {
        assert!(b.len() > 5_000_000, "a whole body: {} bytes", b.len());
    }
    // Scrapes that shared a render got the same bytes, gzip or not.
    let distinct: BTreeSet<&Vec<u8>> = bodies.iter().collect();
    assert!(
        distinct.len() as f64 <= shared,
        "{} bodies, {shared} renders",
        distinct.len()
    );
}
