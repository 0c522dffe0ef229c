//! `[rest_api]`: gala-gopher's REST probe API (`GET`/`PUT /<probe>`), beside the gRPC channel.
//!
//! Off by default and on loopback by default (port 9999, gala-gopher's). It authenticates with
//! the control channel's bearer token (`[control] token_file`), the same rule as gRPC; it
//! serves plain HTTP, so a non-loopback listener needs that token or `[control] insecure`.

use std::net::SocketAddr;

use toml::Spanned;

use super::control::Control;
use super::error::{DiagnosticKind, Reporter};
use super::node::{Node, TableView};
use super::switch::OnOff;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestApi {
    pub switch: OnOff,
    pub listen: SocketAddr,
}

impl Default for RestApi {
    fn default() -> Self {
        Self {
            switch: OnOff::Off,
            listen: SocketAddr::from(([127, 0, 0, 1], 9999)),
        }
    }
}

pub(super) fn rest_api(
    rep: &mut Reporter<'_>,
    node: Option<&Spanned<Node>>,
    control: &Control,
) -> RestApi {
    let mut out = RestApi::default();
    let Some(t) =
        node.and_then(|n| TableView::of(rep, n, "rest_api".into(), &["switch", "listen"], true))
    else {
        return out;
    };
    if let Some((i, _)) = t.word(rep, "switch", &["on", "off"]) {
        out.switch = [OnOff::On, OnOff::Off][i];
    }
    if let Some(a) = t.socket_addr(rep, "listen", "\"127.0.0.1:9999\"") {
        out.listen = a;
    }
    if out.switch.is_on()
        && !out.listen.ip().is_loopback()
        && control.token_file.is_none()
        && !control.insecure
    {
        let span = t
            .get("listen")
            .map_or_else(|| t.span.clone(), Spanned::span);
        rep.report(
            &span,
            &t.path_of("listen"),
            DiagnosticKind::InvalidValue,
            format!(
                "{} is not a loopback address: anyone who reaches it could switch probes. Set \
                 [control] token_file (the REST API takes the same bearer token), or write \
                 [control] insecure = true to accept that",
                out.listen
            ),
        );
    }
    out
}
