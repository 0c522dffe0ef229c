//! The lb probes' `[probes.params]`: one serde struct each, read through
//! [`crate::probes::params::parse`] so that a refusal names its key.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::{dnsmasq::Dnsmasq, haproxy::Haproxy, lvs::Lvs};
use crate::probes::params::{self, ParamError, expected};

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HaproxyParams {
    #[serde(deserialize_with = "sockets")]
    stats_sockets: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LvsParams {
    #[serde(deserialize_with = "lvs_table")]
    table: Option<String>,
    #[serde(deserialize_with = "paths")]
    namespaces: Option<Vec<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

pub(super) fn haproxy(t: &toml::Table) -> Result<Haproxy, ParamError> {
    let p: HaproxyParams = params::parse("haproxy_link", t)?;
    Ok(Haproxy::new(p.stats_sockets.unwrap_or_default()))
}

pub(super) fn lvs(t: &toml::Table) -> Result<Lvs, ParamError> {
    let p: LvsParams = params::parse("lvs_link", t)?;
    Ok(Lvs::new(
        p.table.unwrap_or_else(|| super::lvs::TABLE.to_owned()),
        p.namespaces.unwrap_or_default(),
    ))
}

pub(super) fn dnsmasq(t: &toml::Table) -> Result<Dnsmasq, ParamError> {
    params::parse::<NoParams>("dnsmasq_link", t)?;
    Ok(Dnsmasq::default())
}

fn strings(v: &toml::Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
        .collect()
}

fn sockets<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let v = toml::Value::deserialize(d)?;
    let what = "a list of stats sockets (\"/run/haproxy/admin.sock\", \"127.0.0.1:9999\")";
    let list = strings(&v).ok_or_else(|| expected(what, &v))?;
    let ok = |s: &String| s.starts_with('/') || s.parse::<std::net::SocketAddr>().is_ok();
    if !list.iter().all(ok) {
        return Err(expected(what, &v));
    }
    Ok(Some(list))
}

fn lvs_table<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = toml::Value::deserialize(d)?;
    match v.as_str() {
        Some(t @ ("lvs_link" | "ipvs_link")) => Ok(Some(t.to_owned())),
        _ => Err(expected("\"lvs_link\" or \"ipvs_link\"", &v)),
    }
}

fn paths<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<PathBuf>>, D::Error> {
    let v = toml::Value::deserialize(d)?;
    let what = "a list of network namespace files (\"/run/netns/lb\", \"/proc/1234/ns/net\")";
    let list = strings(&v)
        .filter(|l| l.iter().all(|p| p.starts_with('/')))
        .ok_or_else(|| expected(what, &v))?;
    Ok(Some(list.into_iter().map(PathBuf::from).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::registry;

    fn refusal(probe: &str, text: &str) -> ParamError {
        match registry::build(probe, &toml::from_str(text).unwrap()) {
            Err(crate::probes::NativeError::Param(e)) => e,
            other => panic!("{text}: {:?}", other.map(|p| p.name().to_owned())),
        }
    }

    #[test]
    fn keys_are_checked_and_refusals_name_them() {
        let e = refusal("haproxy_link", "stats_sockets = [\"relative.sock\"]");
        assert_eq!(e.field, "stats_sockets");
        assert!(
            e.reason.starts_with("expected a list of stats sockets"),
            "{e}"
        );
        let e = refusal("lvs_link", "table = \"lvs\"");
        assert_eq!(
            e.to_string(),
            "probes[lvs_link].params.table: expected \"lvs_link\" or \"ipvs_link\", found \"lvs\""
        );
        let e = refusal("lvs_link", "namespaces = [\"netns\"]");
        assert_eq!(e.field, "namespaces");
        let e = refusal("dnsmasq_link", "x = 1");
        assert_eq!(
            e.reason,
            "unknown parameter (dnsmasq_link takes no parameters)"
        );
    }

    #[test]
    fn the_later_table_name_is_an_option() {
        let p = registry::build(
            "lvs_link",
            &toml::from_str("table = \"ipvs_link\"").unwrap(),
        )
        .unwrap();
        assert_eq!(p.tables()[0].name, "ipvs_link");
        let p = registry::build("lvs_link", &toml::Table::new()).unwrap();
        assert_eq!(p.tables()[0].name, "lvs_link");
        let p = registry::build(
            "haproxy_link",
            &toml::from_str("stats_sockets = [\"/run/haproxy/admin.sock\", \"127.0.0.1:9999\"]")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(p.tables()[0].name, "haproxy_link");
    }
}
