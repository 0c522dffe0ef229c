//! Meta files: table definitions for probes, in our TOML form or gala-gopher's libconfig `.meta`.
//!
//! The TOML form is ours, so it is strict: unknown keys and unknown field types are errors,
//! because a typo there silently changes what gets exported. The libconfig form exists for
//! compatibility with meta files written for gala-gopher, so it follows gala-gopher's reader:
//! keys it does not use are ignored, and unrecognised field types become `Unknown`.
//! Hand-walked rather than serde-derived: every problem is reported, each at its file:line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::{ConfigError, Diagnostic, DiagnosticKind, Reporter};
use super::libconfig;
use super::node::{self, Entry, Node, TableView};
use crate::imdb::{FieldMeta, FieldType, TableMeta};

const TOML_TYPES: &[&str] = &["key", "label", "counter", "gauge", "histogram", "unknown"];

/// Loads one meta file, choosing the syntax by extension: `.toml` is TOML, anything else
/// (normally `.meta`) is libconfig.
pub fn load_meta_file(path: &Path) -> Result<Vec<TableMeta>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if is_toml(path) {
        parse_meta_toml(&text, path)
    } else {
        parse_meta_libconfig(&text, path)
    }
}

fn is_toml(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

/// Loads every `*.meta` and `*.toml` file of each directory, in name order so table order (and
/// therefore output order) is stable across hosts. A table defined twice is an error naming
/// both places: silently keeping one would make probe rows misparse.
pub fn load_meta_dirs(dirs: &[PathBuf]) -> Result<Vec<TableMeta>, ConfigError> {
    let mut tables = Vec::new();
    let mut diagnostics = Vec::new();
    let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
    for dir in dirs {
        let read_err = |source| ConfigError::Read {
            path: dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            let wanted = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("meta") || e.eq_ignore_ascii_case("toml"));
            if wanted && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        for file in files {
            match load_with_lines(&file) {
                Ok(loaded) => {
                    for (table, line) in loaded {
                        if let Some((first, first_line)) = seen.get(&table.name) {
                            diagnostics.push(Diagnostic {
                                file: file.clone(),
                                line,
                                column: 1,
                                key: table.name.clone(),
                                kind: DiagnosticKind::Duplicate,
                                message: format!(
                                    "table already defined at {}:{first_line}",
                                    first.display()
                                ),
                            });
                        } else {
                            seen.insert(table.name.clone(), (file.clone(), line));
                            tables.push(table);
                        }
                    }
                }
                Err(ConfigError::Invalid { diagnostics: d }) => diagnostics.extend(d),
                Err(read @ ConfigError::Read { .. }) => return Err(read),
            }
        }
    }
    if diagnostics.is_empty() {
        Ok(tables)
    } else {
        Err(ConfigError::Invalid { diagnostics })
    }
}

fn load_with_lines(path: &Path) -> Result<Vec<(TableMeta, usize)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let dialect = if is_toml(path) {
        Dialect::Toml
    } else {
        Dialect::Libconfig
    };
    parse_meta(&text, path, dialect)
}

/// Parses the TOML meta form (`[[tables]]` with `name`, `description`, `fields`).
pub fn parse_meta_toml(text: &str, origin: &Path) -> Result<Vec<TableMeta>, ConfigError> {
    strip_lines(parse_meta(text, origin, Dialect::Toml))
}

/// Parses gala-gopher's libconfig `.meta` form (`measurements: ( { name | table_name, fields } )`).
pub fn parse_meta_libconfig(text: &str, origin: &Path) -> Result<Vec<TableMeta>, ConfigError> {
    strip_lines(parse_meta(text, origin, Dialect::Libconfig))
}

fn strip_lines(
    r: Result<Vec<(TableMeta, usize)>, ConfigError>,
) -> Result<Vec<TableMeta>, ConfigError> {
    r.map(|v| v.into_iter().map(|(t, _)| t).collect())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Toml,
    Libconfig,
}

impl Dialect {
    fn strict(self) -> bool {
        self == Self::Toml
    }
}

/// Tables with the line each is defined on (for duplicate reports across files).
fn parse_meta(
    text: &str,
    origin: &Path,
    dialect: Dialect,
) -> Result<Vec<(TableMeta, usize)>, ConfigError> {
    let mut rep = Reporter::new(origin, text);
    let root: Option<Vec<Entry>> = match dialect {
        Dialect::Toml => node::parse_toml(text, &mut rep),
        Dialect::Libconfig => libconfig::parse(text, &mut rep),
    };
    let Some(root) = root else {
        return Err(ConfigError::Invalid {
            diagnostics: rep.diagnostics,
        });
    };
    let list_key = match dialect {
        Dialect::Toml => "tables",
        Dialect::Libconfig => "measurements",
    };
    let root = TableView::new(
        &mut rep,
        &root,
        0..0,
        String::new(),
        &["version", list_key],
        dialect.strict(),
    );
    if let Some(v) = root.get("version")
        && !matches!(v.get_ref(), Node::Str(_))
    {
        rep.report(
            &v.span(),
            "version",
            DiagnosticKind::WrongType,
            format!("expected a string, found {}", v.get_ref().describe()),
        );
    }
    if root.get(list_key).is_none() {
        rep.report(
            &(0..0),
            list_key,
            DiagnosticKind::Missing,
            "required: a meta file defines at least one table",
        );
    }
    let mut tables = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, item) in root.tables(&mut rep, list_key) {
        let path = format!("{list_key}[{i}]");
        let Some(table) = table_meta(&mut rep, item, path.clone(), dialect) else {
            continue;
        };
        let line = rep.position(item.span().start).0;
        if let Some(first) = names.get(&table.name) {
            rep.report(
                &item.span(),
                &path,
                DiagnosticKind::Duplicate,
                format!("table {:?} already defined at line {first}", table.name),
            );
            continue;
        }
        names.insert(table.name.clone(), line);
        tables.push((table, line));
    }
    rep.finish(tables)
}

