//! `[imdb]`: the table store's capacities and how long records live.

use std::time::Duration;

use toml::Spanned;

use super::bounds::secs;
use super::error::Reporter;
use super::node::{Node, TableView};

/// `record_timeout` above a day is almost certainly a unit mistake too.
const MAX_RECORD_TIMEOUT_SECS: i64 = 86_400;
/// Sanity bound on table-store capacities; keeps a typo from reserving absurd memory.
const MAX_CAPACITY: i64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imdb {
    pub max_tables_num: usize,
    pub max_records_num: usize,
    pub max_metrics_num: usize,
    /// `Duration::ZERO` = records never age out.
    pub record_timeout: Duration,
}

impl Default for Imdb {
    fn default() -> Self {
        Self {
            max_tables_num: 1024,
            max_records_num: 1024,
            max_metrics_num: 1024,
            record_timeout: Duration::from_mins(1),
        }
    }
}

pub(super) fn imdb(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>) -> Imdb {
    let mut out = Imdb::default();
    let allowed = [
        "max_tables_num",
        "max_records_num",
        "max_metrics_num",
        "record_timeout",
    ];
    if let Some(t) = node.and_then(|n| TableView::of(rep, n, "imdb".into(), &allowed, true)) {
        let cap = |rep: &mut Reporter<'_>, key, default: usize| {
            t.int_in(rep, key, 1..=MAX_CAPACITY, "")
                .map_or(default, |v| v.unsigned_abs() as usize)
        };
        out.max_tables_num = cap(rep, "max_tables_num", out.max_tables_num);
        out.max_records_num = cap(rep, "max_records_num", out.max_records_num);
        out.max_metrics_num = cap(rep, "max_metrics_num", out.max_metrics_num);
        out.record_timeout = secs(
            t.int_in(
                rep,
                "record_timeout",
                0..=MAX_RECORD_TIMEOUT_SECS,
                " seconds (0 = never)",
            ),
            out.record_timeout,
        );
    }
    out
}
