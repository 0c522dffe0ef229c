//! The `/metrics` HTTP endpoint (hyper 1, HTTP/1.1 only), with `/healthz` and a landing page.
//!
//! A GET's body streams from a render on the blocking pool, shared by the scrapes that arrive
//! together and kept in bounded pieces (`super::scrape`). With `Accept-Encoding: gzip` the body
//! is gzip-compressed (`Content-Encoding: gzip`). `HEAD`, `/healthz` and `/` render nothing.
//!
//! # Held under abuse
//!
//! Idle or slow clients must not keep Prometheus (or the kubelet's probes) out:
//! - connections are accepted at once, up to [`MAX_CONNECTIONS`] open (more are closed at
//!   once); it is concurrent `/metrics` bodies that are capped ([`MAX_SCRAPES`], as
//!   node_exporter's `--web.max-requests`): one more is answered 503 with `Retry-After`;
//! - a client has [`HEADER_READ_TIMEOUT`] to send its request headers, also between the
//!   requests of a keep-alive connection;
//! - a response whose writes make no progress for [`WRITE_TIMEOUT`] (the client stopped
//!   reading) is cut, and so is a `/metrics` body still streaming after
//!   [`RESPONSE_DEADLINE`] (a client reading a trickle).
//!
//! Each of these refusals and cuts counts in `gopher_http_refused_total{reason}`.
//!
//! # TLS and basic auth
//!
//! With `[web_server] web_config_file` (exporter-toolkit's file): the TLS handshake happens in
//! the connection's task, within [`HEADER_READ_TIMEOUT`]; basic auth answers 401 with
//! `WWW-Authenticate` to every path but `/healthz` ([`secure`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{
    ACCEPT, ACCEPT_ENCODING, ALLOW, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue,
    RETRY_AFTER, VARY, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::prometheus;
use super::scrape;
pub use super::scrape::{MAX_SCRAPES, WebState};
use crate::telemetry::SCRAPES;

mod guard;
mod secure;

pub use secure::{Security, acceptor as tls_acceptor};

/// Connections open at once; one more is closed as soon as it is accepted. Each costs a file
/// and a small task, and idle ones go after [`HEADER_READ_TIMEOUT`].
pub const MAX_CONNECTIONS: usize = 1024;
/// A client that has not sent its request headers by then is disconnected, so idle or slow
/// clients cannot pin connections.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A response whose writes are blocked this long (the client reads nothing) is cut.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A `/metrics` body still streaming after this is cut (800 k samples take about a second).
pub const RESPONSE_DEADLINE: Duration = Duration::from_mins(1);
/// How long shutdown waits for in-flight scrapes before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The landing page at `/`.
const LANDING: &str = "<!DOCTYPE html>\n<html><head><title>gopher</title></head><body>\n\
    <h1>gopher</h1>\n<p>Node agent: TCP links and probe tables as Prometheus metrics.</p>\n\
    <ul><li><a href=\"metrics\">Metrics</a></li><li><a href=\"healthz\">Health</a></li></ul>\n\
    </body></html>\n";

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
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Accept first: a connection waiting in the kernel's backlog could not even be timed
        // out.
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
        let Ok(slot) = Arc::clone(&open).try_acquire_owned() else {
            state.refused("connections").inc();
            drop(stream);
            continue;
        };
        // A streamed body goes out a piece at a time: without this the tail of each piece
        // can wait for the client's delayed ACK (as Go's net/http, set on every connection).
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %err, "cannot set TCP_NODELAY on a metrics connection");
        }
        let state = Arc::clone(&state);
        let stop = stop_rx.clone();
        connections.spawn(async move {
            let _slot = slot;
            let io =
                guard::WriteTimeout::new(stream, WRITE_TIMEOUT, state.refused("write_timeout"));
            match state.security.tls.clone() {
                None => serve_connection(io, state, stop, peer).await,
                Some(tls) => {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(io)).await {
                        Ok(Ok(io)) => serve_connection(io, state, stop, peer).await,
                        Ok(Err(err)) => {
                            state.refused("tls_handshake").inc();
                            tracing::debug!(%peer, %err, "metrics TLS handshake failed");
                        }
                        Err(_) => state.refused("tls_handshake").inc(),
                    }
                }
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

/// One connection, plain or TLS, until it ends or the server stops.
async fn serve_connection<I>(
    io: I,
    state: Arc<WebState>,
    mut stop: watch::Receiver<()>,
    peer: std::net::SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeouts = state.refused("header_timeout");
    let service = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(respond(&state, &req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        if err.is_timeout() {
            header_timeouts.inc();
        }
        tracing::debug!(%peer, %err, "metrics connection ended with an error");
    }
}

/// Basic auth first (when configured; `/healthz` is open), then [`handle`].
async fn respond(state: &Arc<WebState>, req: &Request<Incoming>) -> Response<Body> {
    if let Some(users) = &state.security.users
        && req.uri().path() != "/healthz"
        && !users
            .allow(req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes))
            .await
    {
        state.refused("unauthorized").inc();
        let mut resp = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"gopher\", charset=\"UTF-8\""),
        );
        return resp;
    }
    handle(state, req)
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
    let path = req.uri().path();
    if !matches!(path, "/" | "/metrics" | "/healthz") {
        return text(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed\n",
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let head = *req.method() == Method::HEAD;
    let mut resp = match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/" => {
            let mut resp = Response::new(full(Bytes::from_static(LANDING.as_bytes())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        _ => metrics(state, req, head),
    };
    if head {
        *resp.body_mut() = empty();
    }
    resp
}

/// `/metrics`: the headers, and unless `head` the body of a (shared) render.
fn metrics(state: &Arc<WebState>, req: &Request<Incoming>, head: bool) -> Response<Body> {
    let gzip = accepts_gzip(req.headers().get_all(ACCEPT_ENCODING));
    let format = prometheus::Format::negotiate(
        req.headers()
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let body = if head {
        empty()
    } else {
        let Ok(slot) = Arc::clone(&state.scrapes).try_acquire_owned() else {
            state.refused("scrapes").inc();
            let mut resp = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many scrapes in progress; retry\n",
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        };
        let encoding = if gzip { "gzip" } else { "identity" };
        state
            .metrics
            .counter(SCRAPES, &[("encoding", encoding)])
            .inc();
        let (_, rx) = scrape::join_or_start_as(state, gzip, format);
        let cut = state.refused("deadline");
        StreamBody::new(guard::ScrapeBody::new(rx, RESPONSE_DEADLINE, cut, slot)).boxed()
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    // The format follows Accept (text or OpenMetrics).
    headers.append(VARY, HeaderValue::from_static("Accept"));
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

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests;
