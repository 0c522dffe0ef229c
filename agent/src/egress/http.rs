//! The `/metrics` HTTP endpoint (hyper 1, HTTP/1.1 only).
//!
//! A scrape locks the store just long enough to age out stale records, mirror its counters into
//! the self-metrics and take a snapshot; rendering happens after the lock is released. The
//! whole scrape runs on the blocking pool because the store sits behind a `std` mutex that
//! probes also take, and rendering a large store is CPU work.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::prometheus;
use crate::imdb::Store;
use crate::selfmetrics::{SCRAPE_DURATION, SelfMetrics, sync_from_store};

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
    /// Milliseconds on the same clock the probes pass to [`Store::upsert`]; used to age
    /// records out at scrape time. Normally [`unix_now_ms`].
    pub clock: fn() -> u64,
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
            let service = service_fn(move |req| handle(Arc::clone(&state), req));
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

async fn handle(
    state: Arc<WebState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !matches!(req.uri().path(), "/" | "/metrics") {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        ));
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed\n",
        );
        resp.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return Ok(resp);
    }
    match tokio::task::spawn_blocking(move || scrape(&state)).await {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(prometheus::CONTENT_TYPE),
            );
            Ok(resp)
        }
        Err(err) => {
            tracing::error!(%err, "rendering metrics failed");
            Ok(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering metrics failed\n",
            ))
        }
    }
}

fn scrape(state: &WebState) -> String {
    let started = Instant::now();
    let snapshot = {
        // A probe thread that panicked mid-upsert leaves a store that is still well-formed
        // (every mutation is a single map operation), so keep serving it.
        let mut store = state.store.lock().unwrap_or_else(PoisonError::into_inner);
        store.expire((state.clock)());
        sync_from_store(&store, &state.metrics);
        store.snapshot()
    };
    let mut out = String::new();
    prometheus::render(&snapshot, &state.metrics, &mut out);
    state
        .metrics
        .gauge(SCRAPE_DURATION, &[])
        .set(started.elapsed().as_secs_f64());
    out
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;
    use crate::imdb::{FieldMeta, FieldType, Limits, Row, TableMeta};

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
            })
            .unwrap();
        store
            .upsert(
                Row {
                    table: "t".into(),
                    values: vec!["fresh".into(), "1.5".into()],
                },
                5000,
            )
            .unwrap();
        store
            .upsert(
                Row {
                    table: "t".into(),
                    values: vec!["stale".into(), "2".into()],
                },
                0,
            )
            .unwrap();
        Arc::new(WebState {
            store: Arc::new(Mutex::new(store)),
            metrics: Arc::new(SelfMetrics::new()),
            clock: || 5500,
        })
    }

    async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
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
