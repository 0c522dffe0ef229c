//! `[rest_api]`: gala-gopher's REST probe API (`GET`/`PUT /<probe>`), beside the gRPC channel.
//!
//! Off by default and on loopback by default (port 9999, gala-gopher's). It authenticates with
//! the control channel's bearer token (`[control] token_file`), the same rule as gRPC. It serves
//! plain HTTP unless `tls_cert`/`tls_key` are set (then HTTPS, with the TLS code of `/metrics`;
//! `tls_client_ca` also requires client certificates signed by that CA), keys spelled as in
//! `[control]`. A listener nothing protects (no control token, no client certificates of its
//! own, no `[control] insecure`) is refused, off loopback and on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::control::{Control, refuse_open_listen, tls_files};
use super::error::{DiagnosticKind, Reporter};
use super::node::{Node, TableView};
use super::switch::OnOff;
use super::web_config::{ClientAuth, TlsServer, TlsVersion};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestApi {
    pub switch: OnOff,
    pub listen: SocketAddr,
    /// Server certificate chain and key (PEM); both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// When set, clients must present a certificate signed by this CA.
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for RestApi {
    fn default() -> Self {
        Self {
            switch: OnOff::Off,
            listen: SocketAddr::from(([127, 0, 0, 1], 9999)),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl RestApi {
    /// The TLS server settings, in the shape `/metrics`' TLS code takes (TLS 1.2 and 1.3).
    pub fn tls(&self) -> Option<TlsServer> {
        let (cert, key) = (self.tls_cert.clone()?, self.tls_key.clone()?);
        Some(TlsServer {
            cert_file: cert,
            key_file: key,
            client_ca_file: self.tls_client_ca.clone(),
            client_auth: if self.tls_client_ca.is_some() {
                ClientAuth::RequireAndVerify
            } else {
                ClientAuth::None
            },
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
        })
    }
}

const KEYS: &[&str] = &["switch", "listen", "tls_cert", "tls_key", "tls_client_ca"];

pub(super) fn rest_api(
    rep: &mut Reporter<'_>,
    node: Option<&Spanned<Node>>,
    control: &Control,
    base: &Path,
) -> RestApi {
    let mut out = RestApi::default();
    let Some(t) = node.and_then(|n| TableView::of(rep, n, "rest_api".into(), KEYS, true)) else {
        return out;
    };
    if let Some((i, _)) = t.word(rep, "switch", &["on", "off"]) {
        out.switch = [OnOff::On, OnOff::Off][i];
    }
    if let Some(a) = t.socket_addr(rep, "listen", "\"127.0.0.1:9999\"") {
        out.listen = a;
    }
    (out.tls_cert, out.tls_key, out.tls_client_ca) = tls_files(rep, &t, base);
    // The control token, or client certificates of this listener's own, or `insecure`.
    let unprotected = out.switch.is_on()
        && control.token_file.is_none()
        && !control.insecure
        && out.tls_client_ca.is_none();
    refuse_open_listen(
        rep,
        &t,
        out.listen,
        unprotected,
        "Set [control] token_file (the REST API takes the same bearer token) or tls_client_ca, \
         or write [control] insecure = true to accept that",
    );
    if unprotected && out.listen.ip().is_loopback() {
        rep.report(
            &t.span,
            &t.path_of("tls_client_ca"),
            DiagnosticKind::InvalidValue,
            "the control channel has no token (it relies on client certificates), so this API \
             would let every local user switch probes: set tls_client_ca (with tls_cert and \
             tls_key), or give [control] a token_file"
                .to_owned(),
        );
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::super::web_config::ClientAuth;

    fn parse(text: &str) -> Result<super::RestApi, String> {
        crate::config::parse(text, Path::new("/etc/gopher/probes.toml"))
            .map(|c| c.rest_api)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tls_files_are_read_like_the_control_channels_and_refused_half_set() {
        let on = "[rest_api]\nswitch = \"on\"\n";
        assert_eq!(parse(on).unwrap().tls(), None);
        let t = parse(&format!(
            "{on}tls_cert = \"c.pem\"\ntls_key = \"/k.pem\"\ntls_client_ca = \"ca.pem\"\n"
        ))
        .unwrap()
        .tls()
        .unwrap();
        assert_eq!(t.cert_file, Path::new("/etc/gopher/c.pem"));
        assert_eq!(t.key_file, Path::new("/k.pem"));
        assert_eq!(t.client_auth, ClientAuth::RequireAndVerify);
        let e = parse(&format!("{on}tls_cert = \"c.pem\"\n")).unwrap_err();
        assert!(e.contains("rest_api.tls_key"), "{e}");
        let e = parse(&format!("{on}tls_client_ca = \"ca.pem\"\n")).unwrap_err();
        assert!(e.contains("rest_api.tls_client_ca"), "{e}");
    }

    #[test]
    fn without_a_token_the_api_needs_client_certificates_of_its_own() {
        // The control channel authenticates by client certificates only (no token).
        let control = "[control]\ntls_cert = \"c\"\ntls_key = \"k\"\ntls_client_ca = \"ca\"\n";
        let e = parse(&format!("{control}[rest_api]\nswitch = \"on\"\n")).unwrap_err();
        assert!(e.contains("rest_api.tls_client_ca"), "{e}");
        assert!(
            parse(&format!(
                "{control}[rest_api]\nswitch = \"on\"\ntls_cert = \"c\"\ntls_key = \"k\"\ntls_client_ca = \"ca\"\n"
            ))
            .is_ok()
        );
        // Off loopback: client certificates protect it; nothing does without them.
        assert!(
            parse(&format!(
                "{control}[rest_api]\nswitch = \"on\"\nlisten = \"0.0.0.0:9999\"\n\
                 tls_cert = \"c\"\ntls_key = \"k\"\ntls_client_ca = \"ca\"\n"
            ))
            .is_ok()
        );
        let e = parse(&format!(
            "{control}[rest_api]\nswitch = \"on\"\nlisten = \"0.0.0.0:9999\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("rest_api.listen") && e.contains("not a loopback"),
            "{e}"
        );
    }
}
