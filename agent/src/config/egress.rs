//! `[egress]`: gala-gopher's egress cadence, kept so its config files still read.

use std::time::Duration;

use toml::Spanned;

use super::bounds::{MAX_INTERVAL, secs};
use super::error::Reporter;
use super::node::{Node, TableView};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    pub interval: Duration,
    pub time_range: Duration,
}

impl Default for Egress {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            time_range: Duration::from_secs(5),
        }
    }
}

pub(super) fn egress(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>) -> Egress {
    let mut out = Egress::default();
    if let Some(t) =
        node.and_then(|n| TableView::of(rep, n, "egress".into(), &["interval", "time_range"], true))
    {
        out.interval = secs(
            t.int_in(rep, "interval", 1..=MAX_INTERVAL, " seconds"),
            out.interval,
        );
        out.time_range = secs(
            t.int_in(rep, "time_range", 1..=MAX_INTERVAL, " seconds"),
            out.time_range,
        );
    }
    out
}
