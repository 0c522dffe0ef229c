//! What probes hand in ([`Row`], [`Batch`]) and what snapshots hand out ([`Record`],
//! [`TableSnapshot`]), with the packed form records are stored in.

use std::sync::Arc;

use super::meta::{FieldType, TableMeta};
use super::value::{self, Value, ValueRef};

/// One row of probe output: `values` are positional, in the table's meta field order.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub table: String,
    pub values: Vec<Value>,
}

/// What probes send to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Batch {
    /// Rows of any tables, each upserted.
    Rows(Vec<Row>),
    /// What changed in a table that one probe owns whole: `upserts` (rows in meta order) are
    /// written, the records with the keys in `removed` (key field values, in meta order) are
    /// dropped, and with `refresh_rest` every other record of the table counts as written now
    /// (unchanged: its age restarts and sinks that send what was written, Kafka, send it again).
    /// With `replace`, the records written before it that this delta does not write are dropped
    /// when it ends: a probe's first delta after it (re)started holds all it knows, and records
    /// of an earlier run of it must not be refreshed forever. With `more`, the delta goes on in
    /// the next `TableDelta` of the table (a large one sent in pieces, so that rows in their
    /// fat form are never all in memory at once); a `replace` then ends with the last piece,
    /// and until then the earlier records stay visible (and make room when the table is full).
    TableDelta {
        table: String,
        upserts: Vec<Vec<Value>>,
        removed: Vec<Vec<Value>>,
        refresh_rest: bool,
        replace: bool,
        more: bool,
    },
}

impl From<Vec<Row>> for Batch {
    fn from(rows: Vec<Row>) -> Self {
        Self::Rows(rows)
    }
}

impl Batch {
    /// Rows it writes (upserts), for accounting.
    pub fn len(&self) -> usize {
        match self {
            Self::Rows(r) => r.len(),
            Self::TableDelta { upserts, .. } => upserts.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One version of a record, as snapshots hand it out. Read its values with
/// [`TableSnapshot::values`].
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Shared with the store and every snapshot that contains this version of the record.
    pub(super) data: Arc<[u8]>,
    /// On the caller's clock (the agent's monotonic one).
    pub updated_ms: u64,
    /// The store's [`Store::version`] right after this record was written (or refreshed).
    pub version: u64,
}

/// An immutable view of the store; tables sorted by name, records sorted by key (see
/// [`super::value`]: numbers by value, strings by length then bytes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub tables: Vec<TableSnapshot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableSnapshot {
    pub meta: Arc<TableMeta>,
    /// Stored position → meta index.
    pub(super) layout: Arc<[usize]>,
    pub records: Vec<Record>,
}

impl TableSnapshot {
    /// `rows` (values in meta order) as records of a snapshot, without a store: for sinks' tests
    /// and benchmarks. Values are not checked.
    pub fn from_rows(meta: TableMeta, rows: &[Vec<Value>], updated_ms: u64) -> Self {
        let layout = layout(&meta);
        let mut buf = Vec::new();
        let records = rows
            .iter()
            .map(|r| {
                encode_row(
                    &layout,
                    meta.fields
                        .iter()
                        .filter(|f| f.ty == FieldType::Key)
                        .count(),
                    r,
                    &mut buf,
                );
                Record {
                    data: Arc::from(&buf[..]),
                    updated_ms,
                    version: 1,
                }
            })
            .collect();
        Self {
            meta: Arc::new(meta),
            layout,
            records,
        }
    }

    /// The values of `record` (one of this table's) in meta order, into `out`.
    pub fn values<'a>(&self, record: &'a Record, out: &mut Vec<ValueRef<'a>>) {
        out.clear();
        out.resize(self.layout.len(), ValueRef::Empty);
        let stored = record.data.get(2..).unwrap_or_default();
        for (pos, v) in value::decode_all(stored).enumerate() {
            if let Some(slot) = self.layout.get(pos).and_then(|&i| out.get_mut(i)) {
                *slot = v;
            }
        }
    }

    /// Every record's values as the text a sink writes (for tests and diagnostics).
    pub fn texts(&self) -> Vec<Vec<String>> {
        let mut buf = Vec::new();
        self.records
            .iter()
            .map(|r| {
                self.values(r, &mut buf);
                buf.iter().map(ToString::to_string).collect()
            })
            .collect()
    }
}

/// Stored position → meta index: the key fields first, then the others.
pub(super) fn layout(meta: &TableMeta) -> Arc<[usize]> {
    let keys = meta
        .fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.ty == FieldType::Key);
    let rest = meta
        .fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.ty != FieldType::Key);
    keys.chain(rest).map(|(i, _)| i).collect()
}

/// Packs `values` (meta order) into `buf`: key length, key fields, the rest (see the store's
/// module doc).
/// `false` when the key part is too long to store (64 KiB).
pub(super) fn encode_row(
    layout: &[usize],
    nkeys: usize,
    values: &[Value],
    buf: &mut Vec<u8>,
) -> bool {
    buf.clear();
    buf.extend_from_slice(&[0, 0]);
    for (pos, &i) in layout.iter().enumerate() {
        if pos == nkeys {
            let Ok(len) = u16::try_from(buf.len() - 2) else {
                return false;
            };
            buf[..2].copy_from_slice(&len.to_be_bytes());
        }
        value::encode(values.get(i).map_or(ValueRef::Empty, Value::as_ref), buf);
    }
    if nkeys == layout.len() {
        let Ok(len) = u16::try_from(buf.len() - 2) else {
            return false;
        };
        buf[..2].copy_from_slice(&len.to_be_bytes());
    }
    true
}

/// The key part of a packed record.
pub(super) fn key_of(data: &[u8]) -> &[u8] {
    let len = data
        .get(..2)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    data.get(2..2 + len).unwrap_or_default()
}

/// One field's values across records, packed back to back in the store's form (a few bytes a
/// number) and read back in the order pushed. A sink that reads a table field by field (the
/// exposition format: one family after another) gathers them in one pass over the records, and
/// then reads each field's values sequentially instead of visiting every record again: a
/// record's bytes are a pointer away, and at 100 k records each visit is a cache miss.
#[derive(Debug, Clone, Default)]
pub struct Column {
    bytes: Vec<u8>,
}

impl Column {
    pub fn push(&mut self, v: ValueRef<'_>) {
        value::encode(v, &mut self.bytes);
    }

    /// The values in the order pushed.
    pub fn iter(&self) -> impl Iterator<Item = ValueRef<'_>> {
        value::decode_all(&self.bytes)
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::imdb::FieldType;

    #[test]
    fn a_column_gives_back_what_was_pushed_in_order() {
        let values = [
            Value::Empty,
            Value::U64(0),
            Value::U64(u64::MAX),
            Value::I64(-5),
            Value::F64(1.5),
            Value::F64(f64::NEG_INFINITY),
            FieldType::Histogram
                .parse_value("0.001=2 +Inf=3 sum=0.5")
                .unwrap(),
            Value::U64(7),
        ];
        let mut column = Column::default();
        assert!(column.is_empty());
        for v in &values {
            column.push(v.as_ref());
        }
        let back: Vec<String> = column.iter().map(|v| v.to_string()).collect();
        let want: Vec<String> = values.iter().map(ToString::to_string).collect();
        assert_eq!(back, want);
        assert!(
            column.len() < 8 * values.len() + 40,
            "{} bytes",
            column.len()
        );
    }
}
