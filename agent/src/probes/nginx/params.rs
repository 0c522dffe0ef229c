//! The nginx_link probe's `[probes.params]`: one serde struct; a refused key is named.

use serde::{Deserialize, Deserializer};

use crate::probes::params::{self, ParamError, expected, int_in};

/// The table name gala-spider's 2021 configuration reads.
pub const TABLE: &str = "nginx_statistic";
/// gala-gopher's later name for the same table.
pub const TABLE_LATER: &str = "nginx_link";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub table: &'static str,
    pub max_sessions: u32,
    pub process_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            table: TABLE,
            max_sessions: 65536,
            process_name: "nginx".to_owned(),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct NginxParams {
    /// `true`: the later name.
    #[serde(deserialize_with = "table")]
    table: Option<bool>,
    #[serde(deserialize_with = "max_sessions")]
    max_sessions: Option<u32>,
    #[serde(deserialize_with = "process_name")]
    process_name: Option<String>,
}

pub fn settings(table: &toml::Table) -> Result<Settings, ParamError> {
    let p: NginxParams = params::parse("nginx_link", table)?;
    let mut s = Settings::default();
    if p.table == Some(true) {
        s.table = TABLE_LATER;
    }
    if let Some(n) = p.max_sessions {
        s.max_sessions = n;
    }
    if let Some(n) = p.process_name {
        s.process_name = n;
    }
    Ok(s)
}

fn value<'de, D: Deserializer<'de>>(d: D) -> Result<toml::Value, D::Error> {
    toml::Value::deserialize(d)
}

fn table<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let v = value(d)?;
    match v.as_str() {
        Some(TABLE) => Ok(Some(false)),
        Some(TABLE_LATER) => Ok(Some(true)),
        _ => Err(expected("\"nginx_statistic\" or \"nginx_link\"", &v)),
    }
}

fn max_sessions<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let what = "an integer from 1024 to 4194304 (live upstream connections tracked in the kernel)";
    int_in(&value(d)?, 1024..=4_194_304, what).map(|n| Some(n as u32))
}

fn process_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = value(d)?;
    // /proc/<pid>/comm holds at most 15 bytes.
    match v.as_str() {
        Some(s) if !s.is_empty() && s.len() <= 15 && !s.contains('/') => Ok(Some(s.to_owned())),
        _ => Err(expected(
            "a process name of 1 to 15 bytes (as in /proc/<pid>/comm)",
            &v,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ParamError> {
        settings(&toml::from_str(text).unwrap())
    }

    #[test]
    fn defaults_the_later_name_and_refusals() {
        assert_eq!(parse("").unwrap(), Settings::default());
        assert_eq!(parse("table = \"nginx_link\"").unwrap().table, "nginx_link");
        let s = parse("max_sessions = 2048\nprocess_name = \"openresty\"").unwrap();
        assert_eq!(
            (s.max_sessions, s.process_name.as_str()),
            (2048, "openresty")
        );
        for (bad, key) in [
            ("table = \"nginx\"", "table"),
            ("max_sessions = 10", "max_sessions"),
            ("process_name = \"\"", "process_name"),
            ("nope = 1", "nope"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }
}
