//! Serves the control channel: the probe service behind the bearer-token check, gRPC health
//! checking and reflection, over plain HTTP/2 on loopback or TLS (optionally mTLS).
//!
//! Health answers without a token: it tells no more than a TCP connect would, and load
//! balancers and Kubernetes probes cannot send one. Reflection needs the token like the service.

use std::{future::Future, net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::{StreamExt as _, wrappers::TcpListenerStream};
use tonic::{
    Request, Status,
    service::Interceptor,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};

use super::grpc::{ProbeControlServer, Service, pb};
use crate::{
    config::Control,
    probes::Controller,
    telemetry::{CONTROL_REQUESTS, Counter, SelfMetrics},
};

/// Checks `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Arc<str>>,
    refused: Counter,
}

impl TokenCheck {
    pub fn new(token: Option<String>, metrics: &SelfMetrics) -> Self {
        Self {
            token: token.map(Into::into),
            // The interceptor runs before routing: the method is not known here.
            refused: metrics.counter(
                CONTROL_REQUESTS,
                &[("method", "unknown"), ("code", "unauthenticated")],
            ),
        }
    }
}

impl TokenCheck {
    /// Checks an `authorization` header's value: the one rule for every control surface
    /// (the gRPC interceptor below, and the REST probe API in `rest.rs`). A refusal is counted.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), &'static str> {
        let Some(want) = &self.token else {
            return Ok(());
        };
        match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
            Some(got) if same(got.as_bytes(), want.as_bytes()) => Ok(()),
            Some(_) => {
                self.refused.inc();
                Err("wrong bearer token")
            }
            None => {
                self.refused.inc();
                Err("this agent requires `authorization: Bearer <token>`")
            }
        }
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.check(got)
            .map(|()| req)
            .map_err(Status::unauthenticated)
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("control.{what}: reading {}", path.display()))
}

/// The token from `token_file`: its first line, trimmed; an empty one is refused.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = String::from_utf8(read(path, "token_file")?)
        .with_context(|| format!("control.token_file: {} is not UTF-8", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("control.token_file: {} holds no token", path.display());
    }
    Ok(token)
}

fn tls_config(cfg: &Control) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Ok(None);
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        read(cert, "tls_cert")?,
        read(key, "tls_key")?,
    ));
    if let Some(ca) = &cfg.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca, "tls_client_ca")?));
    }
    Ok(Some(tls))
}

pub type Serving = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Binds (so a taken port fails the start) and returns the bound address and the serving
/// future, which ends when `shutdown` completes.
pub async fn bind(
    cfg: &Control,
    ctl: Controller,
    metrics: &Arc<SelfMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, Serving)> {
    let token = cfg.token_file.as_deref().map(read_token).transpose()?;
    let tls = tls_config(cfg)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("control.listen: cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr().context("control.listen")?;
    let auth = TokenCheck::new(token, metrics);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ProbeControlServer<Service>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .context("control: TLS settings (tls_cert, tls_key, tls_client_ca)")?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            ProbeControlServer::new(Service::new(ctl, Arc::clone(metrics))),
            auth.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection, auth,
        ));
    // Small answers must not wait for the client's delayed ACK (~40 ms) behind Nagle: tonic
    // sets TCP_NODELAY only on connections it accepts itself.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|c| {
            if let Err(e) = c.set_nodelay(true) {
                tracing::debug!("control: TCP_NODELAY not set: {e}");
            }
        })
    });
    let serving = Box::pin(async move {
        router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .context("control channel")
    });
    Ok((addr, serving))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
