//! The endpoint's unit tests: real sockets, an in-process store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::*;
use std::sync::Mutex;

use crate::imdb::{FieldMeta, FieldType, Limits, Row, Store, TableMeta, Value};
use crate::telemetry::{HTTP_REFUSED, SCRAPE_RENDERS, SelfMetrics};

/// One render, whole, without a server.
async fn scrape(state: &Arc<WebState>) -> String {
    let (_, mut rx) = scrape::join_or_start(state, false);
    let mut body = Vec::new();
    while let Some(chunk) = rx.recv().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(body).unwrap()
}

/// Drains a scrape's body; returns its length.
async fn drain(mut rx: tokio::sync::mpsc::Receiver<scrape::Chunk>) -> usize {
    let mut n = 0;
    while let Some(chunk) = rx.recv().await {
        n += chunk.unwrap().len();
    }
    n
}

fn state() -> Arc<WebState> {
    let mut store = Store::new(Limits {
        record_timeout_ms: 1000,
        ..Limits::default()
    });
    let fields = vec![
        FieldMeta {
            name: "k".into(),
            ty: FieldType::Key,
            description: String::new(),
        },
        FieldMeta {
            name: "g".into(),
            ty: FieldType::Gauge,
            description: "a gauge".into(),
        },
    ];
    store
        .register(TableMeta {
            name: "t".into(),
            description: String::new(),
            fields,
            max_records: None,
        })
        .unwrap();
    store
        .upsert(
            Row {
                table: "t".into(),
                values: vec!["fresh".into(), Value::F64(1.5)],
            },
            5000,
        )
        .unwrap();
    store
        .upsert(
            Row {
                table: "t".into(),
                values: vec!["stale".into(), Value::U64(2)],
            },
            0,
        )
        .unwrap();
    Arc::new(WebState::new(
        Arc::new(Mutex::new(store)),
        Arc::new(SelfMetrics::new()),
        || 5500,
    ))
}

async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (head.to_owned(), body.to_owned());
    }
    // A streamed body: strip the chunk framing.
    let (mut rest, mut out) = (body.as_bytes(), Vec::new());
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..eol]).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        rest = &rest[eol + 4 + size..];
    }
    (head.to_owned(), String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn serves_metrics_and_refuses_the_rest() {
    let listener = bind("127.0.0.1", 0).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state(), async {
        let _ = stopped.await;
    }));

    let (head, body) = request(addr, "GET", "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(
        body.contains("gala_gopher_t_g{k=\"fresh\"} 1.5\n"),
        "{body}"
    );
    assert!(!body.contains("stale"), "expired at scrape: {body}");
    assert!(body.contains("gopher_rows_dropped_total{table=\"t\",reason=\"expired\"} 1\n"));

    let (head, body) = request(addr, "GET", "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.contains("gopher_scrape_duration_seconds "),
        "second scrape reports the first"
    );
    let renders = state_of(&body, "gopher_scrape_renders_total ");

    // The landing page and the health check render nothing.
    let (head, body) = request(addr, "GET", "/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(body.contains("<a href=\"metrics\">"), "{body}");
    assert!(!body.contains("gopher_"), "{body}");
    let (head, body) = request(addr, "GET", "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok\n");
    let (head, body) = request(addr, "HEAD", "/healthz").await;
    assert!(
        head.starts_with("HTTP/1.1 200") && body.is_empty(),
        "{head}"
    );

    let (head, body) = request(addr, "HEAD", "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.is_empty());
    let (_, body) = request(addr, "GET", "/metrics").await;
    assert!(
        (state_of(&body, "gopher_scrape_renders_total ") - renders - 1.0).abs() < f64::EPSILON,
        "/, /healthz and HEAD rendered nothing"
    );

    let (head, _) = request(addr, "GET", "/nope").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = request(addr, "POST", "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("allow: get, head"),
        "{head}"
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The value of the unlabelled sample `prefix` (name and a space) in `body`.
fn state_of(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap()
        .parse()
        .unwrap()
}

// The store is held across awaits on purpose: it keeps every render waiting.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_beyond_the_cap_are_answered_503_at_once_and_counted() {
    let listener = bind("127.0.0.1", 0).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = state();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Arc::clone(&state), async {
        let _ = stopped.await;
    }));
    // While the store is held no render can take its snapshot: every body stays open.
    let store_held = state.store.lock().unwrap();
    let mut waiting = Vec::new();
    for _ in 0..MAX_SCRAPES {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        waiting.push(s);
    }
    // Once all of them hold their slots, the next one is refused.
    let taken = state.metrics.counter(SCRAPES, &[("encoding", "identity")]);
    let started = std::time::Instant::now();
    while taken.get() < MAX_SCRAPES as u64 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(taken.get(), MAX_SCRAPES as u64);
    let refused = state
        .metrics
        .counter(HTTP_REFUSED, &[("reason", "scrapes")]);
    let (head, _) = request(addr, "GET", "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert_eq!(refused.get(), 1);
    let (head, body) = request(addr, "GET", "/healthz").await;
    assert!(
        head.starts_with("HTTP/1.1 200") && body == "ok\n",
        "health is not capped"
    );
    drop(store_held);
    for mut s in waiting {
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        assert!(
            raw.starts_with("HTTP/1.1 200") && raw.contains("gala_gopher_t_g"),
            "{raw}"
        );
    }
    let (head, _) = request(addr, "GET", "/metrics").await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "slots are given back: {head}"
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[test]
fn gzip_is_taken_when_offered_with_a_weight() {
    let ok = |v: &str| accepts_gzip([&HeaderValue::from_str(v).unwrap()]);
    assert!(ok("gzip"));
    assert!(ok("br, GZIP;q=0.5"));
    assert!(ok("*"));
    assert!(!ok("gzip;q=0"));
    assert!(!ok("identity"));
    assert!(!ok("x-gzipped"));
    assert!(!accepts_gzip([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_during_a_render_share_it_and_later_ones_do_not() {
    let state = state();
    let renders = || state.metrics.counter(SCRAPE_RENDERS, &[]).get();
    let ((a, rx_a), (b, rx_b)) = {
        // The render cannot take its snapshot while the store is held: it stays in progress.
        let _held = state.store.lock().unwrap();
        (
            scrape::join_or_start(&state, false),
            scrape::join_or_start(&state, true),
        )
    };
    assert!(
        Arc::ptr_eq(&a, &b),
        "the second scrape joined the first's render"
    );
    let (plain, gzip) = tokio::join!(drain(rx_a), drain(rx_b));
    assert!(tokio::task::block_in_place(|| a.wait_done()) >= 1);
    assert!(plain > gzip && gzip > 0, "{plain} {gzip}");
    let (c, rx_c) = scrape::join_or_start(&state, false);
    assert!(!Arc::ptr_eq(&a, &c), "a finished render is not reused");
    assert!(drain(rx_c).await > 0);
    tokio::task::block_in_place(|| c.wait_done());
    assert_eq!(renders(), 2);
}

#[tokio::test]
async fn survives_a_poisoned_store() {
    let state = state();
    let store = Arc::clone(&state.store);
    let _ = std::thread::spawn(move || {
        let _guard = store.lock().unwrap();
        panic!("poison the store lock");
    })
    .join();
    assert!(state.store.is_poisoned());
    assert!(
        scrape(&state)
            .await
            .contains("gala_gopher_t_g{k=\"fresh\"} 1.5\n")
    );
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let taken = bind("127.0.0.1", 0).await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = bind("127.0.0.1", port).await.unwrap_err();
    assert!(
        format!("{err:#}").contains(&format!("127.0.0.1:{port}")),
        "{err:#}"
    );
}
