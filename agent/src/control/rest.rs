//! gala-gopher's REST probe API (`[rest_api]`): `GET /<probe>` shows a probe, `PUT /<probe>`
//! switches it and sets its params. A thin adapter like the gRPC service: it converts the
//! request and calls the probe controller (`crate::probes::Controller`), the same apply path.
//!
//! Bodies as gala-gopher takes them: form-style `json=<JSON>` (what `curl -d json='{…}'`
//! sends), or the JSON alone. `state` is `running` (switch on) or `stopped` (switch off);
//! `params` replaces the probe's params (an extension probe's is `{"param": "<args>"}`).
//! gala-gopher's `cmd` and `snoopers` have no meaning here and are ignored, which the answer
//! says. Status codes are gala-gopher's: 200 with "New config takes effect", 400 with the
//! reason for a bad body or value, 404 for an unknown probe, 405 for other methods; 401 when
//! the bearer token (the control channel's, checked by its [`TokenCheck`]) is missing or wrong.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::auth::TokenCheck;
use crate::probes::Controller;
use crate::probes::manager::View;
use crate::probes::settings::{Change, ControlError, Params, Switch};
use crate::telemetry::{CONTROL_REQUESTS, SelfMetrics};

/// gala-gopher's limit for a PUT body.
const MAX_BODY: usize = 1024 * 1024;
/// Request headers must arrive within this, as on `/metrics`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = Response<Full<Bytes>>;

/// Binds `listen` (a taken port fails the start) and serves, over TLS when `tls` is given,
/// until `shutdown` turns true.
pub async fn serve(
    listen: SocketAddr,
    tls: Option<TlsAcceptor>,
    ctl: Controller,
    auth: TokenCheck,
    metrics: Arc<SelfMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("rest_api.listen: cannot listen on {listen}"))?;
    let addr = listener.local_addr().context("rest_api.listen")?;
    let auth = Arc::new(auth);
    let task = tokio::spawn(async move {
        loop {
            let (io, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!("rest_api: accept: {e}");
                        continue;
                    }
                },
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let (ctl, auth, metrics) = (ctl.clone(), Arc::clone(&auth), Arc::clone(&metrics));
            let tls = tls.clone();
            tokio::spawn(async move {
                let Some(tls) = tls else {
                    return connection(io, ctl, auth, metrics).await;
                };
                match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(io)).await {
                    Ok(Ok(io)) => connection(io, ctl, auth, metrics).await,
                    Ok(Err(e)) => {
                        count_tls_refused(&metrics);
                        tracing::debug!("rest_api: TLS handshake: {e}");
                    }
                    Err(_) => count_tls_refused(&metrics),
                }
            });
        }
    });
    Ok((addr, task))
}

/// A failed or too slow TLS handshake: `gopher_control_requests_total{method="rest_tls",
/// code="tls_handshake"}` (no request was read, so no method of its own).
fn count_tls_refused(metrics: &SelfMetrics) {
    metrics
        .counter(
            CONTROL_REQUESTS,
            &[("method", "rest_tls"), ("code", "tls_handshake")],
        )
        .inc();
}

/// One connection, plain or TLS, until it ends.
async fn connection<I>(io: I, ctl: Controller, auth: Arc<TokenCheck>, metrics: Arc<SelfMetrics>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let (ctl, auth, metrics) = (ctl.clone(), Arc::clone(&auth), Arc::clone(&metrics));
        async move {
            let method = if req.method() == Method::PUT {
                "rest_put"
            } else {
                "rest_get"
            };
            let r = handle(&ctl, &auth, req).await;
            count(&metrics, method, r.status());
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!("rest_api: connection: {e}");
    }
}

/// Every answer counts in `gopher_control_requests_total{method="rest_get"|"rest_put",code}`,
/// beside the gRPC calls (a token refusal is counted by the token check, as for gRPC).
fn count(metrics: &SelfMetrics, method: &str, status: StatusCode) {
    let code = match status {
        StatusCode::OK => "ok",
        StatusCode::BAD_REQUEST => "invalid_argument",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "unimplemented",
        StatusCode::UNAUTHORIZED => return,
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "internal",
    };
    metrics
        .counter(CONTROL_REQUESTS, &[("method", method), ("code", code)])
        .inc();
}

fn reply(status: StatusCode, text: impl Into<Bytes>, json: bool) -> Reply {
    let mut r = Response::new(Full::new(text.into()));
    *r.status_mut() = status;
    let ty = if json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    r.headers_mut()
        .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(ty));
    r
}

