//! The Ansible role (packaging/ansible): installs the .deb, writes the configuration from its
//! variables, validates it before it reaches /etc/gopher-agent, and changes nothing when run
//! again with the same settings.

use std::{path::Path, process::Command};

use super::{DPKG, Installed, build_deb, check_config, installed, run, workspace};
use crate::common::{have, output_text, require};

fn playbook(deb: &Path, vars: &[(&str, &str)]) -> (bool, String) {
    let dir = workspace().join("packaging/ansible");
    let mut cmd = Command::new("ansible-playbook");
    cmd.current_dir(&dir)
        .args(["-c", "local", "-i", "localhost,", "gopher.yml"])
        .arg("-e")
        .arg(format!("gopher_deb={}", deb.display()))
        // No systemd runs here: install and configure, leave the service alone.
        .args(["-e", "gopher_manage_service=false"])
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0");
    for (k, v) in vars {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    let out = run(&mut cmd);
    (out.status.success(), output_text(&out))
}

/// `changed=N` of the play recap.
fn changed(said: &str) -> u32 {
    said.lines()
        .find(|l| l.starts_with("localhost") && l.contains("changed="))
        .and_then(|l| l.split("changed=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no recap in:\n{said}"))
}

#[test]
fn ansible_role_installs_configures_and_is_idempotent() {
    let _turn = DPKG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if Installed::prepare().is_none()
        || !require(
            have("ansible-playbook", &["--version"]),
            "ansible-playbook (Debian package ansible-core)",
        )
    {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(out.path());
    let _guard = Installed::mark();

    let (success, said) = playbook(
        &deb,
        &[("gopher_port", "9311"), ("gopher_log_level", "debug")],
    );
    assert!(success, "{said}");
    assert!(installed());
    let config = std::fs::read_to_string("/etc/gopher-agent/probes.toml").unwrap();
    assert!(config.contains("\nport = 9311\n"), "{config}");
    assert!(config.contains("\nlog_level = \"debug\"\n"), "{config}");
    assert!(config.contains("Ansible managed"), "{config}");
    assert_eq!(
        check_config("/etc/gopher-agent/probes.toml"),
        "/etc/gopher-agent/probes.toml: OK\n"
    );
    assert!(
        said.contains("RUNNING HANDLER [gopher : Restart gopher]"),
        "{said}"
    );

    // Same settings again: nothing changes, nothing restarts.
    let (success, said) = playbook(
        &deb,
        &[("gopher_port", "9311"), ("gopher_log_level", "debug")],
    );
    assert!(success, "{said}");
    assert_eq!(changed(&said), 0, "{said}");
    assert!(!said.contains("RUNNING HANDLER"), "{said}");

    // A new port: only the config changes, and the restart is notified.
    let (success, said) = playbook(
        &deb,
        &[("gopher_port", "9312"), ("gopher_log_level", "debug")],
    );
    assert!(success, "{said}");
    assert_eq!(changed(&said), 1, "{said}");
    assert!(
        said.contains("RUNNING HANDLER [gopher : Restart gopher]"),
        "{said}"
    );
    assert!(
        std::fs::read_to_string("/etc/gopher-agent/probes.toml")
            .unwrap()
            .contains("\nport = 9312\n")
    );

    // A value the agent refuses never reaches /etc/gopher-agent: validation keeps the working file.
    let (success, said) = playbook(&deb, &[("gopher_port", "70000")]);
    assert!(!success, "{said}");
    assert!(
        said.contains("web_server.port: 70000 is out of range"),
        "{said}"
    );
    assert!(
        std::fs::read_to_string("/etc/gopher-agent/probes.toml")
            .unwrap()
            .contains("\nport = 9312\n")
    );
}
