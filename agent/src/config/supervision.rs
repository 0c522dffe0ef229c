//! `[supervision]`: how probes are restarted and stopped, and how often start checks run.

use std::time::Duration;

use toml::Spanned;

use super::bounds::{MAX_INTERVAL, secs};
use super::error::{DiagnosticKind, Reporter};
use super::node::{Node, TableView};

/// How probes are restarted and stopped, and how often auto start checks run (not in
/// gala-gopher, whose probes were threads it re-created at most every two minutes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervision {
    /// First pause before restarting a probe that ended on its own; doubles per quick failure.
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
    /// Quick failures in a row after which a probe is left `failed`.
    pub max_quick_failures: u32,
    /// A run at least this long is not a quick failure (resets the count and the back-off).
    pub stable_after: Duration,
    /// Between SIGTERM and SIGKILL when an extension probe's process group is stopped.
    pub stop_grace: Duration,
    pub start_check_interval: Duration,
    pub start_check_timeout: Duration,
    /// The user extension probes and start checks run as, with no capabilities, unless their
    /// entry names its own `user`; empty: the agent's own user (root, with its capabilities).
    pub probe_user: String,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            restart_backoff: Duration::from_secs(1),
            restart_backoff_max: Duration::from_mins(1),
            max_quick_failures: 5,
            stable_after: Duration::from_mins(1),
            stop_grace: Duration::from_secs(5),
            start_check_interval: Duration::from_secs(10),
            start_check_timeout: Duration::from_secs(5),
            probe_user: String::new(),
        }
    }
}

pub(super) fn supervision(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>) -> Supervision {
    let mut out = Supervision::default();
    let allowed = [
        "restart_backoff",
        "restart_backoff_max",
        "max_quick_failures",
        "stable_after",
        "stop_grace",
        "start_check_interval",
        "start_check_timeout",
        "probe_user",
    ];
    let Some(t) = node.and_then(|n| TableView::of(rep, n, "supervision".into(), &allowed, true))
    else {
        return out;
    };
    let dur = |rep: &mut Reporter<'_>, key, min, default| {
        secs(t.int_in(rep, key, min..=MAX_INTERVAL, " seconds"), default)
    };
    out.restart_backoff = dur(rep, "restart_backoff", 1, out.restart_backoff);
    out.restart_backoff_max = dur(rep, "restart_backoff_max", 1, out.restart_backoff_max);
    out.stable_after = dur(rep, "stable_after", 1, out.stable_after);
    out.stop_grace = dur(rep, "stop_grace", 0, out.stop_grace);
    out.start_check_interval = dur(rep, "start_check_interval", 1, out.start_check_interval);
    out.start_check_timeout = dur(rep, "start_check_timeout", 1, out.start_check_timeout);
    if let Some(user) = user_name(rep, &t, "probe_user") {
        out.probe_user = user;
    }
    if let Some(n) = t.int_in(rep, "max_quick_failures", 1..=1000, "") {
        out.max_quick_failures = n as u32;
    }
    if out.restart_backoff_max < out.restart_backoff {
        let key = if t.get("restart_backoff_max").is_some() {
            "restart_backoff_max"
        } else {
            "restart_backoff"
        };
        let span = t.get(key).map_or_else(|| t.span.clone(), Spanned::span);
        rep.report(
            &span,
            &t.path_of(key),
            DiagnosticKind::InvalidValue,
            format!(
                "restart_backoff_max ({} s) must not be below restart_backoff ({} s)",
                out.restart_backoff_max.as_secs(),
                out.restart_backoff.as_secs()
            ),
        );
    }
    out
}

/// A user name (`probe_user`, an extension probe's `user`): empty, or what useradd accepts
/// (`[A-Za-z0-9_.][A-Za-z0-9_.-]*`, at most 32 bytes, an optional trailing `$`). Whether the
/// user exists is checked when a program is started (a checkout may name one the package
/// creates).
pub(super) fn user_name(rep: &mut Reporter<'_>, t: &TableView<'_>, key: &str) -> Option<String> {
    let (name, span) = t.string(rep, key)?;
    let body = name.strip_suffix('$').unwrap_or(name);
    let valid = name.is_empty()
        || (name.len() <= 32
            && !body.starts_with('-')
            && !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')));
    if !valid {
        rep.report(
            &span,
            &t.path_of(key),
            DiagnosticKind::InvalidValue,
            format!("expected a user name such as \"gopher-probe\" or \"nobody\", found {name:?}"),
        );
        return None;
    }
    Some(name.to_owned())
}
