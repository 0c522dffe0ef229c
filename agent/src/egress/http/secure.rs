//! TLS and basic auth for the metrics endpoint, from the exporter-toolkit web configuration
//! file (`crate::config::WebConfig`).
//!
//! TLS: rustls (ring), the TLS stack the control channel already links. Certificate and key are
//! read at start and again when either file changes (checked at each handshake, as
//! exporter-toolkit reads them per handshake): a renewed certificate (cert-manager, certbot)
//! is served from the next connection on, with no restart; a renewal caught half-written, or a
//! broken one, keeps the last good pair served and is logged. Basic auth: bcrypt hashes as
//! in exporter-toolkit; a bcrypt check costs tens of milliseconds by design, so it runs on the
//! blocking pool, two at a time, and a password that verified is remembered for its user (a
//! scraper pays once, not every 15 s; a flood of wrong passwords waits its turn and does not
//! delay the scraper). An unknown user is checked against a dummy hash, so the answer takes as
//! long as for a known one. `/healthz` needs no password: it tells no more than a connect, and
//! kubelet probes carry none.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use anyhow::Context as _;
use base64::Engine as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        crypto::CryptoProvider,
        server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
        sign::CertifiedKey,
    },
};

use crate::{
    config::{ClientAuth, TlsServer, TlsVersion, WebConfig},
    telemetry::{Counter, SelfMetrics, WEB_TLS_RELOADS},
};

/// bcrypt checks running at once (each takes a blocking-pool thread for tens of ms).
const CONCURRENT_CHECKS: usize = 2;
/// Hash of a password nobody has, checked for unknown users so that they cost the same.
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// What the web configuration file asks for; the default serves plain HTTP to anyone.
#[derive(Default)]
pub struct Security {
    pub tls: Option<TlsAcceptor>,
    pub users: Option<Arc<Users>>,
}

impl Security {
    /// `metrics` counts the certificate reloads.
    pub fn from_config(cfg: &WebConfig, metrics: &SelfMetrics) -> anyhow::Result<Self> {
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| acceptor(t, metrics))
            .transpose()
            .context("web_config_file: tls_server_config")?;
        let users = (!cfg.basic_auth_users.is_empty()).then(|| {
            Arc::new(Users {
                hashes: cfg.basic_auth_users.clone(),
                verified: Mutex::new(HashMap::new()),
                checks: Semaphore::new(CONCURRENT_CHECKS),
            })
        });
        Ok(Self { tls, users })
    }
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate in it", path.display());
    }
    Ok(certs)
}

/// The TLS acceptor for `t` (its certificate re-read when the files change); also the REST
/// API's (`[rest_api] tls_cert`).
pub fn acceptor(t: &TlsServer, metrics: &SelfMetrics) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (t.min_version..=t.max_version).contains(v))
    .map(|(_, v)| v)
    .collect();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .context("TLS versions")?;
    let builder = match (t.client_auth, &t.client_ca_file) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(ca)? {
                roots
                    .add(cert)
                    .with_context(|| format!("client_ca_file {}", ca.display()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = if auth == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().context("client_ca_file")?)
        }
    };
    let files = CertFiles::load(&t.cert_file, &t.key_file, provider)?.counted(metrics);
    let mut config = builder.with_cert_resolver(Arc::new(files));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What identifies a version of a file: a renewal changes at least one of these.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// The server certificate and key, read again when either file changes.
#[derive(Debug)]
struct CertFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    /// The stamps last read (good or not: a bad pair is not re-read until it changes) and the
    /// pair served.
    current: Mutex<((Stamp, Stamp), Arc<CertifiedKey>)>,
    /// Reloads that took, and that were refused.
    reloaded: Counter,
    refused: Counter,
}

