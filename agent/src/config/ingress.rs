//! `[ingress]`: how often probes report (the default for native probes without `interval`).

use std::time::Duration;

use toml::Spanned;

use super::bounds::{MAX_INTERVAL, secs};
use super::error::Reporter;
use super::node::{Node, TableView};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    pub interval: Duration,
}

impl Default for Ingress {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
        }
    }
}

pub(super) fn ingress(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>) -> Ingress {
    let mut out = Ingress::default();
    if let Some(t) = node.and_then(|n| TableView::of(rep, n, "ingress".into(), &["interval"], true))
    {
        out.interval = secs(
            t.int_in(rep, "interval", 1..=MAX_INTERVAL, " seconds"),
            out.interval,
        );
    }
    out
}
