//! The `/metrics` HTTP endpoint (hyper 1, HTTP/1.1 only).
//!
//! # One render, shared and streamed
//!
//! A scrape locks the store just long enough to age out stale records, mirror its counters
//! into the self-metrics and take a snapshot (shared record bytes, no copy); the text is
//! rendered after the lock is released, on the blocking pool, in pieces of 64 KiB that are
//! gzip-compressed as they come (level 1). Only the compressed pieces are kept: the plain text
//! of a large store (800 k samples: ~140 MB) never sits in memory.
//!
//! Single flight: a scrape that arrives while a render is in progress joins it and streams the
//! same pieces from the start, however far the render has got; one that arrives after it
//! finished starts a new one (no cache: every scrape sees records at least as fresh as its
//! arrival). `gopher_scrape_renders_total` counts renders, `gopher_scrapes_total{encoding}` the
//! answers.
//!
//! With `Accept-Encoding: gzip` the compressed pieces are the body (`Content-Encoding: gzip`);
//! without, each client inflates them on its own blocking thread as it streams. `HEAD` answers
//! the headers without rendering anything.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use flate2::Compression;
use flate2::write::{GzDecoder, GzEncoder};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT_ENCODING, ALLOW, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, VARY};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use super::prometheus;
use crate::imdb::Store;
use crate::selfmetrics::{SCRAPE_DURATION, SCRAPE_RENDERS, SCRAPES, SelfMetrics, sync_from_store};

/// Connections served at once; further ones wait in the kernel's accept backlog. Scrapers
/// hold one keep-alive connection each, so this is generous.
pub const MAX_CONNECTIONS: usize = 64;
/// A client that has not sent its request headers by then is disconnected, so idle or slow
/// clients cannot pin connection slots forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight scrapes before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Compressed bytes gathered before they are published to the scrapes streaming them.
const PIECE_BYTES: usize = 32 * 1024;
/// Pieces a scrape's connection may have queued ahead of the client.
const STREAM_AHEAD: usize = 4;

/// What the endpoint reads from.
pub struct WebState {
    pub store: Arc<Mutex<Store>>,
    pub metrics: Arc<SelfMetrics>,
    /// Milliseconds on the same clock the store's records are stamped with (the agent's
    /// monotonic clock, `crate::clock::mono_ms`); used to age records out at scrape time.
    pub clock: fn() -> u64,
    /// The render in progress, if any (single flight).
    current: Mutex<Option<Arc<Render>>>,
}

impl WebState {
    pub fn new(store: Arc<Mutex<Store>>, metrics: Arc<SelfMetrics>, clock: fn() -> u64) -> Self {
        Self {
            store,
            metrics,
            clock,
            current: Mutex::new(None),
        }
    }
}

/// One render's compressed pieces, published as they are produced.
#[derive(Default)]
struct Render {
    progress: Mutex<Progress>,
    grew: Condvar,
}

#[derive(Default)]
struct Progress {
    pieces: Vec<Bytes>,
    done: bool,
}

impl Render {
    fn publish(&self, piece: Option<Bytes>, done: bool) {
        let mut p = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        p.pieces.extend(piece);
        p.done |= done;
        self.grew.notify_all();
    }

