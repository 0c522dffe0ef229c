//! `[web_server]`: where Prometheus scrapes `/metrics`, and the exporter-toolkit web
//! configuration file (TLS, basic auth; [`super::web_config`]) it is served with.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::{DiagnosticKind, Reporter};
use super::node::{Node, TableView};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebServer {
    pub bind_addr: String,
    pub port: u16,
    /// exporter-toolkit's `--web.config.file`: TLS and basic auth for `/metrics`.
    pub web_config_file: Option<PathBuf>,
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
            web_config_file: None,
            metric_names: MetricNames::Gopher,
        }
    }
}

pub(super) fn web_server(
    rep: &mut Reporter<'_>,
    node: Option<&Spanned<Node>>,
    base: &Path,
) -> WebServer {
    let mut out = WebServer::default();
    let keys = ["bind_addr", "port", "web_config_file", "metric_names"];
    if let Some(t) = node.and_then(|n| TableView::of(rep, n, "web_server".into(), &keys, true)) {
        if let Some((file, span)) = t
            .string(rep, "web_config_file")
            .filter(|(s, _)| !s.is_empty())
        {
            let file = base.join(file);
            // Checked here too, so that `--check-config` and a reload report a bad file.
            if let Err(e) = super::web_config::load_web_config(&file) {
                rep.report(
                    &span,
                    &t.path_of("web_config_file"),
                    DiagnosticKind::InvalidValue,
                    e.to_string(),
                );
            }
            out.web_config_file = Some(file);
        }
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
