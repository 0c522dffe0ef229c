//! A value tree in which every value and key remembers where it came from.
//!
//! Both readers (TOML through toml_edit's public spans, libconfig through our own parser) produce
//! this tree, and the model code walks it by hand instead of using serde derives: a derive stops
//! at the first problem and loses track of positions, while the walk reports every problem with
//! its line and key path.

use std::ops::Range;

use toml::Spanned;
use toml_edit::{ImDocument, Item, Key, Table, Value};

use super::error::{DiagnosticKind, Reporter};

pub(crate) type Entry = (Spanned<String>, Spanned<Node>);

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Spanned<Node>>),
    /// Entries in file order; duplicates were already rejected by the parser.
    Table(Vec<Entry>),
}

impl Node {
    /// Noun phrase for "expected X, found Y" messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Node::Str(s) => format!("string {s:?}"),
            Node::Int(i) => format!("integer {i}"),
            Node::Float(x) => format!("float {x}"),
            Node::Bool(b) => format!("boolean {b}"),
            Node::Array(_) => "an array".to_owned(),
            Node::Table(_) => "a table".to_owned(),
        }
    }

    pub(crate) fn into_toml(self) -> toml::Value {
        match self {
            Node::Str(s) => toml::Value::String(s),
            Node::Int(i) => toml::Value::Integer(i),
            Node::Float(x) => toml::Value::Float(x),
            Node::Bool(b) => toml::Value::Boolean(b),
            Node::Array(items) => toml::Value::Array(
                items
                    .into_iter()
                    .map(|n| n.into_inner().into_toml())
                    .collect(),
            ),
            Node::Table(entries) => toml::Value::Table(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.into_inner(), v.into_inner().into_toml()))
                    .collect(),
            ),
        }
    }
}

// toml_edit (the parser the `toml` crate itself uses, so acceptance and syntax messages are the
// same) gives most keys and values a place in the text, but not the tables it makes implicitly:
// `[kafka.properties]` without `[kafka]`, or a dotted key such as `security.protocol = "ssl"`. So
// the document is first read into `Raw`, where a place is optional, and `placed` then gives every
// key and value the place of what it holds (or of its parent), so that diagnostics still name
// file:line. (`toml::Spanned` cannot read such a table, and toml 0.8 has no spanned `DeTable`.)

/// A value whose place in the text the reader may not know.
#[derive(Debug)]
struct Raw {
    span: Option<Range<usize>>,
    value: RawValue,
}

#[derive(Debug)]
enum RawValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Raw>),
    Table(Vec<(RawKey, Raw)>),
}

#[derive(Debug)]
struct RawKey {
    span: Option<Range<usize>>,
    name: String,
}

/// No setting here takes a date, so one is refused plainly (as a syntax problem, at its place).
const DATETIME_REFUSED: &str = "date/time values are not accepted in this file";

/// Where reading stopped: the place of a date/time value.
type Refused = Option<Range<usize>>;

fn raw_item(item: &Item) -> Result<Raw, Refused> {
    match item {
        Item::None => Ok(Raw {
            span: None,
            value: RawValue::Table(Vec::new()),
        }),
        Item::Value(v) => raw_value(v),
        Item::Table(t) => raw_table(t),
        Item::ArrayOfTables(tables) => Ok(Raw {
            span: item.span(),
            value: RawValue::Array(tables.iter().map(raw_table).collect::<Result<_, _>>()?),
        }),
    }
}

fn raw_table(t: &Table) -> Result<Raw, Refused> {
    Ok(Raw {
        span: t.span(),
        value: RawValue::Table(table_entries(t)?),
    })
}

fn table_entries(t: &Table) -> Result<Vec<(RawKey, Raw)>, Refused> {
    raw_entries(t.iter().map(|(k, v)| (t.key(k), raw_item(v))))
}