impl CertFiles {
    fn load(
        cert_file: &Path,
        key_file: &Path,
        provider: Arc<CryptoProvider>,
    ) -> anyhow::Result<Self> {
        let stamps = (stamp(cert_file), stamp(key_file));
        let pair = read_pair(cert_file, key_file, &provider)?;
        Ok(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            provider,
            current: Mutex::new((stamps, pair)),
            reloaded: Counter::default(),
            refused: Counter::default(),
        })
    }

    fn counted(self, metrics: &SelfMetrics) -> Self {
        Self {
            reloaded: metrics.counter(WEB_TLS_RELOADS, &[("result", "ok")]),
            refused: metrics.counter(WEB_TLS_RELOADS, &[("result", "error")]),
            ..self
        }
    }

    /// The pair to serve: re-read first if a file changed since the last read.
    fn get(&self) -> Arc<CertifiedKey> {
        let stamps = (stamp(&self.cert_file), stamp(&self.key_file));
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.0 != stamps {
            current.0 = stamps;
            match read_pair(&self.cert_file, &self.key_file, &self.provider) {
                Ok(pair) => {
                    self.reloaded.inc();
                    tracing::info!(cert_file = %self.cert_file.display(), "metrics TLS certificate reloaded");
                    current.1 = pair;
                }
                Err(err) => {
                    self.refused.inc();
                    tracing::warn!(
                        cert_file = %self.cert_file.display(),
                        err = format!("{err:#}"),
                        "metrics TLS certificate or key changed but cannot be used; serving the previous ones"
                    );
                }
            }
        }
        Arc::clone(&current.1)
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// A certificate chain and its key, checked to belong together.
fn read_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("key_file {}", key_file.display()))?;
    let pair = CertifiedKey::from_der(certs(cert_file)?, key, provider)
        .context("cert_file and key_file")?;
    Ok(Arc::new(pair))
}

/// `basic_auth_users`: who may read the endpoint.
pub struct Users {
    hashes: BTreeMap<String, String>,
    /// The password that last verified, per user.
    verified: Mutex<HashMap<String, Vec<u8>>>,
    checks: Semaphore,
}

impl Users {
    /// Whether an `Authorization: Basic …` header names a user and the right password.
    pub async fn allow(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return false;
        };
        let known = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&user)
            // In time independent of where the first difference is.
            .is_some_and(|p| bool::from(p.ct_eq(&password)));
        if known {
            return true;
        }
        let hash = self
            .hashes
            .get(&user)
            .map_or(DUMMY_HASH, String::as_str)
            .to_owned();
        let exists = self.hashes.contains_key(&user);
        let Ok(_turn) = self.checks.acquire().await else {
            return false;
        };
        let pw = password.clone();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(&pw, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
            && exists;
        if ok {
            self.verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(user, password);
        }
        ok
    }
}

/// `Basic base64(user:password)` → (user, password).
fn credentials(header: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, rest) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(raw[..colon].to_vec()).ok()?;
    Some((user, raw[colon + 1..].to_vec()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn basic(user: &str, pw: &str) -> Vec<u8> {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        format!("Basic {b}").into_bytes()
    }

    #[tokio::test]
    async fn only_the_right_password_of_a_known_user_passes() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let cfg = WebConfig {
            tls: None,
            basic_auth_users: [("prom".to_owned(), hash)].into(),
        };
        let users = Security::from_config(&cfg, &SelfMetrics::new())
            .unwrap()
            .users
            .unwrap();
        assert!(users.allow(Some(&basic("prom", "s3cret"))).await);
        // Again, from the remembered password.
        assert!(users.allow(Some(&basic("prom", "s3cret"))).await);
        assert!(!users.allow(Some(&basic("prom", "wrong"))).await);
        assert!(!users.allow(Some(&basic("eve", "s3cret"))).await);
        assert!(!users.allow(Some(b"Bearer x")).await);
        assert!(!users.allow(None).await);
        assert!(DUMMY_HASH.parse::<bcrypt::HashParts>().is_ok());
    }
}
