//! `[[extend_probes]]`: external programs run as probes (gala-gopher's extend probes).

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::{DiagnosticKind, Reporter};
use super::node::{Node, TableView};
use super::probes::{NameRegistry, probe_name, required_switch};
use super::switch::Switch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendProbe {
    pub name: String,
    pub command: String,
    pub param: String,
    pub start_check: Option<String>,
    pub check_type: CheckType,
    pub switch: Switch,
    /// Meta file describing the probe's tables; resolved against the config file's directory.
    pub meta: Option<PathBuf>,
    /// Whether the control channel may change `param` (the arguments of `command`). Off by
    /// default: arguments can change what a program does (`--config=/elsewhere`), so the
    /// operator opts in per probe.
    pub remote_param: bool,
    /// The user the command and start check run as (no capabilities); `None`: `[supervision]
    /// probe_user`; `Some("")`: the agent's own user.
    pub user: Option<String>,
}

/// How an `auto` probe's start check answers: probe vocabulary, defined with the probes'
/// settings (configuration reads it; probes never read configuration).
pub use crate::probes::settings::CheckType;

pub(super) fn extend_probe(
    rep: &mut Reporter<'_>,
    node: &Spanned<Node>,
    path: String,
    base: &Path,
    names: &mut NameRegistry,
) -> Option<ExtendProbe> {
    let allowed = [
        "name",
        "command",
        "param",
        "start_check",
        "check_type",
        "switch",
        "meta",
        "remote_param",
        "user",
    ];
    let t = TableView::of(rep, node, path, &allowed, true)?;
    let name = probe_name(rep, &t);
    if let Some((name, span)) = &name {
        names.claim(rep, name, span, &t.path_of("name"));
    }
    let command = match t.string(rep, "command") {
        Some((c, span)) if c.trim().is_empty() => {
            rep.report(
                &span,
                &t.path_of("command"),
                DiagnosticKind::InvalidValue,
                "must not be empty",
            );
            None
        }
        Some((c, _)) => Some(c.to_owned()),
        None => {
            if t.get("command").is_none() {
                rep.report(
                    &t.span,
                    &t.path_of("command"),
                    DiagnosticKind::Missing,
                    "required",
                );
            }
            None
        }
    };
    let param = t
        .string(rep, "param")
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default();
    // An empty start_check is how gala-gopher.conf spelled "none".
    let start_check = t
        .string(rep, "start_check")
        .map(|(s, _)| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let check_type = t
        .word(rep, "check_type", &["count", "exit"])
        .map_or(CheckType::Count, |(i, _)| {
            [CheckType::Count, CheckType::Exit][i]
        });
    let switch = required_switch(rep, &t, &["on", "off", "auto"]);
    if switch.is_some_and(|s| !s.fits(start_check.as_deref())) {
        rep.report(
            &t.span,
            &t.path_of("start_check"),
            DiagnosticKind::Missing,
            "required when switch = \"auto\"",
        );
    }
    let meta = match t.string(rep, "meta") {
        Some(("", span)) => {
            rep.report(
                &span,
                &t.path_of("meta"),
                DiagnosticKind::InvalidValue,
                "must not be empty (leave the key out instead)",
            );
            None
        }
        Some((m, _)) => Some(base.join(m)),
        None => None,
    };
    let remote_param = flag(rep, &t, "remote_param");
    let user = super::supervision::user_name(rep, &t, "user");
    Some(ExtendProbe {
        name: name?.0,
        command: command?,
        param,
        start_check,
        check_type,
        switch: switch?,
        meta,
        remote_param,
        user,
    })
}

/// A boolean key, `false` when absent (or wrong, which is reported).
fn flag(rep: &mut Reporter<'_>, t: &TableView<'_>, key: &str) -> bool {
    match t.get(key) {
        None => false,
        Some(n) => match n.get_ref() {
            Node::Bool(b) => *b,
            other => {
                rep.report(
                    &n.span(),
                    &t.path_of(key),
                    DiagnosticKind::WrongType,
                    format!("expected true or false, found {}", other.describe()),
                );
                false
            }
        },
    }
}
