//! Store and /metrics at scale, in process: N synthetic `tcp_link` records (default 100 000,
//! i.e. 800 000 samples) through the real store, renderer and HTTP endpoint.
//!
//! ```text
//! cargo run --release -p gopher --example store_bench -- 100000
//! ```
//!
//! Prints: store RSS per record, snapshot time, plain render time and bytes, a gzip scrape
//! and a plain scrape over HTTP (time, bytes on the wire), 4 concurrent gzip scrapes (time,
//! renders), and the process's peak RSS (VmHWM). Figures, not a test: run on a quiet machine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gopher::egress::{http, prometheus};
use gopher::imdb::{Batch, Limits, Store, Value};
use gopher::probes::tcp;
use gopher::telemetry::{SCRAPE_RENDERS, SelfMetrics};

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn row(i: u32) -> Vec<Value> {
    let client = IpAddr::V4(Ipv4Addr::new(127, 1, (i >> 8) as u8, i as u8));
    vec![
        Value::from(1000 + i % 50),
        Value::from((i % 2) as u8),
        Value::from(client.to_string()),
        Value::from("127.0.0.1"),
        Value::from(10_000 + (i % 1000) as u16),
        Value::from(2_u8),
        Value::from(4_026_531_840_u64),
        Value::from(format!("loadgen{}", i % 50)),
        Value::from(1_u64),
        Value::from(u64::from(i) * 1000),
        Value::from(u64::from(i) * 700),
        Value::from(u64::from(i) * 3),
        Value::from(u64::from(i) * 2),
        Value::from(u64::from(i % 7)),
        Value::from(0_u64),
        Value::from(50 + u64::from(i % 100)),
        Value::from(1_764_000_000_000_u64),
    ]
}

/// GET /metrics with raw HTTP/1.1 (Connection: close); returns the bytes on the wire.
fn get(port: u16, gzip: bool) -> usize {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let enc = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: b\r\n{enc}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0; 1 << 16];
    let mut total = 0;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return total;
        }
        total += n;
    }
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rss0 = status_kib("VmRSS:");
    let mut store = Store::new(Limits {
        max_records: 1 << 22,
        ..Limits::default()
    });
    let mut meta = tcp::table_meta(&tcp::policy::Policy::default());
    meta.max_records = None;
    store.register(meta).unwrap();
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(4096) {
        store.apply(
            Batch::TableDelta {
                table: tcp::TABLE.into(),
                upserts: chunk.iter().map(|&i| row(i)).collect(),
                removed: Vec::new(),
                refresh_rest: false,
                replace: false,
                more: false,
            },
            1,
        );
    }
    let ingest = t.elapsed();
    let rss1 = status_kib("VmRSS:");
    println!(
        "records {n}: ingest {:.0} ms, store RSS {} KiB = {} B/record",
        ingest.as_secs_f64() * 1e3,
        rss1 - rss0,
        (rss1 - rss0) * 1024 / u64::from(n)
    );
    let t = Instant::now();
    let snap = store.snapshot();
    println!("snapshot {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let metrics = SelfMetrics::new();
    render_in_process(&snap, &metrics);
    drop(snap);

    let metrics = Arc::new(metrics);
    let store = Arc::new(Mutex::new(store));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state = Arc::new(http::WebState::new(
        Arc::clone(&store),
        Arc::clone(&metrics),
        || 1,
    ));
    let port = runtime.block_on(async {
        let l = http::bind("127.0.0.1", 0).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(http::serve(l, state, std::future::pending()));
        port
    });
    for gzip in [true, false] {
        let t = Instant::now();
        let bytes = get(port, gzip);
        println!(
            "scrape over HTTP gzip={gzip}: {:.0} ms, {bytes} bytes on the wire",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let renders = || metrics.counter(SCRAPE_RENDERS, &[]).get();
    let before = renders();
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| get(port, true));
        }
    });
    println!(
        "4 concurrent gzip scrapes: {:.0} ms, {} render(s)",
        t.elapsed().as_secs_f64() * 1e3,
        renders() - before
    );
    println!(
        "peak RSS (VmHWM) {} KiB, RSS now {} KiB",
        status_kib("VmHWM:"),
        status_kib("VmRSS:")
    );
}

struct CountingSink(usize);

impl std::io::Write for CountingSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders with the default naming and with gala-gopher's, interleaved, 3 rounds each, and
/// prints the medians (the default naming's cost must not change with the option).
fn render_in_process(snap: &gopher::imdb::Snapshot, metrics: &SelfMetrics) {
    // Default naming and gala-gopher naming, interleaved, 3 rounds each: medians.
    let gala = prometheus::Naming::GalaGopher {
        machine_id: "3d1219c7c4c5404aaa1f6d2a48adfda4-192.0.2.2".into(),
    };
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut bytes = [0; 2];
    for _ in 0..3 {
        for (i, naming) in [&prometheus::Naming::Gopher, &gala].into_iter().enumerate() {
            let mut sink = CountingSink(0);
            let t = Instant::now();
            prometheus::render_to(snap, metrics, naming, &mut sink).unwrap();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
            bytes[i] = sink.0;
        }
    }
    for (i, what) in ["plain", "plain, gala-gopher names"].iter().enumerate() {
        times[i].sort_by(f64::total_cmp);
        println!(
            "render {what} (in process) median {:.0} ms of 3, {} bytes",
            times[i][1], bytes[i]
        );
    }
}
