//! The Kafka JSON writers (egress/kafka/json.rs): records and table definitions, fed through
//! the real path (definitions registered in a store, rows through the extension probes'
//! ingest rule, records read from a snapshot).
//!
//! Oracles: serde_json reads each message back as one object whose members are, in order and
//! with nothing lost or doubled, the envelope (`timestamp` as a number, `hostname`,
//! `machine_id`, `table_name`) and one string per field equal to the stored value's text; a
//! table definition reads back with its name, description and every field's name, type and
//! description; the message key is the table name then each key value after a `|`.
#![no_main]

use arbitrary::Arbitrary;
use gopher::egress::kafka::{Identity, metadata_json, record_key, write_record_json};
use gopher::imdb::FieldType;
use gopher_fuzz::{Tables, entries};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

#[derive(Debug, Arbitrary)]
struct Input {
    tables: Tables,
    hostname: String,
    machine_id: String,
    timestamp_ms: u64,
}

fuzz_target!(|input: Input| {
    let snapshot = input.tables.snapshot();
    let id = Identity { hostname: input.hostname.clone(), machine_id: input.machine_id.clone() };
    let (mut out, mut values, mut texts) = (String::new(), Vec::new(), Vec::new());
    for table in &snapshot.tables {
        let meta = &table.meta;
        for record in &table.records {
            write_record_json(&mut out, &id, table, record, input.timestamp_ms, &mut values);
            let mut want = vec![
                ("timestamp".to_owned(), json!(input.timestamp_ms)),
                ("hostname".to_owned(), json!(id.hostname)),
                ("machine_id".to_owned(), json!(id.machine_id)),
                ("table_name".to_owned(), json!(meta.name)),
            ];
            table.values(record, &mut texts);
            for (f, v) in meta.fields.iter().zip(&texts) {
                want.push((f.name.clone(), Value::String(v.to_string())));
            }
            assert_eq!(entries(&out), want, "record JSON reads back differently: {out}");

            let key = record_key(table, record);
            let mut want_key = meta.name.clone();
            for (f, v) in meta.fields.iter().zip(&texts) {
                if f.ty == FieldType::Key {
                    want_key.push('|');
                    want_key.push_str(&v.to_string());
                }
            }
            assert_eq!(key, want_key);
        }
        let text = metadata_json(meta, input.timestamp_ms);
        let got = entries(&text);
        let names = |pred: fn(FieldType) -> bool| {
            Value::from(meta.fields.iter().filter(|f| pred(f.ty)).map(|f| f.name.clone()).collect::<Vec<_>>())
        };
        let fields: Vec<Value> = meta
            .fields
            .iter()
            .map(|f| json!({"name": f.name, "type": f.ty.as_str(), "description": f.description}))
            .collect();
        let want = vec![
            ("timestamp".to_owned(), json!(input.timestamp_ms)),
            ("meta_name".to_owned(), json!(meta.name)),
            ("table_name".to_owned(), json!(meta.name)),
            ("entity_name".to_owned(), json!(meta.name)),
            ("version".to_owned(), json!("1")),
            ("description".to_owned(), json!(meta.description)),
            ("keys".to_owned(), names(|t| t == FieldType::Key)),
            ("labels".to_owned(), names(|t| t == FieldType::Label)),
            ("metrics".to_owned(), names(FieldType::is_metric)),
            ("fields".to_owned(), Value::from(fields)),
        ];
        assert_eq!(got, want, "table definition reads back differently: {text}");
    }
});
