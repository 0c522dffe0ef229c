//! What a probe is set to (switch, interval, params) and what it is (its definition), with the
//! pure rules on them: validating a requested change against the probe, laying runtime changes
//! over a reloaded configuration, and the difference the state file keeps. No I/O, no locks:
//! the controller (`super::controller`) applies what these functions decide.

use std::{fmt, path::PathBuf, time::Duration};

use super::registry;
use crate::imdb::TableMeta;

/// Longest period a probe may report at; the configuration file has the same bound.
pub const MAX_INTERVAL_SECS: u64 = 3600;
/// Extension probes keep their own cadence; the interval the supervisor hands them is unused, so
/// it is a constant rather than `[ingress] interval` (whose change would restart them all).
pub const EXTENSION_INTERVAL: Duration = Duration::from_secs(5);

/// A probe's switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Switch {
    On,
    Off,
    /// Start only if `start_check` says the observed service is present.
    Auto,
}

impl Switch {
    /// The rule for `auto`: it starts a probe when the probe's start_check finds the observed
    /// service, so it needs one (native probes have none). The config reader and the control
    /// channel both ask here.
    pub fn fits(self, start_check: Option<&str>) -> bool {
        self != Self::Auto || start_check.is_some()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
            Self::Auto => "auto",
        }
    }
}

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use super::check_type::CheckType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Built into the agent (`super::registry`).
    Native,
    /// A program printing table rows (`[[extend_probes]]`).
    Extension,
}

/// What a probe is set to.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub switch: Switch,
    /// Native probes only (extension probes keep their own cadence).
    pub interval: Duration,
    pub params: Params,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// `[probes.params]`.
    Native(toml::Table),
    /// The extension probe's `param`: arguments appended to its command.
    Extension(String),
}

/// A requested change; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    pub switch: Option<Switch>,
    pub interval_secs: Option<u64>,
    /// Replaces the params as a whole. Extension probes take only `param` (a string).
    pub params: Option<toml::Table>,
}

/// What a probe is, apart from its settings: what it is built from and the tables it fills.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub kind: ProbeKind,
    pub tables: Vec<String>,
    /// Extension probes: their configuration entry.
    pub extension: Option<Extension>,
    /// Native probes: their built-in start check (`registry`), which makes `auto` possible.
    pub native_check: Option<(&'static str, CheckType)>,
}

impl Definition {
    /// The start check `auto` runs: the extension's configured one or the native built-in.
    /// The start check's command, kind and user. A native probe's built-in check is a fixed
    /// command of ours (`pgrep -x haproxy | wc -l`), run by the agent itself (`None`).
    pub fn start_check(&self) -> Option<(String, CheckType, Option<String>)> {
        match &self.extension {
            Some(x) => x
                .start_check
                .clone()
                .map(|c| (c, x.check_type, x.user.clone())),
            None => self.native_check.map(|(c, k)| (c.to_owned(), k, None)),
        }
    }
}

/// An extension probe's `[[extend_probes]]` entry (without its name) and its meta file's tables.
/// A change to any of it rebuilds and restarts the probe at a reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Extension {
    pub command: String,
    pub param: String,
    pub start_check: Option<String>,
    pub check_type: CheckType,
    pub switch: Switch,
    pub meta: Option<PathBuf>,
    /// Whether the control channel may change `param`.
    pub remote_param: bool,
    /// The user the command and start check run as (no capabilities); `None`: the agent's.
    pub user: Option<String>,
    pub tables: Vec<TableMeta>,
}

/// An answer to a control request that is not the probe's new view.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("no probe named {0:?}")]
    NotFound(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Unavailable(String),
}