fn refused(e: &ControlError) -> Reply {
    let status = match e {
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Invalid { .. } => StatusCode::BAD_REQUEST,
        ControlError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    reply(status, e.to_string(), false)
}

async fn handle(ctl: &Controller, auth: &TokenCheck, req: Request<Incoming>) -> Reply {
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(why) = auth.authorize(token) {
        return reply(StatusCode::UNAUTHORIZED, why.to_string(), false);
    }
    let name = req.uri().path().trim_start_matches('/').to_owned();
    if name.is_empty() || name.contains('/') {
        return reply(StatusCode::NOT_FOUND, "no such probe: use /<probe>", false);
    }
    match *req.method() {
        Method::GET => match ctl.get(&name) {
            Ok(view) => reply(StatusCode::OK, shown(&view).to_string(), true),
            Err(e) => refused(&e),
        },
        Method::PUT => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        format!("put data unreadable or larger than {MAX_BODY} bytes: {e}"),
                        false,
                    );
                }
            };
            let (change, ignored) = match change_of(&body) {
                Ok(c) => c,
                Err(why) => return reply(StatusCode::BAD_REQUEST, why, false),
            };
            match ctl.set(&name, &change).await {
                Ok(_) if ignored.is_empty() => {
                    reply(StatusCode::OK, "New config takes effect", false)
                }
                Ok(_) => reply(
                    StatusCode::OK,
                    format!("New config takes effect (ignored: {})", ignored.join(", ")),
                    false,
                ),
                Err(e) => refused(&e),
            }
        }
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and PUT are allowed",
            false,
        ),
    }
}

/// A probe as `GET /<probe>` shows it.
fn shown(view: &View) -> Value {
    let state = if view.settings.switch == Switch::Off {
        "stopped"
    } else {
        "running"
    };
    let params = match &view.settings.params {
        Params::Native(t) => serde_json::to_value(t).unwrap_or(Value::Null),
        Params::Extension(p) => json!({ "param": p }),
    };
    json!({
        "probe": view.name,
        "state": state,
        "switch": format!("{:?}", view.settings.switch).to_lowercase(),
        "interval": view.settings.interval.as_secs(),
        "params": params,
        "status": format!("{:?}", view.status),
    })
}

/// The change a PUT body asks for, and the gala-gopher keys it ignores.
fn change_of(body: &[u8]) -> Result<(Change, Vec<String>), String> {
    let text = std::str::from_utf8(body).map_err(|_| "put data is not UTF-8".to_owned())?;
    let text = text.trim();
    let json = match text.strip_prefix("json=") {
        Some(j) => j,
        None if text.starts_with('{') => text,
        None => return Err("put data must start with json= (or be a JSON object)".to_owned()),
    };
    let value: Value =
        serde_json::from_str(json).map_err(|e| format!("put data is not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("put data must be a JSON object".to_owned());
    };
    let mut change = Change::default();
    let mut ignored = Vec::new();
    for (key, v) in obj {
        match key.as_str() {
            "state" => {
                change.switch = Some(match v.as_str() {
                    Some("running") => Switch::On,
                    Some("stopped") => Switch::Off,
                    _ => {
                        return Err(format!(
                            "state: expected \"running\" or \"stopped\", found {v}"
                        ));
                    }
                });
            }
            "params" => {
                let table: toml::Table = serde_json::from_value(v)
                    .map_err(|e| format!("params: expected an object of values: {e}"))?;
                change.params = Some(table);
            }
            _ => ignored.push(key),
        }
    }
    if change.switch.is_none() && change.params.is_none() {
        return Err("put data has neither state nor params".to_owned());
    }
    Ok((change, ignored))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_as_gala_gopher_sends_them() {
        let (c, ignored) =
            change_of(br#"json={"cmd":{"probe":["tcp_abnormal"]},"state":"stopped"}"#).unwrap();
        assert_eq!(c.switch, Some(Switch::Off));
        assert_eq!(ignored, ["cmd"]);
        let (c, _) = change_of(br#"{"state":"running","params":{"max_links":5000}}"#).unwrap();
        assert_eq!(c.switch, Some(Switch::On));
        assert_eq!(c.params.unwrap()["max_links"].as_integer(), Some(5000));
        assert!(change_of(b"state=running").unwrap_err().contains("json="));
        assert!(
            change_of(br#"json={"state":"paused"}"#)
                .unwrap_err()
                .contains("state")
        );
        assert!(change_of(b"json={").unwrap_err().contains("not valid JSON"));
        assert!(change_of(br#"json={"params":{"a":null}}"#).is_err());
        assert!(
            change_of(br#"json={"snoopers":{}}"#)
                .unwrap_err()
                .contains("neither")
        );
    }
}
