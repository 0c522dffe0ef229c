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
/// Where the bearer token is kept when `token_file` is not set: created (0600) at first start,
/// so only root can call the channel (and `gopher ctl` run as root finds it).
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/gopher-agent/control.token";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub switch: OnOff,
    pub listen: SocketAddr,
    /// Server certificate chain and key (PEM); both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    /// File whose first line is the bearer token every call must carry; created (0600) when
    /// missing. `None` (`token_file = ""`, or left out with mTLS or `insecure = true`): no token.
    pub token_file: Option<PathBuf>,
    /// Allows a listener with no token (and, off loopback, no TLS): anyone who reaches it may
    /// switch probes.
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
            token_file: Some(PathBuf::from(DEFAULT_TOKEN_FILE)),
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
    let path = |rep: &mut Reporter<'_>, key: &str| file(rep, &t, base, key);
    (out.tls_cert, out.tls_key, out.tls_client_ca) = tls_files(rep, &t, base);
    // Left out: the default file, unless clients are authenticated otherwise (mTLS) or the
    // operator wrote insecure = true. Empty: no token.
    let token_set = t.get("token_file").is_some();
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
    if !token_set && out.tls_client_ca.is_none() && !out.insecure {
        out.token_file = Some(PathBuf::from(DEFAULT_TOKEN_FILE));
    }
    unprotected(rep, &t, &out, token_set);
    out
}

/// A path key of `t`, relative to the config file's directory; empty is unset.
fn file(rep: &mut Reporter<'_>, t: &TableView<'_>, base: &Path, key: &str) -> Option<PathBuf> {
    t.string(rep, key)
        .filter(|(s, _)| !s.is_empty())
        .map(|(s, _)| base.join(s))
}

/// `tls_cert`, `tls_key` and `tls_client_ca` of a listener's table (`[control]` and
/// `[rest_api]` spell them alike): certificate and key go together, a client CA needs both.
pub(super) fn tls_files(
    rep: &mut Reporter<'_>,
    t: &TableView<'_>,
    base: &Path,
) -> (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>) {
    let cert = file(rep, t, base, "tls_cert");
    let key = file(rep, t, base, "tls_key");
    let ca = file(rep, t, base, "tls_client_ca");
    if cert.is_some() != key.is_some() {
        let missing = if cert.is_some() {
            "tls_key"
        } else {
            "tls_cert"
        };
        rep.report(
            &t.span,
            &t.path_of(missing),
            DiagnosticKind::InvalidValue,
            "tls_cert and tls_key go together: set both or neither".to_owned(),
        );
    }
    if ca.is_some() && cert.is_none() {
        rep.report(
            &t.span,
            &t.path_of("tls_client_ca"),
            DiagnosticKind::InvalidValue,
            "client certificates need TLS: set tls_cert and tls_key too".to_owned(),
        );
    }
    (cert, key, ca)
}

/// Refuses `listen` off loopback when `open` (nothing protects it there): the one wording for
/// every control listener; `fix` says what protects this one.
pub(super) fn refuse_open_listen(
    rep: &mut Reporter<'_>,
    t: &TableView<'_>,
    listen: SocketAddr,
    open: bool,
    fix: &str,
) {
    if !open || listen.ip().is_loopback() {
        return;
    }
    let span = t
        .get("listen")
        .map_or_else(|| t.span.clone(), Spanned::span);
    rep.report(
        &span,
        &t.path_of("listen"),
        DiagnosticKind::InvalidValue,
        format!(
            "{listen} is not a loopback address: anyone who reaches it could switch probes. {fix}"
        ),
    );
}

/// Refuses a channel anyone could use: no token and no client certificates anywhere, or a
/// non-loopback listener whose token would travel in clear (unless `insecure = true`).
fn unprotected(rep: &mut Reporter<'_>, t: &TableView<'_>, out: &Control, token_set: bool) {
    if out.switch.is_on()
        && out.token_file.is_none()
        && out.tls_client_ca.is_none()
        && !out.insecure
    {
        let span = t
            .get("token_file")
            .map_or_else(|| t.span.clone(), Spanned::span);
        rep.report(
            &span,
            &t.path_of("token_file"),
            DiagnosticKind::InvalidValue,
            format!(
                "no token and no client certificates: every local user could switch probes. \
                 Leave token_file out (default {DEFAULT_TOKEN_FILE}, created 0600), name a file, \
                 set tls_client_ca, or write insecure = true to accept that"
            ),
        );
    }
    // Off loopback, a token sent in clear is no protection: TLS, or a token the operator chose
    // to send that way, or insecure = true.
    refuse_open_listen(
        rep,
        t,
        out.listen,
        out.switch.is_on() && !out.tls() && !token_set && !out.insecure,
        "Set tls_cert/tls_key and/or token_file, or write insecure = true to accept that",
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::DEFAULT_TOKEN_FILE;

    fn control(text: &str) -> Result<super::Control, String> {
        crate::config::parse(text, Path::new("/etc/gopher/probes.toml"))
            .map(|c| c.control)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_token_is_on_by_default_and_off_only_when_written_down() {
        let d = control("").unwrap();
        assert_eq!(d.token_file.as_deref(), Some(Path::new(DEFAULT_TOKEN_FILE)));
        let own = control("[control]\ntoken_file = \"t\"\n").unwrap();
        assert_eq!(own.token_file.as_deref(), Some(Path::new("/etc/gopher/t")));
        let e = control("[control]\ntoken_file = \"\"\n").unwrap_err();
        assert!(
            e.contains("control.token_file") && e.contains("insecure = true"),
            "{e}"
        );
        let open = control("[control]\ntoken_file = \"\"\ninsecure = true\n").unwrap();
        assert_eq!(open.token_file, None);
        let mtls =
            control("[control]\ntls_cert = \"c\"\ntls_key = \"k\"\ntls_client_ca = \"ca\"\n")
                .unwrap();
        assert_eq!(mtls.token_file, None);
        // Off loopback, the default token alone (sent in clear) is not enough.
        let e = control("[control]\nlisten = \"0.0.0.0:8889\"\n").unwrap_err();
        assert!(e.contains("control.listen"), "{e}");
        assert!(control("[control]\nlisten = \"0.0.0.0:8889\"\ntoken_file = \"t\"\n").is_ok());
    }
}
