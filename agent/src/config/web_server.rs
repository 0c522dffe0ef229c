//! `[web_server]`: where Prometheus scrapes `/metrics`.

use std::net::IpAddr;

use toml::Spanned;

use super::error::{DiagnosticKind, Reporter};
use super::node::{Node, TableView};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebServer {
    pub bind_addr: String,
    pub port: u16,
    /// Which names `/metrics` uses: gopher's own (promtool-clean) or gala-gopher HEAD's.
    pub metric_names: MetricNames,
}

/// `metric_names`: the naming of `/metrics` (see `egress::prometheus::naming`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricNames {
    /// `gala_gopher_<table>_<field>`, counters with `_total`, fields as gopher names them.
    #[default]
    Gopher,
    /// gala-gopher HEAD's names for the tables both have, no `_total`, `machine_id` label.
    GalaGopher,
}

impl Default for WebServer {
    fn default() -> Self {
        Self {
            bind_addr: "0.0.0.0".to_owned(),
            port: 8888,
            metric_names: MetricNames::Gopher,
        }
    }
}

pub(super) fn web_server(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>) -> WebServer {
    let mut out = WebServer::default();
    if let Some(t) = node.and_then(|n| {
        TableView::of(
            rep,
            n,
            "web_server".into(),
            &["bind_addr", "port", "metric_names"],
            true,
        )
    }) {
        if let Some((addr, span)) = t.string(rep, "bind_addr") {
            if addr.parse::<IpAddr>().is_ok() {
                addr.clone_into(&mut out.bind_addr);
            } else {
                rep.report(
                    &span,
                    &t.path_of("bind_addr"),
                    DiagnosticKind::InvalidValue,
                    format!("expected an IPv4 or IPv6 address such as \"0.0.0.0\" or \"::1\", found {addr:?}"),
                );
            }
        }
        if let Some(port) = t.int_in(rep, "port", 1..=i64::from(u16::MAX), "") {
            out.port = port as u16;
        }
        if let Some((i, _)) = t.word(rep, "metric_names", &["gopher", "gala-gopher"]) {
            out.metric_names = [MetricNames::Gopher, MetricNames::GalaGopher][i];
        }
    }
    out
}
