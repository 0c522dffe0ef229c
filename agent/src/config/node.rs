//! A value tree in which every value and key remembers where it came from.
//!
//! Both readers (TOML via the `toml` crate, libconfig via our own parser) produce this tree, and
//! the model code walks it by hand instead of using serde derives: a derive stops at the first
//! problem and loses track of positions, while the walk reports every problem with its line and
//! key path.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

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

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(Node::Int)
            .map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<Spanned<String>, Spanned<Node>>()? {
            entries.push(entry);
        }
        Ok(Node::Table(entries))
    }
}

/// Parses TOML text into a spanned tree, turning syntax errors into a diagnostic.
pub(crate) fn parse_toml(text: &str, rep: &mut Reporter<'_>) -> Option<Vec<Entry>> {
    match toml::from_str::<Node>(text) {
        Ok(Node::Table(entries)) => Some(entries),
        Ok(other) => {
            rep.report(
                &(0..0),
                "",
                DiagnosticKind::Syntax,
                format!("expected a table, found {}", other.describe()),
            );
            None
        }
        Err(err) => {
            let span = err.span().unwrap_or(0..0);
            // Datetimes arrive as a private marker map whose key cannot carry a span; no
            // setting here takes a date, so say that plainly instead of leaking the marker.
            let message = if err.message().contains("$__toml_private_datetime") {
                "date/time values are not accepted in this file".to_owned()
            } else {
                err.message().trim().replace('\n', "; ")
            };
            rep.report(&span, "", DiagnosticKind::Syntax, message);
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