fn raw_value(v: &Value) -> Result<Raw, Refused> {
    let value = match v {
        Value::String(s) => RawValue::Str(s.value().clone()),
        Value::Integer(i) => RawValue::Int(*i.value()),
        Value::Float(x) => RawValue::Float(*x.value()),
        Value::Boolean(b) => RawValue::Bool(*b.value()),
        Value::Datetime(d) => return Err(d.span()),
        Value::Array(items) => {
            RawValue::Array(items.iter().map(raw_value).collect::<Result<_, _>>()?)
        }
        Value::InlineTable(t) => RawValue::Table(raw_entries(
            t.iter().map(|(k, v)| (t.key(k), raw_value(v))),
        )?),
    };
    Ok(Raw {
        span: v.span(),
        value,
    })
}

/// Keys with their values, in file order; stops at the first refused value.
fn raw_entries<'t>(
    entries: impl Iterator<Item = (Option<&'t Key>, Result<Raw, Refused>)>,
) -> Result<Vec<(RawKey, Raw)>, Refused> {
    entries
        .map(|(key, value)| {
            let key = RawKey {
                span: key.and_then(Key::span),
                name: key.map(|k| k.get().to_owned()).unwrap_or_default(),
            };
            Ok((key, value?))
        })
        .collect()
}

/// The first place known inside `value` (an implicit table is where its first key is).
fn first_place(value: &RawValue) -> Option<Range<usize>> {
    match value {
        RawValue::Table(entries) => entries.iter().find_map(|(k, v)| {
            k.span
                .clone()
                .or_else(|| v.span.clone())
                .or_else(|| first_place(&v.value))
        }),
        RawValue::Array(items) => items
            .iter()
            .find_map(|v| v.span.clone().or_else(|| first_place(&v.value))),
        _ => None,
    }
}

/// `raw` with a place for every key and value: its own, else that of what it holds, else
/// `parent`'s.
fn placed(raw: Raw, parent: &Range<usize>) -> Spanned<Node> {
    let span = raw
        .span
        .or_else(|| first_place(&raw.value))
        .unwrap_or_else(|| parent.clone());
    let node = match raw.value {
        RawValue::Str(s) => Node::Str(s),
        RawValue::Int(i) => Node::Int(i),
        RawValue::Float(x) => Node::Float(x),
        RawValue::Bool(b) => Node::Bool(b),
        RawValue::Array(items) => {
            Node::Array(items.into_iter().map(|v| placed(v, &span)).collect())
        }
        RawValue::Table(entries) => Node::Table(placed_entries(entries, &span)),
    };
    Spanned::new(span, node)
}

fn placed_entries(entries: Vec<(RawKey, Raw)>, parent: &Range<usize>) -> Vec<Entry> {
    entries
        .into_iter()
        .map(|(k, v)| {
            let value = placed(v, parent);
            let key_span = k.span.unwrap_or_else(|| value.span());
            (Spanned::new(key_span, k.name), value)
        })
        .collect()
}

/// Parses TOML text into a spanned tree, turning syntax errors into a diagnostic.
pub(crate) fn parse_toml(text: &str, rep: &mut Reporter<'_>) -> Option<Vec<Entry>> {
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(err) => {
            let span = err.span().unwrap_or(0..0);
            // toml_edit leaves some messages empty (a control character in a comment, say):
            // the place alone would leave the operator guessing.
            let message = match err.message().trim() {
                "" => "invalid TOML here (a control character or an unexpected token)".to_owned(),
                m => m.replace('\n', "; "),
            };
            rep.report(&span, "", DiagnosticKind::Syntax, message);
            return None;
        }
    };
    match table_entries(doc.as_table()) {
        Ok(entries) => Some(placed_entries(entries, &(0..0))),
        Err(span) => {
            let span = span.unwrap_or(0..0);
            rep.report(&span, "", DiagnosticKind::Syntax, DATETIME_REFUSED);
            None
        }
    }
}

