//! The JSON of Kafka messages (see the parent module's doc for the layout): writers only, each
//! value encoded as it is stored, never parsed.

use std::fmt::Write as _;

use super::Identity;
use crate::imdb::{FieldType, Record, TableMeta, TableSnapshot, ValueRef};

/// Appends `s` as a JSON string literal (RFC 8259 escaping).
pub fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    // Most values need no escaping: copy the runs between escapes whole rather than char by
    // char (this is on the path of every field of every record).
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        // `i` is at an ASCII byte, so both slices end on char boundaries.
        out.push_str(&s[run..i]);
        run = i + 1;
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// One record as the flat JSON object gala-spider reads (see the module doc), stamped with
/// the record's own `updated_ms`.
pub fn record_json(id: &Identity, table: &TableSnapshot, record: &Record) -> String {
    let mut out = String::new();
    write_record_json(
        &mut out,
        id,
        table,
        record,
        record.updated_ms,
        &mut Vec::new(),
    );
    out
}

/// [`record_json`] into `out` (cleared first), so that one buffer serves a whole pass;
/// `values` is scratch space, reused the same way.
pub fn write_record_json<'a>(
    out: &mut String,
    id: &Identity,
    table: &TableSnapshot,
    record: &'a Record,
    timestamp_ms: u64,
    values: &mut Vec<ValueRef<'a>>,
) {
    out.clear();
    let _ = write!(out, "{{\"timestamp\":{timestamp_ms}");
    out.push_str(",\"hostname\":");
    write_json_str(out, &id.hostname);
    out.push_str(",\"machine_id\":");
    write_json_str(out, &id.machine_id);
    out.push_str(",\"table_name\":");
    write_json_str(out, &table.meta.name);
    table.values(record, values);
    for (field, value) in table.meta.fields.iter().zip(values.iter()) {
        out.push(',');
        write_json_str(out, &field.name);
        out.push(':');
        write_json_value(out, *value);
    }
    out.push('}');
}

/// A value as a JSON string: text escaped, numbers as decimal text.
fn write_json_value(out: &mut String, value: ValueRef<'_>) {
    match value {
        ValueRef::Str(s) => write_json_str(out, s),
        ValueRef::U64(v) => {
            out.push('"');
            out.push_str(itoa::Buffer::new().format(v));
            out.push('"');
        }
        // Numbers and histograms need no escaping.
        v => {
            let _ = write!(out, "\"{v}\"");
        }
    }
}

/// The message key: table name, then `|` and each key field's value.
pub fn record_key(table: &TableSnapshot, record: &Record) -> String {
    let mut key = String::new();
    write_record_key(&mut key, table, record, &mut Vec::new());
    key
}

/// [`record_key`] into `out` (cleared first).
pub fn write_record_key<'a>(
    out: &mut String,
    table: &TableSnapshot,
    record: &'a Record,
    values: &mut Vec<ValueRef<'a>>,
) {
    out.clear();
    out.push_str(&table.meta.name);
    table.values(record, values);
    for (field, value) in table.meta.fields.iter().zip(values.iter()) {
        if field.ty == FieldType::Key {
            let _ = write!(out, "|{value}");
        }
    }
}

fn json_names<'a>(out: &mut String, names: impl Iterator<Item = &'a str>) {
    out.push('[');
    for (i, n) in names.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(out, n);
    }
    out.push(']');
}

/// A table definition as published on the metadata topic (see the module doc).
pub fn metadata_json(meta: &TableMeta, now_ms: u64) -> String {
    let mut out = String::with_capacity(256);
    let _ = write!(out, "{{\"timestamp\":{now_ms}");
    for key in ["meta_name", "table_name", "entity_name"] {
        let _ = write!(out, ",\"{key}\":");
        write_json_str(&mut out, &meta.name);
    }
    out.push_str(",\"version\":\"1\",\"description\":");
    write_json_str(&mut out, &meta.description);
    let of = |pred: fn(FieldType) -> bool| {
        meta.fields
            .iter()
            .filter(move |f| pred(f.ty))
            .map(|f| f.name.as_str())
    };
    out.push_str(",\"keys\":");
    json_names(&mut out, of(|t| t == FieldType::Key));
    out.push_str(",\"labels\":");
    json_names(&mut out, of(|t| t == FieldType::Label));
    out.push_str(",\"metrics\":");
    json_names(&mut out, of(FieldType::is_metric));
    out.push_str(",\"fields\":[");
    for (i, f) in meta.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        write_json_str(&mut out, &f.name);
        out.push_str(",\"type\":");
        write_json_str(&mut out, f.ty.as_str());
        out.push_str(",\"description\":");
        write_json_str(&mut out, &f.description);
        out.push('}');
    }
    out.push_str("]}");
    out
}
