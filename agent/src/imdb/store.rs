//! Tables of latest-per-key records, with limits, ageing and drop accounting.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::error::ImdbError;
use super::histogram;
use super::meta::{FieldType, TableMeta};

/// One line of probe output: `values` are positional, in the table's meta field order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub table: String,
    pub values: Vec<String>,
}

/// Bounds on what the store may hold (gala-gopher's `imdb` config section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_tables: usize,
    /// Per table.
    pub max_records: usize,
    /// Metric (counter/gauge/histogram) fields per table.
    pub max_metrics: usize,
    /// Records not refreshed for longer than this are dropped by [`Store::expire`]; 0 = never.
    pub record_timeout_ms: u64,
}

impl Default for Limits {
    /// gala-gopher's shipped defaults.
    fn default() -> Self {
        Self {
            max_tables: 1024,
            max_records: 1024,
            max_metrics: 1024,
            record_timeout_ms: 60_000,
        }
    }
}

/// The latest values seen for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Shared with every snapshot that contains this version of the record.
    pub values: Arc<[String]>,
    pub updated_ms: u64,
    /// The store's [`Store::version`] right after this record was written.
    pub version: u64,
}

/// An immutable view of the store; tables sorted by name, records sorted by key values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub tables: Vec<TableSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSnapshot {
    pub meta: Arc<TableMeta>,
    pub records: Vec<Record>,
}

/// Table name under which drops for unregistered tables are counted once
/// [`UNKNOWN_TABLE_NAMES`] distinct names have been seen: a misbehaving probe printing garbage
/// table names must not grow the drop counters (and their metric series) without bound.
/// Parentheses keep it from clashing with any valid table name.
pub const OTHER_TABLE: &str = "(other)";
/// How many distinct unregistered table names get their own drop counter.
pub const UNKNOWN_TABLE_NAMES: usize = 16;

/// Drop reason for records aged out by [`Store::expire`].
pub const REASON_EXPIRED: &str = "expired";

struct Table {
    meta: Arc<TableMeta>,
    /// Indices of the `key` fields: a record's identity is the values at these positions.
    keys: Vec<usize>,
    /// Keyed by the key values, which also gives snapshots a stable order.
    records: BTreeMap<Box<[String]>, Record>,
}

pub struct Store {
    limits: Limits,
    tables: BTreeMap<String, Table>,
    version: u64,
    /// Cumulative; survives unregistering so that exported counters never go backwards.
    drops: BTreeMap<(String, &'static str), u64>,
    ingested: BTreeMap<String, u64>,
    unknown_names: usize,
}

impl Store {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            tables: BTreeMap::new(),
            version: 0,
            drops: BTreeMap::new(),
            ingested: BTreeMap::new(),
            unknown_names: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Adds a table definition. Registering identical meta again is a no-op; different meta
    /// under the same name replaces the definition and discards its records, since their
    /// values were laid out for the old fields.
    pub fn register(&mut self, meta: TableMeta) -> Result<(), ImdbError> {
        validate(&meta, &self.limits)?;
        if let Some(existing) = self.tables.get(&meta.name) {
            if *existing.meta == meta {
                return Ok(());
            }
        } else if self.tables.len() >= self.limits.max_tables {
            return Err(ImdbError::TableLimit {
                table: meta.name,
                limit: self.limits.max_tables,
            });
        }
        let keys = meta
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.ty == FieldType::Key);
        let table = Table {
            keys: keys.map(|(i, _)| i).collect(),
            meta: Arc::new(meta),
            records: BTreeMap::new(),
        };
        self.tables.insert(table.meta.name.clone(), table);
        Ok(())
    }

    /// Removes a table and its records; its cumulative counters are kept.
    pub fn unregister(&mut self, table: &str) -> bool {
        self.tables.remove(table).is_some()
    }

    pub fn table(&self, name: &str) -> Option<&Arc<TableMeta>> {
        self.tables.get(name).map(|t| &t.meta)
    }

    /// Inserts or replaces the record for the row's key. A rejected row is counted under its
    /// table and [`ImdbError::reason`] before the error is returned.
    pub fn upsert(&mut self, row: Row, now_ms: u64) -> Result<(), ImdbError> {
        let result = self.try_upsert(row, now_ms);
        if let Err(err) = &result {
            self.count_drop(err.table(), err.reason(), 1);
        }
        result
    }

    fn try_upsert(&mut self, row: Row, now_ms: u64) -> Result<(), ImdbError> {
        let Some(table) = self.tables.get_mut(&row.table) else {
            return Err(ImdbError::UnknownTable { table: row.table });
        };
        let meta = &table.meta;
        if row.values.len() != meta.fields.len() {
            return Err(ImdbError::FieldCount {
                table: row.table,
                expected: meta.fields.len(),
                got: row.values.len(),
            });
        }
        for (field, value) in meta.fields.iter().zip(&row.values) {
            if let Err(why) = check_value(field.ty, value) {
                return Err(ImdbError::BadValue {
                    table: row.table,
                    field: field.name.clone(),
                    value: value.clone(),
                    why,
                });
            }
        }
        let key: Box<[String]> = table.keys.iter().map(|&i| row.values[i].clone()).collect();
        let version = self.version + 1;
        let record = Record {
            values: row.values.into(),
            updated_ms: now_ms,
            version,
        };
        if table.records.len() >= self.limits.max_records && !table.records.contains_key(&key) {
            return Err(ImdbError::RecordLimit {
                table: row.table,
                limit: self.limits.max_records,
            });
        }
        table.records.insert(key, record);
        self.version = version;
        *self.ingested.entry(row.table).or_default() += 1;
        Ok(())
    }

