//! The `probes.toml` model: gala-gopher.conf's sections in TOML, validated with positions.
//!
//! Each section has its own file (`global.rs`, `kafka.rs`, …: its struct, defaults and reader);
//! this one holds the whole [`Config`], the list of sections and the bounds they share.

use std::path::Path;

use super::control::Control;
use super::egress::Egress;
use super::error::{ConfigError, Reporter};
use super::extend_probes::ExtendProbe;
use super::gala_conf::{self, GalaNotes};
use super::global::Global;
use super::imdb::Imdb;
use super::ingress::Ingress;
use super::kafka::Kafka;
use super::meta::MetaSection;
use super::node::{self, TableView};
use super::probes::{NameRegistry, NativeProbe};
use super::rest_api::{self, RestApi};
use super::supervision::Supervision;
use super::web_server::WebServer;
use super::{control, egress, extend_probes, global, imdb, ingress, kafka, meta, probes};
use super::{supervision, web_server};

pub use super::bounds::MAX_INTERVAL_SECS;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub global: Global,
    pub ingress: Ingress,
    pub egress: Egress,
    pub imdb: Imdb,
    pub web_server: WebServer,
    pub kafka: Kafka,
    pub probes: Vec<NativeProbe>,
    pub extend_probes: Vec<ExtendProbe>,
    pub meta: MetaSection,
    pub supervision: Supervision,
    pub control: Control,
    pub rest_api: RestApi,
    /// Set when the file was gala-gopher's `gala-gopher.conf`: what was not carried over.
    pub gala: Option<GalaNotes>,
}

const SECTIONS: &[&str] = &[
    "global",
    "ingress",
    "egress",
    "imdb",
    "web_server",
    "kafka",
    "probes",
    "extend_probes",
    "meta",
    "supervision",
    "control",
    "rest_api",
];

/// Parses and validates `probes.toml` text; `origin` names the file in diagnostics and anchors
/// relative paths.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let mut rep = Reporter::new(origin, text);
    let Some(root) = node::parse_toml(text, &mut rep) else {
        return Err(ConfigError::Invalid {
            diagnostics: rep.diagnostics,
        });
    };
    read_root(rep, &root, origin, None)
}

/// Parses gala-gopher's `gala-gopher.conf` (libconfig) into the same [`Config`]; see
/// `gala_conf.rs` for what is carried over. Diagnostics name lines of that file.
pub fn parse_gala(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let (root, notes) = gala_tree(text, origin)?;
    read_root(Reporter::new(origin, text), &root, origin, Some(notes))
}

/// The `probes.toml` equivalent of a gala-gopher.conf (`gopher convert`), validated first.
pub fn convert_gala(text: &str, origin: &Path) -> Result<String, ConfigError> {
    parse_gala(text, origin)?;
    let (root, notes) = gala_tree(text, origin)?;
    Ok(gala_conf::to_toml(root, origin, &notes))
}

fn gala_tree(text: &str, origin: &Path) -> Result<(Vec<node::Entry>, GalaNotes), ConfigError> {
    let mut rep = Reporter::new(origin, text);
    let Some(root) = super::libconfig::parse(text, &mut rep) else {
        return Err(ConfigError::Invalid {
            diagnostics: rep.diagnostics,
        });
    };
    let mut notes = GalaNotes::default();
    let root = gala_conf::translate(root, &mut notes);
    Ok((root, notes))
}

fn read_root(
    mut rep: Reporter<'_>,
    root: &[node::Entry],
    origin: &Path,
    gala: Option<GalaNotes>,
) -> Result<Config, ConfigError> {
    let base = origin.parent().unwrap_or(Path::new(""));
    let root = TableView::new(&mut rep, root, 0..0, String::new(), SECTIONS, true);
    let mut names = NameRegistry::default();
    let config = Config {
        global: global::global(&mut rep, root.get("global"), base),
        ingress: ingress::ingress(&mut rep, root.get("ingress")),
        egress: egress::egress(&mut rep, root.get("egress")),
        imdb: imdb::imdb(&mut rep, root.get("imdb")),
        web_server: web_server::web_server(&mut rep, root.get("web_server"), base),
        kafka: kafka::kafka(&mut rep, root.get("kafka")),
        probes: root
            .tables(&mut rep, "probes")
            .into_iter()
            .filter_map(|(i, n)| {
                probes::native_probe(&mut rep, n, format!("probes[{i}]"), &mut names)
            })
            .collect(),
        extend_probes: root
            .tables(&mut rep, "extend_probes")
            .into_iter()
            .filter_map(|(i, n)| {
                extend_probes::extend_probe(
                    &mut rep,
                    n,
                    format!("extend_probes[{i}]"),
                    base,
                    &mut names,
                )
            })
            .collect(),
        meta: meta::meta(&mut rep, root.get("meta"), base),
        supervision: supervision::supervision(&mut rep, root.get("supervision")),
        control: control::control(&mut rep, root.get("control"), base),
        rest_api: RestApi::default(),
        gala,
    };
    let rest_api = rest_api::rest_api(&mut rep, root.get("rest_api"), &config.control, base);
    let config = Config { rest_api, ..config };
    rep.finish(config)
}

/// Reads `path` and parses it; see [`parse`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if gala_conf::is_gala_conf(path, &text) {
        parse_gala(&text, path)
    } else {
        parse(&text, path)
    }
}