    /// Piece `i`, waiting for it; `None` once the render ended without it.
    fn piece(&self, i: usize) -> Option<Bytes> {
        let mut p = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(b) = p.pieces.get(i) {
                return Some(b.clone());
            }
            if p.done {
                return None;
            }
            p = self.grew.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The gzip stream's sink: cuts it into pieces and publishes them.
struct Publisher<'a> {
    render: &'a Render,
    buf: Vec<u8>,
}

impl std::io::Write for Publisher<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE_BYTES {
            let piece = Bytes::from(std::mem::take(&mut self.buf));
            self.render.publish(Some(piece), false);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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

type Body = BoxBody<Bytes, Infallible>;

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
        Full::new(Bytes::new()).boxed()
    } else {
        let encoding = if gzip { "gzip" } else { "identity" };
        state
            .metrics
            .counter(SCRAPES, &[("encoding", encoding)])
            .inc();
        let render = join_or_start(state);
        let (tx, rx) = mpsc::channel::<Bytes>(STREAM_AHEAD);
        tokio::task::spawn_blocking(move || stream(&render, gzip, &tx));
        let frames = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
        StreamBody::new(frames).boxed()
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(prometheus::CONTENT_TYPE));
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

/// The render in progress, or a new one started on the blocking pool.
fn join_or_start(state: &Arc<WebState>) -> Arc<Render> {
    let mut current = state.current.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(r) = current.as_ref() {
        return Arc::clone(r);
    }
    let render = Arc::new(Render::default());
    *current = Some(Arc::clone(&render));
    drop(current);
    let (state, producing) = (Arc::clone(state), Arc::clone(&render));
    tokio::task::spawn_blocking(move || produce(&state, &producing));
    render
}

/// Snapshot, render, compress, publish. Blocking.
fn produce(state: &WebState, render: &Render) {
    let started = Instant::now();
    let snapshot = {
        // A probe thread that panicked mid-upsert leaves a store that is still well-formed
        // (every mutation is a single map operation), so keep serving it.
        let mut store = state.store.lock().unwrap_or_else(PoisonError::into_inner);
        store.expire((state.clock)());
        sync_from_store(&store, &state.metrics);
        store.snapshot()
    };
    state.metrics.counter(SCRAPE_RENDERS, &[]).inc();
    let mut gz = GzEncoder::new(
        Publisher {
            render,
            buf: Vec::with_capacity(PIECE_BYTES * 2),
        },
        Compression::fast(),
    );
    let result = prometheus::render_to(&snapshot, &state.metrics, &mut gz).and_then(|()| gz.finish());
    let last = match result {
        Ok(mut publisher) => {
            let rest = std::mem::take(&mut publisher.buf);
            (!rest.is_empty()).then(|| Bytes::from(rest))
        }
        Err(err) => {
            // Writing into memory does not fail; if it ever did, the clients get a cut body.
            tracing::error!(%err, "rendering metrics failed");
            None
        }
    };
    state
        .metrics
        .gauge(SCRAPE_DURATION, &[])
        .set(started.elapsed().as_secs_f64());
    // No longer joinable before it is complete: a scrape arriving from now on renders anew.
    {
        let mut current = state.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|r| std::ptr::eq(Arc::as_ptr(r), render)) {
            *current = None;
        }
    }
    render.publish(last, true);
}

/// Sends `render`'s pieces to one client, inflated unless it takes gzip. Blocking; ends early
/// when the client goes away.
fn stream(render: &Render, gzip: bool, tx: &mpsc::Sender<Bytes>) {
    let mut inflate = (!gzip).then(|| GzDecoder::new(Vec::with_capacity(PIECE_BYTES * 32)));
    let mut i = 0;
    while let Some(piece) = render.piece(i) {
        i += 1;
        let out = match inflate.as_mut() {
            None => piece,
            Some(d) => {
                if d.write_all(&piece).is_err() {
                    return;
                }
                Bytes::from(std::mem::take(d.get_mut()))
            }
        };
        if !out.is_empty() && tx.blocking_send(out).is_err() {
            return;
        }
    }
    if let Some(d) = inflate
        && let Ok(rest) = d.finish()
        && !rest.is_empty()
    {
        let _ = tx.blocking_send(Bytes::from(rest));
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
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

    /// One render, whole and inflated, without a server.
    fn scrape(state: &WebState) -> String {
        let render = Render::default();
        produce(state, &render);
        let mut d = GzDecoder::new(Vec::new());
        let mut i = 0;
        while let Some(p) = render.piece(i) {
            d.write_all(&p).unwrap();
            i += 1;
        }
        String::from_utf8(d.finish().unwrap()).unwrap()
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
        if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
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

    /// Wait until `render` is complete; returns its pieces.
    fn pieces(render: &Render) -> usize {
        let mut i = 0;
        while render.piece(i).is_some() {
            i += 1;
        }
        i
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrapes_during_a_render_share_it_and_later_ones_do_not() {
        let state = state();
        let renders = || state.metrics.counter(SCRAPE_RENDERS, &[]).get();
        let (a, b) = {
            // The render cannot take its snapshot while the store is held: it stays in progress.
            let _held = state.store.lock().unwrap();
            (join_or_start(&state), join_or_start(&state))
        };
        assert!(Arc::ptr_eq(&a, &b), "the second scrape joined the first's render");
        assert!(tokio::task::block_in_place(|| pieces(&a)) >= 1);
        let c = join_or_start(&state);
        assert!(!Arc::ptr_eq(&a, &c), "a finished render is not reused");
        tokio::task::block_in_place(|| pieces(&c));
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
        assert!(scrape(&state).contains("gala_gopher_t_g{k=\"fresh\"} 1.5\n"));
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
