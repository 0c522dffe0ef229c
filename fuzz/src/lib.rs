//! Oracles and input shapes shared by the fuzz targets (fuzz_targets/*.rs).
//!
//! A fuzz target that only checks "no panic" finds crashes but not wrong output; these helpers
//! let the writer targets check what they wrote with a reader that is not the writer's own
//! code: [`exposition`] is a strict line parser of the Prometheus text format and OpenMetrics,
//! [`entries`] reads a JSON object keeping every key in order (duplicates included). The
//! reader targets share [`check_diagnostics`]: whatever the input, a diagnostic points inside
//! the text. [`Tables`] is the structured input of the writer targets: tables whose names obey
//! the meta readers' identifier rule, with arbitrary descriptions and row texts.

use std::path::Path;

use arbitrary::Arbitrary;
use gopher::config::ConfigError;
use gopher::imdb::{FieldMeta, FieldType, ImdbError, Limits, Snapshot, Store, TableMeta};
use gopher::probes::extension::line;

pub mod exposition;
pub mod json;

pub use json::entries;

/// Every diagnostic of `err` names `origin` and a line:column inside `text` (1-based; the
/// column may sit one past a line's last character, where a missing token belongs).
pub fn check_diagnostics(err: &ConfigError, text: &str, origin: &Path) {
    let lines: Vec<&str> = text.split('\n').collect();
    for d in err.diagnostics() {
        assert_eq!(d.file, origin, "{d}");
        assert!(d.line >= 1 && d.line <= lines.len(), "line out of text: {d}");
        let width = lines[d.line - 1].chars().count();
        assert!(d.column >= 1 && d.column <= width + 1, "column out of line: {d}");
        assert!(!d.message.is_empty(), "empty message: {d}");
    }
    // Display is what operators read; it must not panic whatever the content.
    let _ = err.to_string();
}

/// An identifier as the meta readers accept it (`[A-Za-z_][A-Za-z0-9_]*`), from raw bytes.
#[derive(Debug, Clone)]
pub struct Ident(pub String);

impl<'a> Arbitrary<'a> for Ident {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        const FIRST: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_";
        const REST: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789";
        // Names that meet special cases in the writers (renames, reserved suffixes, `le`,
        // the `machine_id` label), so that clashes between them are tried often.
        const KNOWN: &[&str] = &[
            "tcp_link", "process_name", "comm", "rtt", "srtt", "packets_in", "segs_in", "le",
            "machine_id", "x", "x_total", "x_count", "x_sum", "x_bucket", "a_b", "a", "b_c",
            "timestamp", "hostname", "table_name", "__x",
        ];
        if u.ratio(1, 3)? {
            return Ok(Self((*u.choose(KNOWN)?).to_owned()));
        }
        let len = u.int_in_range(1..=12)?;
        let mut s = String::with_capacity(len);
        s.push(char::from(*u.choose(FIRST)?));
        for _ in 1..len {
            s.push(char::from(*u.choose(REST)?));
        }
        Ok(Self(s))
    }
}

#[derive(Debug, Arbitrary)]
pub struct FieldIn {
    pub name: Ident,
    pub ty: u8,
    pub description: String,
}

#[derive(Debug, Arbitrary)]
pub struct TableIn {
    pub name: Ident,
    pub description: String,
    pub fields: Vec<FieldIn>,
    /// Row texts as an extension probe would print them, one value per field.
    pub rows: Vec<Vec<String>>,
}

/// What the writer targets feed through the store.
#[derive(Debug, Arbitrary)]
pub struct Tables {
    pub tables: Vec<TableIn>,
}

/// Every field type, for targets that pick one from a byte.
pub const TYPES: [FieldType; 6] = [
    FieldType::Key,
    FieldType::Label,
    FieldType::Counter,
    FieldType::Gauge,
    FieldType::Histogram,
    FieldType::Unknown,
];

impl Tables {
    /// The tables as the agent would hold them: each definition registered in a real
    /// [`Store`] (one the store refuses, e.g. duplicate field names, is left out, as the meta
    /// readers would have refused it), each row through the extension probes' ingest rule
    /// ([`line::to_row`]) and upserted. Returns the snapshot, ready for a sink.
    pub fn snapshot(&self) -> Snapshot {
        let mut store = Store::new(Limits::default());
        for t in self.tables.iter().take(6) {
            let mut names = std::collections::HashSet::new();
            let fields: Vec<FieldMeta> = t
                .fields
                .iter()
                .take(10)
                .filter(|f| names.insert(f.name.0.clone()))
                .map(|f| FieldMeta {
                    name: f.name.0.clone(),
                    ty: TYPES[usize::from(f.ty) % TYPES.len()],
                    description: f.description.clone(),
                })
                .collect();
            let meta = TableMeta {
                name: t.name.0.clone(),
                description: t.description.clone(),
                fields,
                max_records: None,
            };
            if meta.fields.is_empty() || store.register(meta.clone()).is_err() {
                continue;
            }
            for row in t.rows.iter().take(16) {
                let mut values: Vec<&str> = row.iter().map(String::as_str).collect();
                values.resize(meta.fields.len(), "");
                if let Ok(row) = line::to_row(&meta, &values) {
                    let _ = store.upsert(row, 1_700_000_000_000);
                }
            }
        }
        store.snapshot()
    }
}

/// What the meta readers promise of the tables they accept: names by the identifier rule,
/// unique, at least one field per table, and a definition the store registers.
pub fn check_tables(tables: &[TableMeta]) {
    let ident = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let mut names = std::collections::HashSet::new();
    let mut store = Store::new(Limits::default());
    for t in tables {
        assert!(ident(&t.name), "bad table name {:?}", t.name);
        assert!(names.insert(&t.name), "table {:?} twice", t.name);
        assert!(!t.fields.is_empty(), "table {:?} without fields", t.name);
        let mut fields = std::collections::HashSet::new();
        for f in &t.fields {
            assert!(ident(&f.name), "bad field name {:?}", f.name);
            assert!(fields.insert(&f.name), "field {:?} twice", f.name);
        }
        // Limits (metric counts, …) are the store's to enforce at run time; a definition the
        // store finds invalid should have been refused by the reader, with a line and column.
        if let Err(e @ ImdbError::InvalidMeta { .. }) = store.register(t.clone()) {
            panic!("meta reader accepted what the store refuses: {e}");
        }
    }
}
