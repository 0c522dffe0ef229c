//! Serves the control channel: the probe service behind the bearer-token check
//! ([`super::auth`]), gRPC health checking and reflection, over plain HTTP/2 on loopback or TLS
//! (optionally mTLS).
//!
//! Health answers without a token: it tells no more than a TCP connect would, and load
//! balancers and Kubernetes probes cannot send one. Reflection needs the token like the service.

use std::{future::Future, net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::{StreamExt as _, wrappers::TcpListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use super::auth::{TokenCheck, ensure_token};
use super::grpc::{ProbeControlServer, Service, pb};
use crate::{config::Control, probes::Controller, telemetry::SelfMetrics};

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("control.{what}: reading {}", path.display()))
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
    let token = cfg.token_file.as_deref().map(ensure_token).transpose()?;
    let tls = tls_config(cfg)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("control.listen: cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr().context("control.listen")?;
    let auth = TokenCheck::new(token, metrics);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ProbeControlServer<Service>>().await;
    // Reflection in both versions: v1, and v1alpha, the only one many clients speak (Python's
    // grpcio-reflection, older grpcurl). Each lists the same services, both reflections included.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("building the reflection service (v1)")?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;
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
            reflection,
            auth.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection_v1alpha,
            auth,
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
