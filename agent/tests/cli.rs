//! The command line: `--check-config` answers for the shipped and for broken configs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn gopher() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gopher"))
}

#[test]
fn shipped_config_checks_clean() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../probes.toml");
    let out = gopher().arg("--check-config").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn broken_config_names_file_line_and_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[web_server]\nport = 0\n\n[kafka]\nswitch = \"maybe\"\nbogus = 1\n",
    )
    .unwrap();
    let out = gopher().arg("--check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(
        err.contains(&format!("{file}:2:")) && err.contains("web_server.port"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:5:")) && err.contains("kafka.switch"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:6:")) && err.contains("kafka.bogus"),
        "{err}"
    );
}

#[test]
fn running_with_a_broken_config_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[imdb]\nrecord_timeout = \"soon\"\n").unwrap();
    let out = gopher().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("imdb.record_timeout"));
}

#[test]
fn version_is_printed() {
    let out = gopher().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
