//! `[[probes]]`: the native probes to run, and the probe-name rules every probe entry shares.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::bounds::{MAX_INTERVAL, secs};
use super::error::{DiagnosticKind, Reporter};
use super::node::{self, Node, TableView};
use super::switch::Switch;

/// Probes compiled into the agent: declared once, in the native-probe registry.
pub const NATIVE_PROBES: &[&str] = &crate::probes::registry::NAMES;

#[derive(Debug, Clone, PartialEq)]
pub struct NativeProbe {
    pub name: String,
    pub switch: Switch,
    pub interval: Duration,
    /// Probe-specific settings, validated by the probe itself.
    pub params: toml::Table,
}

/// Probe names are shared by native and extension probes: the manager addresses probes by name.
#[derive(Default)]
pub(super) struct NameRegistry {
    seen: HashMap<String, (String, usize)>,
}

impl NameRegistry {
    pub(super) fn claim(
        &mut self,
        rep: &mut Reporter<'_>,
        name: &str,
        span: &Range<usize>,
        path: &str,
    ) {
        if let Some((first_path, first_line)) = self.seen.get(name) {
            rep.report(
                span,
                path,
                DiagnosticKind::Duplicate,
                format!("duplicate probe name {name:?} (already used by {first_path} at line {first_line})"),
            );
        } else {
            let line = rep.position(span.start).0;
            self.seen.insert(name.to_owned(), (path.to_owned(), line));
        }
    }
}

/// Probe names end up in logs, metrics labels and control commands: keep them plain.
fn check_probe_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; probe names allow only [a-zA-Z0-9._-]"
        ));
    }
    Ok(())
}

/// Reads `name` (required), reporting problems; `None` if unusable.
pub(super) fn probe_name(
    rep: &mut Reporter<'_>,
    t: &TableView<'_>,
) -> Option<(String, Range<usize>)> {
    let Some((name, span)) = t.string(rep, "name") else {
        if t.get("name").is_none() {
            rep.report(
                &t.span,
                &t.path_of("name"),
                DiagnosticKind::Missing,
                "required",
            );
        }
        return None;
    };
    if let Err(why) = check_probe_name(name) {
        rep.report(&span, &t.path_of("name"), DiagnosticKind::InvalidValue, why);
        return None;
    }
    Some((name.to_owned(), span))
}

pub(super) fn required_switch(
    rep: &mut Reporter<'_>,
    t: &TableView<'_>,
    words: &[&str],
) -> Option<Switch> {
    const ALL: [Switch; 3] = [Switch::On, Switch::Off, Switch::Auto];
    if t.get("switch").is_none() {
        rep.report(
            &t.span,
            &t.path_of("switch"),
            DiagnosticKind::Missing,
            format!("required ({})", node::one_of(words)),
        );
        return None;
    }
    t.word(rep, "switch", words).map(|(i, _)| ALL[i])
}

pub(super) fn native_probe(
    rep: &mut Reporter<'_>,
    node: &Spanned<Node>,
    path: String,
    names: &mut NameRegistry,
) -> Option<NativeProbe> {
    let t = TableView::of(
        rep,
        node,
        path,
        &["name", "switch", "interval", "params"],
        true,
    )?;
    let name = probe_name(rep, &t);
    if let Some((name, span)) = &name {
        if NATIVE_PROBES.contains(&name.as_str()) {
            names.claim(rep, name, span, &t.path_of("name"));
        } else {
            rep.report(
                span,
                &t.path_of("name"),
                DiagnosticKind::InvalidValue,
                format!(
                    "unknown native probe {name:?} (known: {}); external programs belong in [[extend_probes]]",
                    NATIVE_PROBES.join(", ")
                ),
            );
        }
    }
    // "auto" needs the probe's built-in start check (registry); without one it would have
    // nothing to decide with.
    let auto = name
        .as_ref()
        .and_then(|(n, _)| crate::probes::registry::find(n))
        .is_some_and(|n| n.start_check.is_some());
    let switch = required_switch(
        rep,
        &t,
        if auto {
            &["on", "off", "auto"]
        } else {
            &["on", "off"]
        },
    );
    let interval = secs(
        t.int_in(rep, "interval", 1..=MAX_INTERVAL, " seconds"),
        Duration::from_secs(5),
    );
    let params = match t.get("params") {
        None => toml::Table::new(),
        Some(p) => match p.get_ref() {
            Node::Table(_) => match p.get_ref().clone().into_toml() {
                toml::Value::Table(table) => table,
                _ => toml::Table::new(),
            },
            other => {
                rep.report(
                    &p.span(),
                    &t.path_of("params"),
                    DiagnosticKind::WrongType,
                    format!("expected a table, found {}", other.describe()),
                );
                toml::Table::new()
            }
        },
    };
    Some(NativeProbe {
        name: name?.0,
        switch: switch?,
        interval,
        params,
    })
}
