//! Tables of latest-per-key records, with limits, ageing and drop accounting.
//!
//! A record is one packed byte string ([`super::value`]): the key fields first (in meta order),
//! then the other fields, behind a 2-byte length of the key part. The record set of a table is
//! ordered by those key bytes, so the key is not stored twice, and snapshots share the byte
//! strings (`Arc`) rather than copying them. About 80 bytes of values for a `tcp_link` record,
//! plus 16 of `Arc` header and 32 of set entry.

use std::borrow::Borrow;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use super::error::ImdbError;
use super::meta::{FieldType, TableMeta};
use super::row::{Batch, Record, Row, Snapshot, TableSnapshot, encode_row, key_of, layout};
use super::value::Value;

/// Bounds on what the store may hold (gala-gopher's `imdb` config section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_tables: usize,
    /// Per table, unless its meta says otherwise ([`TableMeta::max_records`]).
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

/// Table name under which drops for unregistered tables are counted once
/// [`UNKNOWN_TABLE_NAMES`] distinct names have been seen: a misbehaving probe printing garbage
/// table names must not grow the drop counters (and their metric series) without bound.
/// Parentheses keep it from clashing with any valid table name.
pub const OTHER_TABLE: &str = "(other)";
/// How many distinct unregistered table names get their own drop counter.
pub const UNKNOWN_TABLE_NAMES: usize = 16;

/// Drop reason for records aged out by [`Store::expire`].
pub const REASON_EXPIRED: &str = "expired";
/// Drop reason for the rows of a batch the ingest task was storing when it panicked
/// ([`Store::count_lost`]).
pub const REASON_INGEST_PANIC: &str = "ingest_panic";

/// A record in its table's set, ordered (and looked up) by its key bytes.
#[derive(Debug)]
struct Entry {
    data: Arc<[u8]>,
    // Cells: a refresh rewrites the stamps in place (they are not part of the order).
    updated_ms: Cell<u64>,
    version: Cell<u64>,
}

impl Entry {
    fn key(&self) -> &[u8] {
        key_of(&self.data)
    }
}

impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(other.key())
    }
}

struct Table {
    meta: Arc<TableMeta>,
    /// Stored position → meta index: the key fields first, then the others.
    layout: Arc<[usize]>,
    nkeys: usize,
    max_records: usize,
    records: BTreeSet<Entry>,
    /// (ms, version) of the last delta with `refresh_rest`: a record written before it counts
    /// as written then. Keeps a refresh O(1) whatever the table's size.
    refreshed: (u64, u64),
    /// A `replace` delta in pieces is under way: records of this version or older that it has
    /// not written again are dropped when it ends.
    replacing: Option<u64>,
}

impl Table {
    fn stamps(&self, e: &Entry) -> (u64, u64) {
        (
            e.updated_ms.get().max(self.refreshed.0),
            e.version.get().max(self.refreshed.1),
        )
    }

    /// Ends a `replace`: drops the records written before it and not since.
    fn end_replace(&mut self) {
        if let Some(before) = self.replacing.take() {
            self.records.retain(|e| e.version.get() > before);
        }
    }
}

pub struct Store {
    limits: Limits,
    tables: BTreeMap<String, Table>,
    version: u64,
    /// Cumulative; survives unregistering so that exported counters never go backwards.
    drops: BTreeMap<(String, &'static str), u64>,
    ingested: BTreeMap<String, u64>,
    unknown_names: usize,
    /// Reused for encoding rows: an unchanged row costs no allocation.
    scratch: Vec<u8>,
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
            scratch: Vec::with_capacity(256),
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
        let table = Table {
            layout: layout(&meta),
            nkeys: meta
                .fields
                .iter()
                .filter(|f| f.ty == FieldType::Key)
                .count(),
            max_records: meta.max_records.unwrap_or(self.limits.max_records),
            meta: Arc::new(meta),
            records: BTreeSet::new(),
            refreshed: (0, 0),
            replacing: None,
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

    /// Applies a probe's batch; rejected rows are counted (see [`Store::upsert`]) and logged at
    /// debug level. Returns how many rows were rejected.
    pub fn apply(&mut self, batch: Batch, now_ms: u64) -> usize {
        let mut rejected = 0;
        let mut note = |r: Result<(), ImdbError>| {
            if let Err(e) = r {
                tracing::debug!(table = e.table(), "row rejected: {e}");
                rejected += 1;
            }
        };
        match batch {
            Batch::Rows(rows) => {
                for row in rows {
                    note(self.upsert(row, now_ms));
                }
            }
            Batch::TableDelta {
                table,
                upserts,
                removed,
                refresh_rest,
                replace,
                more,
            } => {
                if replace && let Some(t) = self.tables.get_mut(&table) {
                    t.replacing = Some(self.version);
                }
                for values in &removed {
                    self.remove(&table, values);
                }
                for values in upserts {
                    let r = self.try_upsert(&table, &values, now_ms);
                    if let Err(err) = &r {
                        self.count_drop(err.table(), err.reason(), 1);
                    }
                    note(r);
                }
                if !more && let Some(t) = self.tables.get_mut(&table) {
                    t.end_replace();
                }
                if refresh_rest && let Some(t) = self.tables.get_mut(&table) {
                    self.version += 1;
                    t.refreshed = (now_ms, self.version);
                }
            }
        }
        rejected
    }

    /// Drops the record whose key fields are `values` (in meta order; a full row also works).
    pub fn remove(&mut self, table: &str, values: &[Value]) -> bool {
        let Some(t) = self.tables.get_mut(table) else {
            return false;
        };
        let keys: Vec<Value> = if values.len() == t.meta.fields.len() {
            values.to_vec()
        } else {
            // Key values only: put them at their fields' places.
            let mut full = vec![Value::Empty; t.meta.fields.len()];
            for (&i, v) in t.layout[..t.nkeys].iter().zip(values) {
                full[i] = v.clone();
            }
            full
        };
        if !encode_row(&t.layout, t.nkeys, &keys, &mut self.scratch) {
            return false;
        }
        t.records.remove(key_of(&self.scratch))
    }

    /// Inserts or replaces the record for the row's key. A rejected row is counted under its
    /// table and [`ImdbError::reason`] before the error is returned.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "a row is handed over to the store, as in a batch"
    )]
    pub fn upsert(&mut self, row: Row, now_ms: u64) -> Result<(), ImdbError> {
        let result = self.try_upsert(&row.table, &row.values, now_ms);
        if let Err(err) = &result {
            self.count_drop(err.table(), err.reason(), 1);
        }
        result
    }

