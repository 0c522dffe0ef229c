//! The extension-probe line parser (`|table|v1|…|`, probes/extension/line.rs) and the value rule
//! behind it (`FieldType::parse_value`), on arbitrary bytes as a probe could print them.
//!
//! Oracles: a row reads back the same after `format_line` (the parser's inverse); a rejection
//! prints (its message clips probe text on char boundaries); every value a field type accepts
//! writes out as text that the same type reads back to the same text (the form sinks export).
#![no_main]

use gopher::imdb::{FieldMeta, TableMeta};
use gopher::probes::extension::line::{self, Parsed};
use gopher_fuzz::TYPES;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match line::parse_line(data) {
        Ok(Parsed::Ignored) => assert_ne!(data.first(), Some(&b'|')),
        Ok(Parsed::Row { table, values }) => {
            assert!(!table.is_empty());
            let again = line::format_line(table, &values);
            assert_eq!(
                line::parse_line(again.as_bytes()),
                Ok(Parsed::Row { table, values: values.clone() }),
                "format_line does not read back"
            );
            // Each value through each field type, as a table of that type would take it.
            for i in 0..TYPES.len() {
                let meta = TableMeta {
                    name: table.to_owned(),
                    description: String::new(),
                    fields: values
                        .iter()
                        .enumerate()
                        .map(|(j, _)| FieldMeta {
                            name: format!("f{j}"),
                            ty: TYPES[(i + j) % TYPES.len()],
                            description: String::new(),
                        })
                        .collect(),
                    max_records: None,
                };
                match line::to_row(&meta, &values) {
                    Ok(row) => {
                        for (v, f) in row.values.iter().zip(&meta.fields) {
                            let text = v.to_string();
                            let back = f.ty.parse_value(&text).unwrap_or_else(|why| {
                                panic!("{:?} wrote {text:?} for {v:?}, which it refuses: {why}", f.ty)
                            });
                            assert_eq!(back.to_string(), text, "{:?} text form not stable", f.ty);
                        }
                    }
                    Err(why) => {
                        let _ = why.to_string();
                        assert!(line::Rejection::REASONS.contains(&why.reason()));
                    }
                }
            }
        }
        Err(why) => {
            let _ = why.to_string();
            assert!(line::Rejection::REASONS.contains(&why.reason()));
        }
    }
});
