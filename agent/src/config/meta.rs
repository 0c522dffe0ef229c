//! `[meta]`: directories of meta files that define extra tables (read by `meta_file.rs`).

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::{DiagnosticKind, Reporter};
use super::node::{Node, TableView};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaSection {
    /// Directories whose `*.meta` / `*.toml` files define extra tables.
    pub dirs: Vec<PathBuf>,
}

pub(super) fn meta(
    rep: &mut Reporter<'_>,
    node: Option<&Spanned<Node>>,
    base: &Path,
) -> MetaSection {
    let mut out = MetaSection::default();
    let Some(t) = node.and_then(|n| TableView::of(rep, n, "meta".into(), &["dirs"], true)) else {
        return out;
    };
    let Some(dirs) = t.get("dirs") else {
        return out;
    };
    let Node::Array(items) = dirs.get_ref() else {
        rep.report(
            &dirs.span(),
            &t.path_of("dirs"),
            DiagnosticKind::WrongType,
            format!(
                "expected an array of strings, found {}",
                dirs.get_ref().describe()
            ),
        );
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("meta.dirs[{i}]");
        match item.get_ref() {
            Node::Str(s) if !s.is_empty() => out.dirs.push(base.join(s)),
            Node::Str(_) => rep.report(
                &item.span(),
                &path,
                DiagnosticKind::InvalidValue,
                "must not be empty",
            ),
            other => rep.report(
                &item.span(),
                &path,
                DiagnosticKind::WrongType,
                format!("expected a string, found {}", other.describe()),
            ),
        }
    }
    out
}