    fn try_upsert(&mut self, name: &str, values: &[Value], now_ms: u64) -> Result<(), ImdbError> {
        let Some(table) = self.tables.get_mut(name) else {
            return Err(ImdbError::UnknownTable {
                table: name.to_owned(),
            });
        };
        let meta = &table.meta;
        if values.len() != meta.fields.len() {
            return Err(ImdbError::FieldCount {
                table: name.to_owned(),
                expected: meta.fields.len(),
                got: values.len(),
            });
        }
        for (field, value) in meta.fields.iter().zip(values) {
            if let Err(why) = field.ty.check(value.as_ref()) {
                return Err(ImdbError::BadValue {
                    table: name.to_owned(),
                    field: field.name.clone(),
                    value: value.to_string(),
                    why,
                });
            }
        }
        if !encode_row(&table.layout, table.nkeys, values, &mut self.scratch) {
            return Err(ImdbError::BadValue {
                table: name.to_owned(),
                field: String::new(),
                value: String::new(),
                why: "key fields longer than 64 KiB",
            });
        }
        let version = self.version + 1;
        if table.records.len() >= table.max_records
            && !table.records.contains(key_of(&self.scratch))
        {
            // A full table under a replace: the earlier records left make room first.
            table.end_replace();
        }
        match table.records.get(key_of(&self.scratch)) {
            // Same values: refresh in place, nothing allocated.
            Some(old) if *old.data == self.scratch[..] => {
                old.updated_ms.set(now_ms);
                old.version.set(version);
            }
            Some(_) => {
                table.records.replace(Entry {
                    data: Arc::from(&self.scratch[..]),
                    updated_ms: Cell::new(now_ms),
                    version: Cell::new(version),
                });
            }
            None if table.records.len() >= table.max_records => {
                return Err(ImdbError::RecordLimit {
                    table: name.to_owned(),
                    limit: table.max_records,
                });
            }
            None => {
                table.records.insert(Entry {
                    data: Arc::from(&self.scratch[..]),
                    updated_ms: Cell::new(now_ms),
                    version: Cell::new(version),
                });
            }
        }
        self.version = version;
        match self.ingested.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                self.ingested.insert(name.to_owned(), 1);
            }
        }
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
            let refreshed = table.refreshed.0;
            // A table refreshed whole within the timeout (a probe's delta with `refresh_rest`)
            // has no record to drop: skip its walk, which at 100 k links would otherwise
            // visit every record every second.
            if now_ms.saturating_sub(refreshed) <= timeout {
                continue;
            }
            let before = table.records.len();
            table
                .records
                .retain(|r| now_ms.saturating_sub(r.updated_ms.get().max(refreshed)) <= timeout);
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

    /// Counts `rows` rows of `table` as lost: the batch they came in was being stored when
    /// the ingest task panicked (some of them may have been written before the panic).
    pub fn count_lost(&mut self, table: &str, rows: u64) {
        self.count_drop(table, REASON_INGEST_PANIC, rows);
    }

    /// Every record. Costs one `Arc` clone per record, no copy of values.
    pub fn snapshot(&self) -> Snapshot {
        self.collect(0, true)
    }

    /// Records written (or refreshed) after `version`; tables without such records are left
    /// out.
    pub fn changed_since(&self, version: u64) -> Snapshot {
        self.collect(version, false)
    }

    fn collect(&self, after: u64, keep_empty: bool) -> Snapshot {
        let tables = self
            .tables
            .values()
            .map(|t| TableSnapshot {
                meta: Arc::clone(&t.meta),
                layout: Arc::clone(&t.layout),
                records: t
                    .records
                    .iter()
                    .filter_map(|e| {
                        let (updated_ms, version) = t.stamps(e);
                        (version > after).then(|| Record {
                            data: Arc::clone(&e.data),
                            updated_ms,
                            version,
                        })
                    })
                    .collect(),
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
