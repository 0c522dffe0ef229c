//! The extension-probe wire format: one row per line, `|table|v1|…|vN|`.
//!
//! Pure functions, no I/O. Unlike gala-gopher, empty tokens are values: `|t|a||c|` is three
//! values, the second one empty, so an empty string never shifts later columns.

use std::fmt;

use crate::imdb::{Row, TableMeta};

/// Longest line accepted, without its newline. gala-gopher allowed 1024; rows of wide tables
/// with long labels need more, and the bound is what keeps a runaway line from costing memory.
pub const MAX_LINE_BYTES: usize = 4096;

/// What a line turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// `|table|v1|…|vN|`: the table name and the values, in order, empty ones included.
    Row {
        table: &'a str,
        values: Vec<&'a str>,
    },
    /// Does not start with `|`: chatter, not a row (gala-gopher dropped these too).
    Ignored,
}

/// Why a line was not turned into a row. [`Rejection::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    NotUtf8,
    TooLong {
        limit: usize,
    },
    /// Starts with `|` but is not `|table|…|`.
    Malformed(&'static str),
    UnknownTable(String),
    FieldCount {
        table: String,
        expected: usize,
        got: usize,
    },
    BadValue {
        table: String,
        field: String,
        value: String,
        why: &'static str,
    },
}

impl Rejection {
    /// Every value [`Rejection::reason`] can return (label values of the rejection counter).
    pub const REASONS: [&'static str; 6] = [
        "not_utf8",
        "too_long",
        "malformed",
        "unknown_table",
        "field_count",
        "bad_value",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotUtf8 => "not_utf8",
            Self::TooLong { .. } => "too_long",
            Self::Malformed(_) => "malformed",
            Self::UnknownTable(_) => "unknown_table",
            Self::FieldCount { .. } => "field_count",
            Self::BadValue { .. } => "bad_value",
        }
    }
}

/// Probe output lands in logs: cut what it contributes to a message to a readable size.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotUtf8 => f.write_str("row is not valid UTF-8"),
            Self::TooLong { limit } => write!(f, "line longer than {limit} bytes"),
            Self::Malformed(why) => write!(f, "malformed row: {why}"),
            Self::UnknownTable(t) => write!(f, "unknown table {:?}", clip(t)),
            Self::FieldCount {
                table,
                expected,
                got,
            } => write!(
                f,
                "table {table:?} has {expected} fields but the row carries {got} values"
            ),
            Self::BadValue {
                table,
                field,
                value,
                why,
            } => write!(
                f,
                "table {table:?} field {field:?}: {why}: {:?}",
                clip(value)
            ),
        }
    }
}

/// Splits one line (without its `\n`) into table name and values.
///
/// A trailing `\r` and other trailing ASCII whitespace after the final `|` are not data. Lines
/// that do not start with `|` are [`Parsed::Ignored`], whatever their bytes.
pub fn parse_line(line: &[u8]) -> Result<Parsed<'_>, Rejection> {
    if line.first() != Some(&b'|') {
        return Ok(Parsed::Ignored);
    }
    if line.len() > MAX_LINE_BYTES {
        return Err(Rejection::TooLong {
            limit: MAX_LINE_BYTES,
        });
    }
    let text = std::str::from_utf8(line).map_err(|_| Rejection::NotUtf8)?;
    let text = text.trim_end_matches([' ', '\t', '\r']);
    // The leading `|` is one byte, so slicing after it stays on a char boundary.
    let Some(body) = text[1..].strip_suffix('|') else {
        return Err(Rejection::Malformed("the row does not end with '|'"));
    };
    let mut tokens = body.split('|');
    let table = tokens.next().unwrap_or_default();
    if table.is_empty() {
        return Err(Rejection::Malformed("empty table name"));
    }
    Ok(Parsed::Row {
        table,
        values: tokens.collect(),
    })
}

