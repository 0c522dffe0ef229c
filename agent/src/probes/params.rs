//! Probe parameters (`[probes.params]` in probes.toml, `params` over the control channel).
//!
//! Each probe reads its parameters into its own serde struct with `deny_unknown_fields`,
//! through [`parse`]; a refusal is a [`ParamError`] whose key is a field, so no caller has to
//! find it in a message. Field checks that need the old wording (`expected …, found 5`) use
//! `deserialize_with` functions over a [`toml::Value`] and return `D::Error::custom(reason)`:
//! the key is added here, by the map walk that knows which value it is reading.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer as _, MapAccess,
    Visitor,
};

/// A refused probe parameter: which probe, which key (`field`) and why (`reason`).
///
/// The control channel answers `params.<field>` with `reason`; the config check prints the
/// whole error, `probes[<probe>].params.<field>: <reason>`:
///
/// ```
/// use gopher::probes::{NativeError, registry};
///
/// let params: toml::Table = toml::from_str("max_links = 5").unwrap();
/// let Err(NativeError::Param(e)) = registry::build("tcp", &params) else {
///     panic!("max_links = 5 is below the minimum");
/// };
/// assert_eq!((e.probe.as_str(), e.field.as_str()), ("tcp", "max_links"));
/// assert!(e.reason.starts_with("expected an integer from 1024 to 4194304"));
/// assert_eq!(e.to_string(), format!("probes[tcp].params.max_links: {}", e.reason));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("probes[{probe}].params.{field}: {reason}")]
pub struct ParamError {
    /// The probe's name (`tcp`, `system_disk`, an extension probe's name).
    pub probe: String,
    /// The key under `params` (`max_links`).
    pub field: String,
    /// What is wrong with it, without the key (`expected true or false, found 1`).
    pub reason: String,
}

/// Reads `params` into `T`; an unknown key is refused as `unknown parameter (known: a, b)`, or
/// `unknown parameter (<probe> takes no parameters)` when `T` has no field.
pub fn parse<T: DeserializeOwned>(probe: &str, params: &toml::Table) -> Result<T, ParamError> {
    parse_with(probe, params, |known| {
        if known.is_empty() {
            format!("unknown parameter ({probe} takes no parameters)")
        } else {
            format!("unknown parameter (known: {})", known.join(", "))
        }
    })
}

/// [`parse`], with the reason given for an unknown key made by `unknown` from the known keys.
pub fn parse_with<T: DeserializeOwned>(
    probe: &str,
    params: &toml::Table,
    unknown: impl FnOnce(&'static [&'static str]) -> String,
) -> Result<T, ParamError> {
    T::deserialize(Table(params.clone())).map_err(|e| ParamError {
        probe: probe.to_owned(),
        field: e.field.unwrap_or_default(),
        reason: match e.reason {
            Reason::Unknown(known) => unknown(known),
            Reason::Text(text) => text,
        },
    })
}

/// `v` as an integer in `range`, else `expected <what>, found <v>`.
pub fn int_in<E: de::Error>(
    v: &toml::Value,
    range: std::ops::RangeInclusive<i64>,
    what: &str,
) -> Result<i64, E> {
    v.as_integer()
        .filter(|n| range.contains(n))
        .ok_or_else(|| expected(what, v))
}

/// `v` as a bool, else `expected true or false, found <v>`.
pub fn boolean<E: de::Error>(v: &toml::Value) -> Result<bool, E> {
    v.as_bool().ok_or_else(|| expected("true or false", v))
}

/// The refusal `expected <what>, found <v>` (`v` as TOML writes it).
pub fn expected<E: de::Error>(what: &str, v: &toml::Value) -> E {
    E::custom(format!("expected {what}, found {v}"))
}

/// The error while reading: the key is filled in by the map walk, the probe by [`parse_with`].
#[derive(Debug)]
struct DeError {
    field: Option<String>,
    reason: Reason,
}

#[derive(Debug)]
enum Reason {
    /// A key the struct does not have; the struct's keys.
    Unknown(&'static [&'static str]),
    Text(String),
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            field: None,
            reason: Reason::Text(msg.to_string()),
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self {
            field: Some(field.to_owned()),
            reason: Reason::Unknown(expected),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            field: Some(field.to_owned()),
            reason: Reason::Text("required".to_owned()),
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Reason::Unknown(_) => f.write_str("unknown parameter"),
            Reason::Text(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for DeError {}

impl DeError {
    fn at(mut self, key: &str) -> Self {
        self.field.get_or_insert_with(|| key.to_owned());
        self
    }
}

/// The whole `params` table.
struct Table(toml::Table);

impl<'de> Deserializer<'de> for Table {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_map(Entries {
            iter: self.0.into_iter(),
            value: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

/// The walk over the keys, which knows the key of every value it hands out.
struct Entries {
    iter: toml::map::IntoIter,
    value: Option<(String, toml::Value)>,
}

impl<'de> MapAccess<'de> for Entries {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        let k = seed
            .deserialize(key.as_str().into_deserializer())
            .map_err(|e: DeError| e.at(&key))?;
        self.value = Some((key, value));
        Ok(Some(k))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((key, value)) = self.value.take() else {
            return Err(de::Error::custom("a value without its key"));
        };
        seed.deserialize(Value(value)).map_err(|e| e.at(&key))
    }
}

/// One value; toml's own deserializer reads it, its errors become [`DeError`]s.
struct Value(toml::Value);

impl<'de> Deserializer<'de> for Value {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.0.deserialize_any(visitor).map_err(from_toml)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.0.deserialize_option(visitor).map_err(from_toml)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` wants
fn from_toml(e: toml::de::Error) -> DeError {
    de::Error::custom(e.message())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Two {
        #[serde(deserialize_with = "small")]
        small: u8,
        flag: bool,
    }

    fn small<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
        let v = toml::Value::deserialize(d)?;
        int_in(&v, 0..=9, "a digit").map(|n| n as u8)
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoParams {}

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn reads_the_struct() {
        let two: Two = parse("p", &table("small = 3\nflag = true")).unwrap();
        assert_eq!(
            two,
            Two {
                small: 3,
                flag: true
            }
        );
        assert_eq!(
            parse::<Two>("p", &toml::Table::new()).unwrap(),
            Two::default()
        );
    }

    #[test]
    fn every_refusal_names_its_key() {
        let e = parse::<Two>("p", &table("small = 10")).unwrap_err();
        assert_eq!(e.field, "small");
        assert_eq!(e.reason, "expected a digit, found 10");
        assert_eq!(
            e.to_string(),
            "probes[p].params.small: expected a digit, found 10"
        );
        // toml's own type errors get the key too.
        let e = parse::<Two>("p", &table("flag = 1")).unwrap_err();
        assert_eq!(e.field, "flag");
        let e = parse::<Two>("p", &table("big = 1")).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("big", "unknown parameter (known: small, flag)")
        );
        let e = parse::<NoParams>("p", &table("x = 1")).unwrap_err();
        assert_eq!(e.reason, "unknown parameter (p takes no parameters)");
    }
}
