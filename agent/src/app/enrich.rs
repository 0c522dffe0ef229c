//! Container and pod labels on every table keyed by a process, added in one place for every
//! probe: native (`tcp_link`'s `tgid`) and extension tables (a `tgid` or `pid` key) alike.
//!
//! At registration such a table's meta gets the six labels of [`attrib::LABELS`] appended
//! ([`with_labels`]); probes keep writing rows in their own field order, and the ingest task
//! appends the labels' values to each row before it is stored ([`Enricher`]), looking the
//! process up outside the store's lock. Removals name keys only, so they need nothing.

use std::collections::HashMap;

use crate::{
    attrib::{self, Attributor},
    imdb::{Batch, FieldMeta, FieldType, Store, TableMeta, Value},
};

/// The key fields that name a process, in gala-gopher's tables and ours.
const PROCESS_KEYS: [&str; 2] = ["tgid", "pid"];

/// The position of the process key of `meta`, if it has one.
fn process_key(meta: &TableMeta) -> Option<usize> {
    meta.fields
        .iter()
        .position(|f| f.ty == FieldType::Key && PROCESS_KEYS.contains(&f.name.as_str()))
}

/// `meta` with the container labels appended when it is keyed by a process and does not name
/// them itself (an extension probe may label its rows on its own).
pub fn with_labels(mut meta: TableMeta) -> TableMeta {
    let own = meta
        .fields
        .iter()
        .any(|f| attrib::LABELS.contains(&f.name.as_str()));
    if process_key(&meta).is_none() || own {
        return meta;
    }
    for (name, what) in attrib::LABELS.iter().zip([
        "container (short id) the process runs in; empty on the host",
        "name of that container",
        "image of that container",
        "uid of the Kubernetes pod of that container",
        "name of that pod",
        "namespace of that pod",
    ]) {
        meta.fields.push(FieldMeta {
            name: (*name).to_owned(),
            ty: FieldType::Label,
            description: what.to_owned(),
        });
    }
    meta
}

/// Where to put the labels of a table's rows: its process key, and the row length probes write.
#[derive(Debug, Clone, Copy)]
struct Target {
    pid: usize,
    written: usize,
}

/// The tables of `batch` that carry container labels (registered through [`with_labels`]).
fn targets(store: &Store, batch: &Batch) -> HashMap<String, Target> {
    let mut out = HashMap::new();
    let mut look = |table: &str| {
        if out.contains_key(table) {
            return;
        }
        let Some(meta) = store.table(table) else {
            return;
        };
        let n = meta.fields.len();
        let labelled = n > attrib::LABELS.len()
            && meta.fields[n - attrib::LABELS.len()..]
                .iter()
                .map(|f| f.name.as_str())
                .eq(attrib::LABELS);
        if let (true, Some(pid)) = (labelled, process_key(meta)) {
            out.insert(
                table.to_owned(),
                Target {
                    pid,
                    written: n - attrib::LABELS.len(),
                },
            );
        }
    };
    match batch {
        Batch::Rows(rows) => rows.iter().for_each(|r| look(&r.table)),
        Batch::TableDelta { table, .. } => look(table),
    }
    out
}

/// Appends the labels to rows on their way into the store.
#[derive(Debug, Default)]
pub struct Enricher {
    attrib: Attributor,
}

impl Enricher {
    /// Labels `batch`'s rows for the tables of `store` that want them. The store is only read
    /// (under its lock, briefly); /proc and the runtimes' files are read without it.
    pub fn label(&mut self, batch: &mut Batch, store: &std::sync::Mutex<Store>, now_ms: u64) {
        let targets = {
            let store = store
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            targets(&store, batch)
        };
        if targets.is_empty() {
            return;
        }
        match batch {
            Batch::Rows(rows) => {
                for r in rows {
                    if let Some(t) = targets.get(&r.table) {
                        self.append(&mut r.values, *t, now_ms);
                    }
                }
            }
            Batch::TableDelta { table, upserts, .. } => {
                if let Some(t) = targets.get(table.as_str()) {
                    for values in upserts {
                        self.append(values, *t, now_ms);
                    }
                }
            }
        }
    }

    /// A row of the wrong length is left as it is: the store refuses it and counts it.
    fn append(&mut self, values: &mut Vec<Value>, t: Target, now_ms: u64) {
        if values.len() != t.written {
            return;
        }
        let pid = match &values[t.pid] {
            Value::U64(p) => u32::try_from(*p).ok(),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        };
        let container = pid.and_then(|p| self.attrib.of_pid(p, now_ms));
        values.reserve(attrib::LABELS.len());
        match container {
            None => values.extend(std::iter::repeat_n(Value::Empty, attrib::LABELS.len())),
            Some(c) => values.extend(c.values().into_iter().map(|v| {
                if v.is_empty() {
                    Value::Empty
                } else {
                    Value::Str(v.into())
                }
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imdb::{Limits, Row};

    fn meta(name: &str, fields: &[(&str, FieldType)]) -> TableMeta {
        TableMeta {
            name: name.into(),
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

    #[test]
    fn only_process_keyed_tables_get_the_labels_and_rows_are_filled() {
        let keyed = with_labels(meta(
            "proc_t",
            &[("pid", FieldType::Key), ("n", FieldType::Gauge)],
        ));
        assert_eq!(keyed.fields.len(), 8);
        let plain = with_labels(meta(
            "disk_t",
            &[("dev", FieldType::Key), ("n", FieldType::Gauge)],
        ));
        assert_eq!(plain.fields.len(), 2);
        let own = meta(
            "own_t",
            &[("pid", FieldType::Key), ("container_id", FieldType::Label)],
        );
        assert_eq!(with_labels(own.clone()), own);

        let store = std::sync::Mutex::new(Store::new(Limits::default()));
        for m in [keyed, plain] {
            store.lock().expect("lock").register(m).expect("register");
        }
        let me = std::process::id();
        let mut batch = Batch::Rows(vec![
            Row {
                table: "proc_t".into(),
                values: vec![Value::Str(me.to_string().into()), Value::U64(1)],
            },
            Row {
                table: "disk_t".into(),
                values: vec![Value::Str("sda".into()), Value::U64(1)],
            },
            // Wrong length: left alone for the store to refuse.
            Row {
                table: "proc_t".into(),
                values: vec![Value::U64(1)],
            },
        ]);
        Enricher::default().label(&mut batch, &store, 0);
        let Batch::Rows(rows) = &batch else {
            panic!("rows")
        };
        // This test's own process is a host process here unless the suite runs in a container:
        // either way the row has the labels' six values.
        assert_eq!(rows[0].values.len(), 8);
        assert_eq!(rows[1].values.len(), 2);
        assert_eq!(rows[2].values.len(), 1);
        assert_eq!(
            store.lock().expect("lock").apply(batch, 0),
            1,
            "only the short row is refused"
        );
    }
}