pub fn invalid(field: &str, message: impl Into<String>) -> ControlError {
    ControlError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// A reloaded probe's settings: the new configuration's, except fields changed at runtime
/// (where `current` differs from what was configured), which keep their runtime value.
pub fn merged(configured: &Settings, current: &Settings, new: &Settings) -> Settings {
    Settings {
        switch: if current.switch == configured.switch {
            new.switch
        } else {
            current.switch
        },
        interval: if current.interval == configured.interval {
            new.interval
        } else {
            current.interval
        },
        params: if current.params == configured.params {
            new.params.clone()
        } else {
            current.params.clone()
        },
    }
}

/// The change that turns `from` into `to`, field by field.
pub fn diff(from: &Settings, to: &Settings) -> Change {
    Change {
        switch: (from.switch != to.switch).then_some(to.switch),
        interval_secs: (from.interval != to.interval).then_some(to.interval.as_secs()),
        params: (from.params != to.params).then(|| match &to.params {
            Params::Native(t) => t.clone(),
            Params::Extension(p) => {
                let mut t = toml::Table::new();
                t.insert("param".into(), toml::Value::String(p.clone()));
                t
            }
        }),
    }
}

/// The settings `change` asks for, starting from `current`, validated against what the probe is.
pub fn resolve(
    name: &str,
    def: &Definition,
    current: &Settings,
    change: &Change,
) -> Result<Settings, ControlError> {
    let mut s = current.clone();
    if let Some(switch) = change.switch {
        if switch == Switch::Auto {
            match &def.extension {
                None if def.native_check.is_some() => {}
                None => {
                    return Err(invalid(
                        "switch",
                        "this native probe has no start check: use on or off",
                    ));
                }
                Some(x) if x.start_check.is_none() => {
                    return Err(invalid(
                        "switch",
                        format!(
                            "probe {name:?} has no start_check in the configuration, so auto has \
                             nothing to decide with"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        s.switch = switch;
    }
    if let Some(secs) = change.interval_secs {
        if def.kind == ProbeKind::Extension {
            return Err(invalid(
                "interval_seconds",
                "extension probes keep their own cadence (set it through their param)",
            ));
        }
        if !(1..=MAX_INTERVAL_SECS).contains(&secs) {
            return Err(invalid(
                "interval_seconds",
                format!("expected 1..={MAX_INTERVAL_SECS} seconds, found {secs}"),
            ));
        }
        s.interval = Duration::from_secs(secs);
    }
    if let Some(params) = &change.params {
        s.params = match def.kind {
            // Building the probe is the validation: it is the one place that knows its params.
            ProbeKind::Native => {
                registry::build(name, params).map_err(|err| param_error(&err))?;
                Params::Native(params.clone())
            }
            ProbeKind::Extension => {
                if !def.extension.as_ref().is_some_and(|x| x.remote_param) {
                    return Err(invalid(
                        "params.param",
                        format!(
                            "probe {name:?} does not take params over the control channel (its \
                             [[extend_probes]] entry would need remote_param = true)"
                        ),
                    ));
                }
                Params::Extension(extension_param(params)?)
            }
        };
    }
    Ok(s)
}

/// A native probe's refusal as the control channel answers it: `params.<field>` and the reason
/// (the typed [`ParamError`](super::ParamError) carries the field; nothing is read out of text).
pub fn param_error(e: &super::NativeError) -> ControlError {
    match e {
        super::NativeError::Param(p) => invalid(&format!("params.{}", p.field), p.reason.clone()),
        super::NativeError::NotBuiltIn(_) => invalid("params", e.to_string()),
    }
}

/// Characters a runtime `param` may use. The command runs through `sh -c`, so anything that
/// could start a second command, expand, redirect or quote is refused: a client can change the
/// arguments of a configured command, never run another one.
fn param_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || " _./:=,@%+-".contains(c)
}

fn extension_param(params: &toml::Table) -> Result<String, ControlError> {
    let mut param = String::new();
    for (k, v) in params {
        if k != "param" {
            return Err(invalid(
                &format!("params.{k}"),
                "extension probes take only \"param\" (the arguments of their command)",
            ));
        }
        let Some(text) = v.as_str() else {
            return Err(invalid(
                "params.param",
                format!("expected a string, found {v}"),
            ));
        };
        if let Some(bad) = text.chars().find(|c| !param_char_ok(*c)) {
            return Err(invalid(
                "params.param",
                format!(
                    "{bad:?} is not allowed: runtime params are words of [A-Za-z0-9_./:=,@%+-] \
                     separated by spaces (change the command itself in the configuration file)"
                ),
            ));
        }
        if text.len() > 4096 {
            return Err(invalid("params.param", "longer than 4096 bytes"));
        }
        text.clone_into(&mut param);
    }
    Ok(param)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(check: Option<(&'static str, CheckType)>) -> Definition {
        Definition {
            kind: ProbeKind::Native,
            tables: Vec::new(),
            extension: None,
            native_check: check,
        }
    }

    #[test]
    fn auto_is_possible_for_a_native_probe_only_with_a_built_in_check() {
        let current = Settings {
            switch: Switch::Off,
            interval: Duration::from_secs(5),
            params: Params::Native(toml::Table::new()),
        };
        let auto = Change {
            switch: Some(Switch::Auto),
            ..Change::default()
        };
        let def = native(Some(("pgrep -x haproxy | wc -l", CheckType::Count)));
        let s = resolve("haproxy_link", &def, &current, &auto).unwrap();
        assert_eq!(s.switch, Switch::Auto);
        assert_eq!(
            def.start_check(),
            Some((
                "pgrep -x haproxy | wc -l".to_owned(),
                CheckType::Count,
                None
            ))
        );
        let err = resolve("tcp", &native(None), &current, &auto).unwrap_err();
        assert_eq!(
            err.to_string(),
            "switch: this native probe has no start check: use on or off"
        );
    }
}
