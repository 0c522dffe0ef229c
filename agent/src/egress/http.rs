//! The `/metrics` HTTP endpoint (hyper 1, HTTP/1.1 only).
//!
//! A GET's body streams from a render on the blocking pool, shared by the scrapes that arrive
//! together and kept in bounded pieces (`super::scrape`). With `Accept-Encoding: gzip` the body
//! is gzip-compressed (`Content-Encoding: gzip`). `HEAD` answers the headers without rendering
//! anything.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT_ENCODING, ALLOW, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, VARY};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use super::{prometheus, scrape};
use crate::imdb::Store;
use crate::telemetry::{SCRAPES, SelfMetrics};

/// Connections served at once; further ones wait in the kernel's accept backlog. Scrapers
/// hold one keep-alive connection each, so this is generous.
pub const MAX_CONNECTIONS: usize = 64;
/// A client that has not sent its request headers by then is disconnected, so idle or slow
/// clients cannot pin connection slots forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight scrapes before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the endpoint reads from.
pub struct WebState {
    pub store: Arc<Mutex<Store>>,
    pub metrics: Arc<SelfMetrics>,
    /// Milliseconds on the same clock the store's records are stamped with (the agent's
    /// monotonic clock, `crate::clock::mono_ms`); used to age records out at scrape time.
    pub clock: fn() -> u64,
    /// The render scrapes can join, if any (single flight).
    pub(super) current: scrape::Current,
}

impl WebState {
    pub fn new(store: Arc<Mutex<Store>>, metrics: Arc<SelfMetrics>, clock: fn() -> u64) -> Self {
        Self {
            store,
            metrics,
            clock,
            current: scrape::Current::default(),
        }
    }
}

/// Binds the listening socket; `addr` is an IP address or a host name.
pub async fn bind(addr: &str, port: u16) -> anyhow::Result<TcpListener> {
    let shown = if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    };
    TcpListener::bind((addr, port))
        .await
        .with_context(|| format!("cannot listen for Prometheus scrapes on {shown}"))
}

/// Serves until `shutdown` completes, then lets in-flight requests finish (for a short grace
/// period) and returns.
pub async fn serve(
    listener: TcpListener,
    state: Arc<WebState>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.context("connection limiter closed")?,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Typically EMFILE or a connection reset before accept: transient, and
                    // retrying at once would spin.
                    tracing::warn!(%err, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let state = Arc::clone(&state);
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                std::future::ready(Ok::<_, Infallible>(handle(&state, &req)))
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "metrics connection ended with an error");
            }
        });
    }
    drop(stop_tx);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.abort_all();
    }
    Ok(())
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}

/// Answers at once: a GET's body streams from a render on the blocking pool.
fn handle(state: &Arc<WebState>, req: &Request<Incoming>) -> Response<Body> {
    if !matches!(req.uri().path(), "/" | "/metrics") {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed\n",
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let gzip = accepts_gzip(req.headers().get_all(ACCEPT_ENCODING));
    let body = if *req.method() == Method::HEAD {
        empty()
    } else {
        let encoding = if gzip { "gzip" } else { "identity" };
        state
            .metrics
            .counter(SCRAPES, &[("encoding", encoding)])
            .inc();
        let (_, rx) = scrape::join_or_start(state, gzip);
        StreamBody::new(ReceiverStream::new(rx).map(|chunk| chunk.map(Frame::data))).boxed()
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(prometheus::CONTENT_TYPE),
    );
    headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

/// Whether an `Accept-Encoding` lists gzip (or `*`) with a non-zero weight.
fn accepts_gzip<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f64>().ok())
                .unwrap_or(1.0);
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && q > 0.0
        })
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;
    use crate::imdb::{FieldMeta, FieldType, Limits, Row, TableMeta, Value};
    use crate::telemetry::SCRAPE_RENDERS;

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

        let (head, body) = request(addr, "GET", "/").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            body.contains("gopher_scrape_duration_seconds "),
            "second scrape reports the first"
        );

        let (head, body) = request(addr, "HEAD", "/metrics").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.is_empty());

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
}