    /// Drops records not refreshed for longer than the record timeout; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let timeout = self.limits.record_timeout_ms;
        if timeout == 0 {
            return 0;
        }
        let mut expired = Vec::new();
        for (name, table) in &mut self.tables {
            let before = table.records.len();
            table
                .records
                .retain(|_, r| now_ms.saturating_sub(r.updated_ms) <= timeout);
            let gone = before - table.records.len();
            if gone > 0 {
                expired.push((name.clone(), gone));
            }
        }
        let mut total = 0;
        for (name, gone) in expired {
            total += gone;
            self.count_drop(&name, REASON_EXPIRED, gone as u64);
        }
        total
    }

    pub fn snapshot(&self) -> Snapshot {
        self.collect(|_| true, true)
    }

    /// Records written after `version`; tables without such records are left out.
    pub fn changed_since(&self, version: u64) -> Snapshot {
        self.collect(|r| r.version > version, false)
    }

    fn collect(&self, keep: impl Fn(&Record) -> bool, keep_empty: bool) -> Snapshot {
        let tables = self
            .tables
            .values()
            .map(|t| TableSnapshot {
                meta: Arc::clone(&t.meta),
                records: t.records.values().filter(|r| keep(r)).cloned().collect(),
            })
            .filter(|t| keep_empty || !t.records.is_empty())
            .collect();
        Snapshot { tables }
    }

    /// Highest record version handed out so far (0 before the first accepted row).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Cumulative drops per (table, reason), sorted.
    pub fn drops(&self) -> Vec<(String, &'static str, u64)> {
        self.drops
            .iter()
            .map(|((t, r), n)| (t.clone(), *r, *n))
            .collect()
    }

    /// Cumulative accepted rows per table, sorted.
    pub fn ingested(&self) -> Vec<(String, u64)> {
        self.ingested.iter().map(|(t, n)| (t.clone(), *n)).collect()
    }

    /// Current records per registered table, sorted.
    pub fn record_counts(&self) -> Vec<(String, usize)> {
        self.tables
            .iter()
            .map(|(name, t)| (name.clone(), t.records.len()))
            .collect()
    }

    fn count_drop(&mut self, table: &str, reason: &'static str, n: u64) {
        let key = (table.to_owned(), reason);
        if let Some(count) = self.drops.get_mut(&key) {
            *count += n;
            return;
        }
        let key = if self.tables.contains_key(table)
            || self.ingested.contains_key(table)
            || reason != "unknown_table"
        {
            key
        } else if self.unknown_names < UNKNOWN_TABLE_NAMES && is_identifier(table) {
            self.unknown_names += 1;
            key
        } else {
            (OTHER_TABLE.to_owned(), reason)
        };
        *self.drops.entry(key).or_default() += n;
    }
}

/// Empty means "no value" for every field type.
fn check_value(ty: FieldType, value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Ok(());
    }
    match ty {
        FieldType::Counter | FieldType::Gauge => {
            value.parse::<f64>().map(drop).map_err(|_| "not a number")
        }
        FieldType::Histogram => histogram::parse(value).map(drop),
        FieldType::Key | FieldType::Label | FieldType::Unknown => Ok(()),
    }
}

fn validate(meta: &TableMeta, limits: &Limits) -> Result<(), ImdbError> {
    let invalid = |why: String| ImdbError::InvalidMeta {
        table: meta.name.clone(),
        why,
    };
    if !is_identifier(&meta.name) {
        return Err(invalid(
            "table name must match [a-zA-Z_][a-zA-Z0-9_]*".into(),
        ));
    }
    if meta.fields.is_empty() {
        return Err(invalid("a table needs at least one field".into()));
    }
    let mut seen = HashSet::new();
    for field in &meta.fields {
        if !is_identifier(&field.name) {
            return Err(invalid(format!(
                "field name {:?} must match [a-zA-Z_][a-zA-Z0-9_]*",
                field.name
            )));
        }
        // Prometheus reserves label names starting with "__" for its own use.
        if field.ty.is_label() && field.name.starts_with("__") {
            return Err(invalid(format!(
                "key/label field {:?} must not start with \"__\"",
                field.name
            )));
        }
        if !seen.insert(field.name.as_str()) {
            return Err(invalid(format!("field {:?} is declared twice", field.name)));
        }
    }
    let count = meta.metric_count();
    if count > limits.max_metrics {
        return Err(ImdbError::MetricLimit {
            table: meta.name.clone(),
            count,
            limit: limits.max_metrics,
        });
    }
    Ok(())
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`: safe inside Prometheus metric and label names.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
