//! The native-probe registry: every probe compiled into the agent, declared once — its name (also
//! the `name` of its `[[probes]]` entry), whether the shipped `probes.toml` switches it on, the
//! tables it fills and how it is built from its `[probes.params]`. Like node_exporter's
//! `registerCollector(name, defaultEnabled, factory)`: a new native probe is one line here.
//!
//! Configuration validation takes the known names from [`NAMES`]; the agent builds probes with
//! [`build`].

use std::sync::Arc;

pub use super::{Factory, Native};
use super::{NativeError, Probe, endpoint, lb, nginx, system, tcp};

const TCP: Native = Native {
    name: "tcp",
    default_on: true,
    tables: &[tcp::TABLE],
    build: |params| Ok(Arc::new(tcp::TcpProbe::from_params(params)?)),
    start_check: None,
};

/// Listener health (`endpoint_tcp`): off by default, since it walks /proc for each new listener.
const ENDPOINT: Native = Native {
    name: "endpoint",
    default_on: false,
    tables: &[endpoint::TABLE, endpoint::CONNECT_TABLE],
    build: |params| Ok(Arc::new(endpoint::EndpointProbe::from_params(params)?)),
    start_check: None,
};

/// Shipped on: it holds nothing (no uprobes, no map) until a process named nginx runs, which is
/// its built-in start check.
const NGINX: Native = Native {
    name: "nginx_link",
    default_on: true,
    tables: &[nginx::TABLE],
    build: nginx::build,
    start_check: None,
};

const COUNT: usize = 3 + system::PROBES.len() + lb::PROBES.len();

/// Every native probe, in the order the shipped `probes.toml` lists them.
pub const NATIVE: [Native; COUNT] = {
    let mut out = [TCP; COUNT];
    out[1] = ENDPOINT;
    let mut i = 0;
    while i < system::PROBES.len() {
        out[i + 2] = system::PROBES[i];
        i += 1;
    }
    let mut j = 0;
    while j < lb::PROBES.len() {
        out[2 + system::PROBES.len() + j] = lb::PROBES[j];
        j += 1;
    }
    out[COUNT - 1] = NGINX;
    out
};

/// Names of every native probe, for configuration validation.
pub const NAMES: [&str; COUNT] = {
    let mut out = [""; COUNT];
    let mut i = 0;
    while i < COUNT {
        out[i] = NATIVE[i].name;
        i += 1;
    }
    out
};

/// The native probe called `name`.
pub fn find(name: &str) -> Option<&'static Native> {
    NATIVE.iter().find(|n| n.name == name)
}

/// Builds the native probe called `name` from its `[probes.params]`; a refused key comes back
/// as [`NativeError::Param`], whose [`ParamError`](super::ParamError) names it.
pub fn build(name: &str, params: &toml::Table) -> Result<Arc<dyn Probe>, NativeError> {
    let native = find(name).ok_or_else(|| NativeError::NotBuiltIn(name.to_owned()))?;
    Ok((native.build)(params)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_builds_with_default_params_and_fills_its_tables() {
        let mut seen = std::collections::HashSet::new();
        for native in NATIVE {
            assert!(seen.insert(native.name), "{} declared twice", native.name);
            let probe = build(native.name, &toml::Table::new()).unwrap();
            assert_eq!(probe.name(), native.name);
            let tables: Vec<String> = probe.tables().into_iter().map(|t| t.name).collect();
            assert_eq!(tables, native.tables, "{}", native.name);
        }
        assert_eq!(NAMES.len(), NATIVE.len());
        let err = build("nope", &toml::Table::new())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not built into this agent"), "{err}");
    }

    /// `default_on` says what the shipped configuration does: the same probes, in the same
    /// order, switched as declared here.
    #[test]
    fn shipped_probes_toml_lists_every_native_probe_as_declared() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../probes.toml");
        let doc: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let probes = doc["probes"].as_array().unwrap();
        let shipped: Vec<(&str, bool)> = probes
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap(),
                    p["switch"].as_str() == Some("on"),
                )
            })
            .collect();
        let declared: Vec<(&str, bool)> = NATIVE.iter().map(|n| (n.name, n.default_on)).collect();
        assert_eq!(shipped, declared);
    }
}
