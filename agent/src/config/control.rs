//! `[control]`: the gRPC control channel a central manager toggles probes through.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::{DiagnosticKind, Reporter};
use super::node::{Node, TableView};
use super::switch::OnOff;

/// Loopback only by default: switching probes is an administrative act, and opening it to the
/// network is a decision the operator writes down (TLS, a token, or `insecure = true`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8889";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub switch: OnOff,
    pub listen: SocketAddr,
    /// Server certificate chain and key (PEM); both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    /// File whose first line is the bearer token every call must carry.
    pub token_file: Option<PathBuf>,
    /// Allows a non-loopback listener with neither TLS nor a token.
    pub insecure: bool,
    /// Where runtime changes are kept so they survive a restart; `None`: not kept.
    pub state_file: Option<PathBuf>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            switch: OnOff::On,
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8889))),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            token_file: None,
            insecure: false,
            state_file: None,
        }
    }
}

impl Control {
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }
}

const KEYS: &[&str] = &[
    "switch",
    "listen",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "token_file",
    "insecure",
    "state_file",
];

pub(super) fn control(
    rep: &mut Reporter<'_>,
    node: Option<&Spanned<Node>>,
    base: &Path,
) -> Control {
    let mut out = Control::default();
    let Some(t) = node.and_then(|n| TableView::of(rep, n, "control".into(), KEYS, true)) else {
        return out;
    };
    if let Some((i, _)) = t.word(rep, "switch", &["on", "off"]) {
        out.switch = [OnOff::On, OnOff::Off][i];
    }
    if let Some(a) = t.socket_addr(rep, "listen", "\"127.0.0.1:8889\" or \"[::1]:8889\"") {
        out.listen = a;
    }
    let path = |rep: &mut Reporter<'_>, key: &str| {
        t.string(rep, key)
            .filter(|(s, _)| !s.is_empty())
            .map(|(s, _)| base.join(s))
    };
    out.tls_cert = path(rep, "tls_cert");
    out.tls_key = path(rep, "tls_key");
    out.tls_client_ca = path(rep, "tls_client_ca");
    out.token_file = path(rep, "token_file");
    out.state_file = path(rep, "state_file");
    if let Some(node) = t.get("insecure") {
        match node.get_ref() {
            Node::Bool(b) => out.insecure = *b,
            other => rep.report(
                &node.span(),
                &t.path_of("insecure"),
                DiagnosticKind::WrongType,
                format!("expected true or false, found {}", other.describe()),
            ),
        }
    }
    if out.tls_cert.is_some() != out.tls_key.is_some() {
        let key = if out.tls_cert.is_some() {
            "tls_key"
        } else {
            "tls_cert"
        };
        rep.report(
            &t.span,
            &t.path_of(key),
            DiagnosticKind::InvalidValue,
            "tls_cert and tls_key go together: set both or neither".to_owned(),
        );
    }
    if out.tls_client_ca.is_some() && out.tls_cert.is_none() {
        rep.report(
            &t.span,
            &t.path_of("tls_client_ca"),
            DiagnosticKind::InvalidValue,
            "client certificates need TLS: set tls_cert and tls_key too".to_owned(),
        );
    }
    let open = out.switch.is_on()
        && !out.listen.ip().is_loopback()
        && !out.tls()
        && out.token_file.is_none()
        && !out.insecure;
    if open {
        let span = t
            .get("listen")
            .map_or_else(|| t.span.clone(), Spanned::span);
        rep.report(
            &span,
            &t.path_of("listen"),
            DiagnosticKind::InvalidValue,
            format!(
                "{} is not a loopback address: anyone who reaches it could switch probes. Set \
                 tls_cert/tls_key and/or token_file, or write insecure = true to accept that",
                out.listen
            ),
        );
    }
    out
}
