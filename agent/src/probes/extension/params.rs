//! An extension probe's runtime `params` (control channel): only `param`, the arguments of its
//! configured command, in words that a shell cannot turn into a second command.

use serde::{Deserialize, Deserializer};

use crate::probes::params::{self, ParamError, expected};

/// Longest runtime `param`, in bytes.
const MAX_PARAM_LEN: usize = 4096;

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ExtensionParams {
    #[serde(deserialize_with = "param")]
    param: String,
}

/// The `param` of `params` ("" when absent), or the refused key of extension probe `probe`.
/// Whether the probe takes runtime params at all (`remote_param`) is the caller's check.
pub fn runtime_param(probe: &str, table: &toml::Table) -> Result<String, ParamError> {
    params::parse_with::<ExtensionParams>(probe, table, |_| {
        "extension probes take only \"param\" (the arguments of their command)".to_owned()
    })
    .map(|p| p.param)
}

/// Characters a runtime `param` may use. The command runs through `sh -c`, so anything that
/// could start a second command, expand, redirect or quote is refused: a client can change the
/// arguments of a configured command, never run another one.
fn param_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || " _./:=,@%+-".contains(c)
}

fn param<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error as _;
    let v = toml::Value::deserialize(d)?;
    let Some(text) = v.as_str() else {
        return Err(expected("a string", &v));
    };
    if let Some(bad) = text.chars().find(|c| !param_char_ok(*c)) {
        return Err(D::Error::custom(format!(
            "{bad:?} is not allowed: runtime params are words of [A-Za-z0-9_./:=,@%+-] \
             separated by spaces (change the command itself in the configuration file)"
        )));
    }
    if text.len() > MAX_PARAM_LEN {
        return Err(D::Error::custom(format!(
            "longer than {MAX_PARAM_LEN} bytes"
        )));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<String, ParamError> {
        runtime_param("demo", &toml::from_str(text).unwrap())
    }

    #[test]
    fn only_plain_words_in_param() {
        assert_eq!(run("param = \"-i 5 --port=80\"").unwrap(), "-i 5 --port=80");
        assert_eq!(run("").unwrap(), "");
        for (text, field) in [
            ("param = \"x; touch /tmp/pwned\"", "param"),
            ("param = \"$(id)\"", "param"),
            ("param = 5", "param"),
            ("command = \"/bin/sh\"", "command"),
        ] {
            assert_eq!(run(text).unwrap_err().field, field, "{text}");
        }
        let long = format!("param = \"{}\"", "a".repeat(4097));
        assert_eq!(run(&long).unwrap_err().reason, "longer than 4096 bytes");
        assert_eq!(
            run("command = \"x\"").unwrap_err().reason,
            "extension probes take only \"param\" (the arguments of their command)"
        );
    }
}
