//! No open doors (issue 13): the control channel refuses a local user who is not root (a real
//! user made with useradd, running the real `gopher ctl` through setpriv) and lets root in out
//! of the box (the token the agent created 0600 at start); `gopher ctl` reads the agent's
//! config for address and token, takes a bare host:port, and asks several agents at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::{Agent, free_port, is_root, require};

const CONFIG: &str = "[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\ninterval = 1\n";

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gopher"))
        .arg("ctl")
        .args(args)
        .output()
        .unwrap()
}

/// `gopher ctl` until it answers (the control channel binds just after /metrics).
fn ctl_ok(args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ctl(args);
        if out.status.success() {
            return text(&out).0;
        }
        assert!(
            Instant::now() < deadline,
            "gopher ctl {args:?}: {:?}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A system user made for this test, removed again at the end.
struct TestUser(String);

impl TestUser {
    fn create() -> Option<Self> {
        let name = format!("gtest{}", std::process::id() % 100_000);
        let out = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(&name)
            .output()
            .ok()?;
        out.status.success().then_some(Self(name))
    }

    /// `gopher ctl ARGS` as this user, with no capabilities, through setpriv.
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new("setpriv")
            .args(["--reuid", &self.0, "--regid", &self.0, "--init-groups"])
            .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
            .arg(env!("CARGO_BIN_EXE_gopher"))
            .arg("ctl")
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).output();
    }
}

#[test]
fn a_local_user_who_is_not_root_is_refused_and_root_is_let_in() {
    if !require(is_root(), "root (to create a user and switch to it)") {
        return;
    }
    let Some(user) = TestUser::create() else {
        assert!(
            !require(false, "useradd (Debian package passwd)"),
            "useradd failed"
        );
        return;
    };
    let agent = Agent::start(CONFIG);
    let addr = format!("127.0.0.1:{}", agent.control_port);

    // Root, out of the box: no token flag, a bare host:port.
    let listed = ctl_ok(&["--addr", &addr, "list"]);
    assert!(listed.contains("system_meminfo"), "{listed}");
    // The token the agent created: root's alone.
    let meta = std::fs::metadata(gopher::config::DEFAULT_TOKEN_FILE).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), 0);

    // The other user cannot read the token, so ctl cannot even ask.
    let out = user.ctl(&["--addr", &addr, "set", "system_meminfo", "--switch", "off"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    // (Its token file, or the packaged config when one is installed: both root's.)
    assert!(stderr.contains("ermission denied"), "{stderr}");
    // A guessed token (in a file of their own) is refused by the agent.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let guess = dir.path().join("guess");
    std::fs::write(&guess, "0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&guess, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = user.ctl(&[
        "--addr",
        &addr,
        "--token-file",
        guess.to_str().unwrap(),
        "set",
        "system_meminfo",
        "--switch",
        "off",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    // Nothing changed, as root sees it; and the refusals were counted.
    let got = ctl_ok(&["--addr", &addr, "-o", "json", "get", "system_meminfo"]);
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v[0]["switch"], "on", "{got}");
    let refused = agent
        .scrape()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "gopher_control_requests_total" && s.label("code") == "unauthenticated")
        .map(|s| s.value);
    assert!(refused.is_some_and(|n| n >= 1.0), "{refused:?}");

    // A group let in on purpose: the token file given to the user's group, mode 0640.
    let token = gopher::config::DEFAULT_TOKEN_FILE;
    let group = Command::new("chgrp")
        .arg(&user.0)
        .arg(token)
        .status()
        .unwrap();
    assert!(group.success());
    std::fs::set_permissions(token, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = user.ctl(&["--addr", &addr, "get", "system_meminfo"]);
    // Back to root's alone before anything can fail.
    let _ = Command::new("chgrp").args(["root", token]).status();
    std::fs::set_permissions(token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("system_meminfo"), "{stdout}");
}

#[test]
fn ctl_reads_the_agents_config_and_asks_several_agents_at_once() {
    let a = Agent::start(CONFIG);
    let b = Agent::start(CONFIG);
    let (pa, pb) = (a.control_port, b.control_port);
    // The agent's own config: its control address and token, no --addr.
    let config = a.dir.path().join("probes.toml");
    let listed = ctl_ok(&["--config", config.to_str().unwrap(), "list"]);
    assert!(listed.starts_with("NAME "), "{listed}");
    assert!(listed.contains("system_meminfo"), "{listed}");

    let hosts = format!("127.0.0.1:{pa},127.0.0.1:{pb}");
    let merged = ctl_ok(&["--hosts", &hosts, "get", "system_meminfo"]);
    let lines: Vec<&str> = merged.lines().collect();
    assert!(lines[0].starts_with("HOST "), "{merged}");
    assert_eq!(lines.len(), 3, "{merged}");
    assert!(
        lines[1].starts_with(&format!("127.0.0.1:{pa} ")),
        "{merged}"
    );
    assert!(
        lines[2].starts_with(&format!("127.0.0.1:{pb} ")),
        "{merged}"
    );
    assert!(lines[1..].iter().all(|l| l.contains("system_meminfo")));

    // An inventory with a dead host: the others answer, the dead one has its error line, and
    // the command fails.
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("hosts");
    let dead = free_port();
    std::fs::write(
        &inventory,
        format!("# test fleet\n127.0.0.1:{pa}\n127.0.0.1:{dead}  # down\n127.0.0.1:{pb}\n"),
    )
    .unwrap();
    let out = ctl(&[
        "--inventory",
        inventory.to_str().unwrap(),
        "-o",
        "json",
        "set",
        "system_meminfo",
        "--interval",
        "2",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("1 of 3 agents"), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert_eq!(rows[0]["host"], format!("127.0.0.1:{pa}"));
    assert_eq!(rows[0]["interval_seconds"], 2);
    assert_eq!(rows[1]["host"], format!("127.0.0.1:{dead}"));
    assert!(
        rows[1]["error"].as_str().unwrap().contains("connecting"),
        "{stdout}"
    );
    assert_eq!(rows[2]["host"], format!("127.0.0.1:{pb}"));
    assert_eq!(rows[2]["interval_seconds"], 2);
    drop((a, b));
}
