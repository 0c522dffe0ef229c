//! Shared and direct renders, with a store many render chunks long.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::time::Duration;

use super::*;
use crate::imdb::{FieldMeta, FieldType, Limits, Row, Store, TableMeta, Value};
use crate::telemetry::SelfMetrics;

/// A store whose text is many render chunks long.
fn big_state(rows: usize) -> Arc<WebState> {
    let mut store = Store::new(Limits {
        max_records: rows,
        record_timeout_ms: 0,
        ..Limits::default()
    });
    let field = |name: &str, ty| FieldMeta {
        name: name.into(),
        ty,
        description: String::new(),
    };
    store
        .register(TableMeta {
            name: "t".into(),
            description: String::new(),
            fields: vec![field("k", FieldType::Key), field("g", FieldType::Gauge)],
            max_records: None,
        })
        .unwrap();
    for i in 0..rows {
        let row = Row {
            table: "t".into(),
            values: vec![format!("key-{i}").into(), Value::U64(i as u64)],
        };
        store.upsert(row, 1).unwrap();
    }
    Arc::new(WebState::new(
        Arc::new(Mutex::new(store)),
        Arc::new(SelfMetrics::new()),
        || 2,
    ))
}

async fn body(mut rx: mpsc::Receiver<Chunk>, pause: Duration) -> Vec<u8> {
    tokio::time::sleep(pause).await;
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_render_gives_everyone_the_same_body_however_late_or_slow() {
    let state = big_state(20_000);
    let renders = || state.metrics.counter(SCRAPE_RENDERS, &[]).get();
    let ((a, rx_fast), (b, rx_slow), (c, rx_gzip)) = {
        let _held = state.store.lock().unwrap();
        (
            join_or_start(&state, false),
            join_or_start(&state, false),
            join_or_start(&state, true),
        )
    };
    assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&a, &c));
    // The slow one reads nothing for longer than the render waits for it: it falls behind
    // and goes on from the kept pieces, skipping what it already had.
    let slow = tokio::spawn(body(rx_slow, KEEP_UP * 5));
    let gzip = tokio::spawn(body(rx_gzip, Duration::ZERO));
    let mut rx_fast = rx_fast;
    let mut fast = rx_fast.recv().await.unwrap().unwrap().to_vec();
    // Joins while the render is still held up by the slow scrape.
    let (d, rx_late) = join_or_start(&state, false);
    assert!(
        Arc::ptr_eq(&a, &d),
        "a scrape during a shared render joins it"
    );
    let late = tokio::spawn(body(rx_late, Duration::ZERO));
    fast.extend(body(rx_fast, Duration::ZERO).await);
    let text = String::from_utf8(fast.clone()).unwrap();
    assert!(text.len() > 500_000, "{}", text.len());
    assert!(text.contains("gala_gopher_t_g{k=\"key-19999\"} 19999\n"));
    assert!(
        text.contains("# HELP gopher_build_info"),
        "the self-metrics close the body"
    );
    assert!(
        slow.await.unwrap() == fast,
        "the slow scrape's body differs"
    );
    assert!(
        gunzip(&gzip.await.unwrap()) == fast,
        "the gzip body differs"
    );
    assert!(
        late.await.unwrap() == fast,
        "the late scrape's body differs"
    );
    assert_eq!(renders(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_plain_scrape_is_rendered_directly_and_stops_when_the_client_goes() {
    let state = big_state(20_000);
    let (a, mut rx) = join_or_start(&state, false);
    let first = rx.recv().await.unwrap().unwrap();
    assert!(first.starts_with(b"# HELP gala_gopher_t_g "));
    assert!(
        state.current.lock().joinable.iter().all(Option::is_none),
        "a direct render is not joinable"
    );
    assert!(
        a.lock().pieces.is_empty(),
        "a direct render keeps nothing (and compresses nothing)"
    );
    drop(rx);
    tokio::task::block_in_place(|| a.wait_done());
    let (b, rx) = join_or_start(&state, false);
    assert!(!Arc::ptr_eq(&a, &b));
    let text = String::from_utf8(body(rx, Duration::ZERO).await).unwrap();
    assert!(text.contains("gala_gopher_t_g{k=\"key-19999\"} 19999\n"));
    assert!(
        text.contains("gopher_scrape_renders_total 2\n"),
        "renders counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_gzip_scrape_is_compressed_on_the_way_and_keeps_nothing() {
    let state = big_state(20_000);
    let (a, rx) = join_or_start(&state, true);
    let gz = body(rx, Duration::ZERO).await;
    tokio::task::block_in_place(|| a.wait_done());
    assert!(a.lock().pieces.is_empty(), "nothing kept");
    let text = String::from_utf8(gunzip(&gz)).unwrap();
    assert!(gz.len() * 3 < text.len(), "{} of {}", gz.len(), text.len());
    assert!(text.contains("gala_gopher_t_g{k=\"key-19999\"} 19999\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_during_a_direct_render_starts_a_shared_one() {
    // Text well beyond what a direct render queues ahead of its client (STREAM_AHEAD pieces of
    // DIRECT_PLAIN_PIECE): it must still be running when the second scrape arrives.
    let state = big_state(100_000);
    let renders = || state.metrics.counter(SCRAPE_RENDERS, &[]).get();
    // Not read yet: the direct render waits for its client, in progress.
    let (a, mut rx_a) = join_or_start(&state, false);
    let first = rx_a.recv().await.unwrap().unwrap();
    let (b, rx_b) = join_or_start(&state, true);
    assert!(!Arc::ptr_eq(&a, &b), "a direct render cannot be joined");
    let gz = body(rx_b, Duration::ZERO).await;
    tokio::task::block_in_place(|| b.wait_done());
    {
        let b = b.lock();
        assert!(
            b.shared && !b.pieces.is_empty(),
            "shared: joinable, pieces kept"
        );
    }
    let mut plain = first.to_vec();
    plain.extend(body(rx_a, Duration::ZERO).await);
    let tables = |t: Vec<u8>| {
        let t = String::from_utf8(t).unwrap();
        t[..t.find("# HELP gopher_").unwrap()].to_owned()
    };
    assert_eq!(
        tables(plain),
        tables(gunzip(&gz)),
        "same tables in both renders"
    );
    assert_eq!(renders(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_that_panics_cuts_its_scrapes_and_the_next_one_renders_anew() {
    let state = Arc::new(WebState::new(
        Arc::new(Mutex::new(Store::new(Limits::default()))),
        Arc::new(SelfMetrics::new()),
        || panic!("a clock that fails: the render panics before its snapshot"),
    ));
    for _ in 0..2 {
        let (render, mut rx) = join_or_start(&state, false);
        assert!(
            rx.recv().await.unwrap().is_err(),
            "cut, not a short body that looks whole"
        );
        tokio::task::block_in_place(|| render.wait_done());
        assert!(
            state.current.lock().joinable.iter().all(Option::is_none),
            "not left joinable"
        );
    }
}