/// Joins a key path and a child key.
pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A table being read: rejects unknown keys up front, then hands out values by name.
pub(crate) struct TableView<'n> {
    entries: &'n [Entry],
    pub(crate) span: Range<usize>,
    pub(crate) path: String,
}

impl<'n> TableView<'n> {
    /// `allowed` = the keys this section understands; anything else is reported (when
    /// `strict`) so typos do not silently fall back to defaults.
    pub(crate) fn new(
        rep: &mut Reporter<'_>,
        entries: &'n [Entry],
        span: Range<usize>,
        path: String,
        allowed: &[&str],
        strict: bool,
    ) -> Self {
        if strict {
            for (key, _) in entries {
                if !allowed.contains(&key.get_ref().as_str()) {
                    rep.report(
                        &key.span(),
                        &child(&path, key.get_ref()),
                        DiagnosticKind::UnknownKey,
                        format!("unknown key (expected one of: {})", allowed.join(", ")),
                    );
                }
            }
        }
        Self {
            entries,
            span,
            path,
        }
    }

    /// Reads `node` as a table; reports and returns `None` otherwise.
    pub(crate) fn of(
        rep: &mut Reporter<'_>,
        node: &'n Spanned<Node>,
        path: String,
        allowed: &[&str],
        strict: bool,
    ) -> Option<Self> {
        match node.get_ref() {
            Node::Table(entries) => {
                Some(Self::new(rep, entries, node.span(), path, allowed, strict))
            }
            other => {
                rep.report(
                    &node.span(),
                    &path,
                    DiagnosticKind::WrongType,
                    format!("expected a table, found {}", other.describe()),
                );
                None
            }
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'n Spanned<Node>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }

    /// Every key and value, in file order (for free-form tables such as `kafka.properties`).
    pub(crate) fn entries(&self) -> &'n [Entry] {
        self.entries
    }

    pub(crate) fn path_of(&self, key: &str) -> String {
        child(&self.path, key)
    }

    /// A string value, reporting a wrong type.
    pub(crate) fn string(
        &self,
        rep: &mut Reporter<'_>,
        key: &str,
    ) -> Option<(&'n str, Range<usize>)> {
        let node = self.get(key)?;
        if let Node::Str(s) = node.get_ref() {
            Some((s.as_str(), node.span()))
        } else {
            rep.report(
                &node.span(),
                &self.path_of(key),
                DiagnosticKind::WrongType,
                format!("expected a string, found {}", node.get_ref().describe()),
            );
            None
        }
    }

    /// An integer in `range`, reporting a wrong type or a value outside it.
    pub(crate) fn int_in(
        &self,
        rep: &mut Reporter<'_>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        unit: &str,
    ) -> Option<i64> {
        let node = self.get(key)?;
        match node.get_ref() {
            Node::Int(v) if range.contains(v) => Some(*v),
            Node::Int(v) => {
                rep.report(
                    &node.span(),
                    &self.path_of(key),
                    DiagnosticKind::OutOfRange,
                    format!(
                        "{v} is out of range: expected {}..={}{unit}",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
            other => {
                rep.report(
                    &node.span(),
                    &self.path_of(key),
                    DiagnosticKind::WrongType,
                    format!("expected an integer, found {}", other.describe()),
                );
                None
            }
        }
    }

    /// One of `words`, reporting anything else.
    /// An `"ip:port"` string; `example` shows the expected form in the refusal.
    pub(crate) fn socket_addr(
        &self,
        rep: &mut Reporter<'_>,
        key: &str,
        example: &str,
    ) -> Option<std::net::SocketAddr> {
        let (addr, span) = self.string(rep, key)?;
        if let Ok(a) = addr.parse() {
            return Some(a);
        }
        rep.report(
            &span,
            &self.path_of(key),
            DiagnosticKind::InvalidValue,
            format!("expected \"ip:port\" such as {example}, found {addr:?}"),
        );
        None
    }

    pub(crate) fn word(
        &self,
        rep: &mut Reporter<'_>,
        key: &str,
        words: &[&str],
    ) -> Option<(usize, Range<usize>)> {
        let node = self.get(key)?;
        let found = match node.get_ref() {
            Node::Str(s) => {
                if let Some(i) = words.iter().position(|w| w == s) {
                    return Some((i, node.span()));
                }
                format!("{s:?}")
            }
            other => other.describe(),
        };
        rep.report(
            &node.span(),
            &self.path_of(key),
            DiagnosticKind::InvalidValue,
            format!("expected {}, found {found}", one_of(words)),
        );
        None
    }

    /// Array of tables (`[[x]]` or `x = [{…}]`), reporting non-table elements.
    pub(crate) fn tables(
        &self,
        rep: &mut Reporter<'_>,
        key: &str,
    ) -> Vec<(usize, &'n Spanned<Node>)> {
        let Some(node) = self.get(key) else {
            return Vec::new();
        };
        let Node::Array(items) = node.get_ref() else {
            rep.report(
                &node.span(),
                &self.path_of(key),
                DiagnosticKind::WrongType,
                format!(
                    "expected an array of tables, found {}",
                    node.get_ref().describe()
                ),
            );
            return Vec::new();
        };
        items.iter().enumerate().collect()
    }
}

/// `"on" or "off"`, `"a", "b" or "c"`.
pub(crate) fn one_of(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
    match quoted.split_last() {
        None => String::from("nothing"),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_of_lists_words() {
        assert_eq!(one_of(&["on", "off"]), r#""on" or "off""#);
        assert_eq!(one_of(&["a", "b", "c"]), r#""a", "b" or "c""#);
        assert_eq!(one_of(&["x"]), r#""x""#);
    }

    #[test]
    fn toml_tree_keeps_spans() {
        let text = "[kafka]\nswitch = \"maybe\"\n";
        let mut rep = Reporter::new(std::path::Path::new("t.toml"), text);
        let root = parse_toml(text, &mut rep).unwrap_or_default();
        let (key, value) = &root[0];
        assert_eq!(key.get_ref(), "kafka");
        let Node::Table(inner) = value.get_ref() else {
            panic!("not a table")
        };
        assert_eq!(&text[inner[0].1.span()], "\"maybe\"");
    }

    /// Found by the `config_toml` fuzz target: an escape character in a comment gave a
    /// diagnostic with a place and no message.
    #[test]
    fn syntax_errors_always_say_something() {
        let text = "#!/bin/bash\n#\n# Build script\u{1b}for\n";
        let mut rep = Reporter::new(std::path::Path::new("t.toml"), text);
        assert!(parse_toml(text, &mut rep).is_none());
        let d = &rep.diagnostics[0];
        assert_eq!((d.line, d.kind), (3, DiagnosticKind::Syntax));
        assert!(!d.message.is_empty(), "{d}");
    }

    #[test]
    fn datetimes_are_reported_plainly() {
        let text = "\n[global]\nwhen = 1979-05-27\n";
        let mut rep = Reporter::new(std::path::Path::new("t.toml"), text);
        assert!(parse_toml(text, &mut rep).is_none());
        let d = &rep.diagnostics[0];
        assert_eq!(d.line, 3);
        assert!(d.message.contains("date/time"), "{}", d.message);
    }

    #[test]
    fn into_toml_round_trips() {
        let text = "a = [1, 2.5, true, \"s\", { b = 1 }]";
        let mut rep = Reporter::new(std::path::Path::new("t.toml"), text);
        let root = parse_toml(text, &mut rep).unwrap_or_default();
        let value = Node::Table(root).into_toml();
        let expected: toml::Value = toml::from_str(text).unwrap_or(toml::Value::Boolean(false));
        assert_eq!(value, expected);
    }
}
