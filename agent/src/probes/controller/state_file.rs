//! The state file: runtime changes made over the control channel, kept across restarts.
//!
//! Only what differs from the configuration file is written, per probe:
//!
//! ```toml
//! [probes.tcp]
//! switch = "off"
//! interval = 10
//! params = { max_links = 65536 }
//! ```
//!
//! The file is replaced atomically (write, fsync, rename), so a crash leaves the old or the new
//! version, never half of one.

use std::{collections::BTreeMap, io::Write as _, path::Path};

use anyhow::Context as _;

use crate::probes::settings::{Change, Switch};

const HEADER: &str = "# Written by gopher: runtime changes made over the control channel.\n\
# They override the configuration file until reset (`gopher ctl reset <probe>`).\n";

pub fn load(path: &Path) -> anyhow::Result<Vec<(String, Change)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
    let mut out = Vec::new();
    let Some(probes) = doc.get("probes") else {
        return Ok(out);
    };
    let probes = probes
        .as_table()
        .with_context(|| format!("{}: probes: expected a table", path.display()))?;
    for (name, v) in probes {
        let place = format!("{}: probes.{name}", path.display());
        let t = v
            .as_table()
            .with_context(|| format!("{place}: expected a table"))?;
        let mut change = Change::default();
        for (k, v) in t {
            match k.as_str() {
                "switch" => {
                    change.switch = Some(match v.as_str() {
                        Some("on") => Switch::On,
                        Some("off") => Switch::Off,
                        Some("auto") => Switch::Auto,
                        _ => anyhow::bail!(
                            "{place}.switch: expected \"on\", \"off\" or \"auto\", found {v}"
                        ),
                    });
                }
                "interval" => {
                    let secs = v
                        .as_integer()
                        .and_then(|i| u64::try_from(i).ok())
                        .with_context(|| {
                            format!("{place}.interval: expected seconds, found {v}")
                        })?;
                    change.interval_secs = Some(secs);
                }
                "params" => {
                    change.params = Some(
                        v.as_table()
                            .cloned()
                            .with_context(|| format!("{place}.params: expected a table"))?,
                    );
                }
                other => anyhow::bail!("{place}.{other}: unknown key (switch, interval, params)"),
            }
        }
        out.push((name.clone(), change));
    }
    Ok(out)
}

pub fn save(path: &Path, changes: &BTreeMap<String, Change>) -> anyhow::Result<()> {
    let mut probes = toml::Table::new();
    for (name, c) in changes {
        let mut t = toml::Table::new();
        if let Some(s) = c.switch {
            t.insert("switch".into(), toml::Value::String(s.as_str().to_owned()));
        }
        if let Some(secs) = c.interval_secs {
            t.insert(
                "interval".into(),
                toml::Value::Integer(i64::try_from(secs).unwrap_or(i64::MAX)),
            );
        }
        if let Some(p) = &c.params {
            t.insert("params".into(), toml::Value::Table(p.clone()));
        }
        probes.insert(name.clone(), toml::Value::Table(t));
    }
    let mut doc = toml::Table::new();
    doc.insert("probes".into(), toml::Value::Table(probes));
    let text = format!("{HEADER}{}", toml::to_string(&doc).context("serialising")?);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir, path)?;
    tmp.1
        .write_all(text.as_bytes())
        .and_then(|()| tmp.1.sync_all())
        .with_context(|| format!("writing {}", tmp.0.display()))?;
    std::fs::rename(&tmp.0, path)
        .with_context(|| format!("renaming {} to {}", tmp.0.display(), path.display()))?;
    Ok(())
}

fn tempfile_in(dir: &Path, path: &Path) -> anyhow::Result<(std::path::PathBuf, std::fs::File)> {
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok((tmp, file))
}

/// The state file's directory must exist for the atomic rename: made at start if missing
/// (systemd's StateDirectory= makes it under the unit), so a bad path fails the start, not the
/// first change.
pub fn prepare_dir(path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir
        && !dir.is_dir()
    {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "control.state_file: cannot create directory {}",
                dir.display()
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.toml");
        assert!(load(&path).unwrap().is_empty(), "absent file: no changes");
        let mut params = toml::Table::new();
        params.insert("max_links".into(), toml::Value::Integer(65536));
        let mut changes = BTreeMap::new();
        changes.insert(
            "tcp".to_owned(),
            Change {
                switch: Some(Switch::Off),
                interval_secs: Some(10),
                params: Some(params),
            },
        );
        changes.insert(
            "redis".to_owned(),
            Change {
                switch: Some(Switch::Auto),
                ..Change::default()
            },
        );
        save(&path, &changes).unwrap();
        let back: BTreeMap<String, Change> = load(&path).unwrap().into_iter().collect();
        assert_eq!(back, changes);
    }

    #[test]
    fn bad_file_names_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.toml");
        std::fs::write(&path, "[probes.tcp]\nswitch = \"maybe\"\n").unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(err.contains("probes.tcp.switch"), "{err}");
    }
}
