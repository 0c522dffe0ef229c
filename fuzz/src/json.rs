//! Reads a JSON object as the list of its members in order, duplicates kept, with serde_json
//! as the parser: the `kafka_json` target compares that list with the record it wrote, so a
//! lost, reordered, doubled or mis-escaped member is caught (a map would hide doubles).

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The members of the object `text`, in order; panics when `text` is not one JSON object.
pub fn entries(text: &str) -> Vec<(String, Value)> {
    match serde_json::from_str::<Entries>(text) {
        Ok(e) => e.0,
        Err(e) => panic!("not a JSON object ({e}): {text:?}"),
    }
}