/// Checks parsed values against the table's definition and builds the row: each value goes
/// through [`crate::imdb::FieldType::parse_value`], the one rule, here where a bad number can be counted
/// against the probe that printed it.
pub fn to_row(meta: &TableMeta, values: &[&str]) -> Result<Row, Rejection> {
    if values.len() != meta.fields.len() {
        return Err(Rejection::FieldCount {
            table: meta.name.clone(),
            expected: meta.fields.len(),
            got: values.len(),
        });
    }
    let values = meta
        .fields
        .iter()
        .zip(values)
        .map(|(field, value)| {
            field
                .ty
                .parse_value(value)
                .map_err(|why| Rejection::BadValue {
                    table: meta.name.clone(),
                    field: field.name.clone(),
                    value: (*value).to_owned(),
                    why,
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Row {
        table: meta.name.clone(),
        values,
    })
}

/// The line a probe prints for `table` and `values` (the inverse of [`parse_line`]).
pub fn format_line(table: &str, values: &[&str]) -> String {
    let mut out = String::from("|");
    out.push_str(table);
    out.push('|');
    for v in values {
        out.push_str(v);
        out.push('|');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::imdb::{FieldMeta, FieldType, Value};
    use proptest::prelude::*;

    fn meta(fields: &[(&str, FieldType)]) -> TableMeta {
        TableMeta {
            name: "t".into(),
            description: String::new(),
            fields: fields
                .iter()
                .map(|(n, ty)| FieldMeta {
                    name: (*n).into(),
                    ty: *ty,
                    description: String::new(),
                })
                .collect(),
            max_records: None,
        }
    }

    fn row<'a>(table: &'a str, values: &[&'a str]) -> Parsed<'a> {
        Parsed::Row {
            table,
            values: values.to_vec(),
        }
    }

    #[test]
    fn rows_keep_empty_values_in_place() {
        assert_eq!(parse_line(b"|t|a|b|").unwrap(), row("t", &["a", "b"]));
        assert_eq!(parse_line(b"|t|a||c|").unwrap(), row("t", &["a", "", "c"]));
        assert_eq!(parse_line(b"|t||").unwrap(), row("t", &[""]));
        assert_eq!(parse_line(b"|t|||").unwrap(), row("t", &["", ""]));
        assert_eq!(parse_line(b"|t|").unwrap(), row("t", &[]));
        assert_eq!(parse_line(b"|t| a b |").unwrap(), row("t", &[" a b "]));
        assert_eq!(parse_line("|t|é|".as_bytes()).unwrap(), row("t", &["é"]));
    }

    #[test]
    fn line_endings_and_trailing_blanks_are_not_data() {
        assert_eq!(parse_line(b"|t|a|\r").unwrap(), row("t", &["a"]));
        assert_eq!(parse_line(b"|t|a| \t ").unwrap(), row("t", &["a"]));
    }

    #[test]
    fn lines_not_starting_with_a_bar_are_ignored() {
        for l in [&b""[..], b"hello", b" |t|a|", b"\xff\xfe", b"t|a|"] {
            assert_eq!(parse_line(l).unwrap(), Parsed::Ignored, "{l:?}");
        }
    }

    #[test]
    fn malformed_rows_are_rejected_with_a_reason() {
        let reason = |l: &[u8]| parse_line(l).unwrap_err().reason();
        assert_eq!(reason(b"|t|a"), "malformed");
        assert_eq!(reason(b"|"), "malformed");
        assert_eq!(reason(b"||"), "malformed");
        assert_eq!(reason(b"||a|"), "malformed");
        assert_eq!(reason(b"|t|\xff|"), "not_utf8");
        let long = format!("|t|{}|", "x".repeat(MAX_LINE_BYTES));
        assert_eq!(reason(long.as_bytes()), "too_long");
        let exact = format!("|t|{}|", "x".repeat(MAX_LINE_BYTES - 4));
        assert_eq!(exact.len(), MAX_LINE_BYTES);
        assert!(parse_line(exact.as_bytes()).is_ok());
    }

    #[test]
    fn rows_are_checked_against_the_meta() {
        let m = meta(&[
            ("k", FieldType::Key),
            ("c", FieldType::Counter),
            ("g", FieldType::Gauge),
            ("u", FieldType::Unknown),
        ]);
        let r = to_row(&m, &["a", "1", "", "anything"]).unwrap();
        assert_eq!(r.table, "t");
        assert_eq!(r.values, ["a", "1", "", "anything"]);
        assert_eq!(to_row(&m, &["a", "1"]).unwrap_err().reason(), "field_count");
        let e = to_row(&m, &["a", "1", "x", ""]).unwrap_err();
        assert_eq!(e.reason(), "bad_value");
        assert_eq!(
            e.to_string(),
            "table \"t\" field \"g\": not a number: \"x\""
        );
        assert_eq!(
            to_row(&m, &["a", "1 ", "", ""]).unwrap_err().reason(),
            "bad_value"
        );
        // Parsed once, here: numbers from now on (written back as `2500`, `-1.5`).
        assert_eq!(
            to_row(&m, &["a", "2.5e3", "-1.5", ""]).unwrap().values[1..3],
            [Value::F64(2500.0), Value::F64(-1.5)]
        );
        // A counter only counts.
        for bad in ["-1", "inf", "NaN"] {
            assert_eq!(
                to_row(&m, &["a", bad, "", ""]).unwrap_err().reason(),
                "bad_value"
            );
        }
    }

    #[test]
    fn every_reason_is_listed() {
        let all = [
            Rejection::NotUtf8,
            Rejection::TooLong { limit: 1 },
            Rejection::Malformed("x"),
            Rejection::UnknownTable("x".into()),
            Rejection::FieldCount {
                table: "t".into(),
                expected: 1,
                got: 2,
            },
            Rejection::BadValue {
                table: "t".into(),
                field: "f".into(),
                value: "v".into(),
                why: "w",
            },
        ];
        let reasons: Vec<_> = all.iter().map(Rejection::reason).collect();
        assert_eq!(reasons, Rejection::REASONS);
    }

    #[test]
    fn long_garbage_is_clipped_in_messages() {
        let e = Rejection::UnknownTable("é".repeat(100));
        assert!(e.to_string().len() < 100, "{e}");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_line(&bytes);
            let mut with_bar = vec![b'|'];
            with_bar.extend_from_slice(&bytes);
            let _ = parse_line(&with_bar);
        }

        #[test]
        fn round_trips_rows_with_empty_values(
            table in "[a-z_][a-z0-9_]{0,12}",
            values in proptest::collection::vec("[^|\n]{0,8}", 0..12),
        ) {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let line = format_line(&table, &refs);
            prop_assume!(line.len() <= MAX_LINE_BYTES);
            prop_assert_eq!(parse_line(line.as_bytes()).unwrap(), row(&table, &refs));
        }
    }
}