fn table_meta(
    rep: &mut Reporter<'_>,
    item: &Spanned<Node>,
    path: String,
    dialect: Dialect,
) -> Option<TableMeta> {
    let allowed: &[&str] = match dialect {
        Dialect::Toml => &["name", "description", "fields"],
        Dialect::Libconfig => &["name", "table_name", "entity_name", "description", "fields"],
    };
    let t = TableView::of(rep, item, path, allowed, dialect.strict())?;
    // 2022+ gala-gopher meta names the table `table_name` (and the entity it belongs to
    // `entity_name`); older files only have `name`.
    let name_key = if dialect == Dialect::Libconfig && t.get("table_name").is_some() {
        "table_name"
    } else {
        "name"
    };
    if dialect == Dialect::Libconfig {
        // Read only to report a wrong type; the entity grouping is not modelled (yet).
        let _ = t.string(rep, "entity_name");
    }
    let name = identifier(rep, &t, name_key);
    let description = t
        .string(rep, "description")
        .map(|(d, _)| d.to_owned())
        .unwrap_or_default();
    let fields = fields(rep, &t, dialect);
    Some(TableMeta {
        name: name?,
        description,
        fields: fields?,
        max_records: None,
    })
}

fn fields(rep: &mut Reporter<'_>, t: &TableView<'_>, dialect: Dialect) -> Option<Vec<FieldMeta>> {
    let Some(list) = t.get("fields") else {
        rep.report(
            &t.span,
            &t.path_of("fields"),
            DiagnosticKind::Missing,
            "required",
        );
        return None;
    };
    if matches!(list.get_ref(), Node::Array(items) if items.is_empty()) {
        rep.report(
            &list.span(),
            &t.path_of("fields"),
            DiagnosticKind::InvalidValue,
            "a table needs at least one field",
        );
        return None;
    }
    let before = rep.diagnostics.len();
    let mut out: Vec<FieldMeta> = Vec::new();
    let mut lines: HashMap<String, usize> = HashMap::new();
    for (i, item) in t.tables(rep, "fields") {
        let path = format!("{}[{i}]", t.path_of("fields"));
        let Some(f) = TableView::of(
            rep,
            item,
            path.clone(),
            &["name", "type", "description"],
            dialect.strict(),
        ) else {
            continue;
        };
        let name = identifier(rep, &f, "name");
        let ty = field_type(rep, &f, dialect);
        let description = f
            .string(rep, "description")
            .map(|(d, _)| d.to_owned())
            .unwrap_or_default();
        let Some(name) = name else { continue };
        // Prometheus reserves label names starting with `__`; the store refuses them too, but
        // only here can the refusal name the file and line.
        if ty.is_label() && name.starts_with("__") {
            let span = f.get("name").map_or_else(|| item.span(), Spanned::span);
            rep.report(
                &span,
                &f.path_of("name"),
                DiagnosticKind::InvalidValue,
                format!(
                    "{name:?}: key and label names starting with \"__\" are reserved by Prometheus"
                ),
            );
            continue;
        }
        if let Some(first) = lines.get(&name) {
            rep.report(
                &item.span(),
                &f.path_of("name"),
                DiagnosticKind::Duplicate,
                format!("field {name:?} already defined at line {first}"),
            );
            continue;
        }
        lines.insert(name.clone(), rep.position(item.span().start).0);
        out.push(FieldMeta {
            name,
            ty,
            description,
        });
    }
    (rep.diagnostics.len() == before).then_some(out)
}

fn field_type(rep: &mut Reporter<'_>, f: &TableView<'_>, dialect: Dialect) -> FieldType {
    match dialect {
        Dialect::Toml => {
            if f.get("type").is_none() {
                rep.report(
                    &f.span,
                    &f.path_of("type"),
                    DiagnosticKind::Missing,
                    format!("required ({})", node::one_of(TOML_TYPES)),
                );
                return FieldType::Unknown;
            }
            f.word(rep, "type", TOML_TYPES)
                .map_or(FieldType::Unknown, |(i, _)| FieldType::parse(TOML_TYPES[i]))
        }
        // gala-gopher's own files say "Unknown" (capitalised) and older ones omit the type.
        Dialect::Libconfig => f
            .string(rep, "type")
            .map_or(FieldType::Unknown, |(ty, _)| FieldType::parse(ty)),
    }
}

/// Table and field names become parts of Prometheus metric names: `[A-Za-z_][A-Za-z0-9_]*`.
fn identifier(rep: &mut Reporter<'_>, t: &TableView<'_>, key: &str) -> Option<String> {
    let Some((name, span)) = t.string(rep, key) else {
        if t.get(key).is_none() {
            rep.report(
                &t.span,
                &t.path_of(key),
                DiagnosticKind::Missing,
                "required",
            );
        }
        return None;
    };
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        rep.report(
            &span,
            &t.path_of(key),
            DiagnosticKind::InvalidValue,
            format!("{name:?} is not a valid name: use letters, digits and '_' (not starting with a digit)"),
        );
        return None;
    }
    Some(name.to_owned())
}
