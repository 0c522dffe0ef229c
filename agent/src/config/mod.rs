//! Configuration (`probes.toml`) and meta-file readers.
//!
//! `probes.toml` carries every section of gala-gopher.conf over to TOML (see `docs/config.md`).
//! Meta files describe tables; they come as our TOML form or gala-gopher's libconfig `.meta`.
//! Every reader reports problems as `file:line:col: key.path: message`, all of them at once
//! where it can. `model.rs` holds the whole [`Config`]; each section has its own file.

mod bounds;
mod control;
mod egress;
mod error;
mod extend_probes;
mod gala_conf;
mod global;
mod imdb;
mod ingress;
mod kafka;
mod libconfig;
mod meta;
mod meta_file;
mod model;
mod node;
mod probes;
mod rest_api;
mod supervision;
mod switch;
mod web_config;
mod web_server;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use control::{Control, DEFAULT_LISTEN, DEFAULT_TOKEN_FILE};
pub use egress::Egress;
pub use error::{ConfigError, Diagnostic, DiagnosticKind};
pub use extend_probes::{CheckType, ExtendProbe};
pub use gala_conf::{GalaNotes, is_gala_conf};
pub use global::{Global, LogLevel};
pub use imdb::Imdb;
pub use ingress::Ingress;
pub use kafka::{Compression, Kafka};
pub use meta::MetaSection;
pub use meta_file::{load_meta_dirs, load_meta_file, parse_meta_libconfig, parse_meta_toml};
pub use model::{Config, MAX_INTERVAL_SECS, convert_gala, load, parse, parse_gala};
pub use probes::{NATIVE_PROBES, NativeProbe};
pub use rest_api::RestApi;
pub use supervision::Supervision;
pub use switch::{OnOff, Switch};
pub use web_config::{
    ClientAuth, TlsServer, TlsVersion, WebConfig, WebConfigError, load_web_config, parse_web_config,
};
pub use web_server::{MetricNames, WebServer};

/// Validates a config file without starting anything (`gopher check`); same as [`load`].
pub fn check(path: &Path) -> Result<Config, ConfigError> {
    load(path)
}
