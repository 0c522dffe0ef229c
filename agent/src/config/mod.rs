//! Configuration (`probes.toml`) and meta-file readers.
//!
//! `probes.toml` carries every section of gala-gopher.conf over to TOML (see `docs/config.md`).
//! Meta files describe tables; they come as our TOML form or gala-gopher's libconfig `.meta`.
//! Every reader reports problems as `file:line:col: key.path: message`, all of them at once
//! where it can.

mod control;
mod error;
mod libconfig;
mod meta_file;
mod model;
mod node;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use control::{Control, DEFAULT_LISTEN};
pub use error::{ConfigError, Diagnostic, DiagnosticKind};
pub use meta_file::{load_meta_dirs, load_meta_file, parse_meta_libconfig, parse_meta_toml};
pub use model::{
    CheckType, Compression, Config, Egress, ExtendProbe, Global, Imdb, Ingress, Kafka, LogLevel,
    MetaSection, NATIVE_PROBES, NativeProbe, OnOff, Supervision, Switch, WebServer, load, parse,
};

/// Validates a config file without starting anything (`gopher check`); same as [`load`].
pub fn check(path: &Path) -> Result<Config, ConfigError> {
    load(path)
}
