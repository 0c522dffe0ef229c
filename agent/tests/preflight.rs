//! `gopher check`, the preflight, on real hosts made to lack something: a non-root user
//! (setpriv), a mount namespace without cgroup2 (unshare -m, umount), a taken port, an
//! unreachable Kafka broker and a missing extension probe command; each problem is one line
//! naming it, and the exit status is 1. The agent logs the same problems at start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{free_port, have, is_root, output_text, require};

const BIN: &str = env!("CARGO_BIN_EXE_gopher");

/// A config in a directory anyone may read (the non-root run reads it too).
fn config(dir: &Path, body: &str) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("probes.toml");
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

fn tcp_config(dir: &Path, web: u16, extra: &str) -> PathBuf {
    let control = free_port();
    config(
        dir,
        &format!(
            "[[probes]]\nname = \"tcp\"\nswitch = \"on\"\n{extra}\n[web_server]\nbind_addr = \"127.0.0.1\"\nport = {web}\n[control]\nlisten = \"127.0.0.1:{control}\"\n"
        ),
    )
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs a `check` that must find problems (exit 1): its lines.
fn failed(cmd: &mut Command) -> Vec<String> {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    lines(&out)
}

#[test]
fn check_passes_here_and_names_each_problem() {
    if !require(is_root(), "root (the tcp probe's privileges)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let web = free_port();
    let path = tcp_config(dir.path(), web, "");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(lines(&out), [format!("{}: ready", path.display())]);

    // A taken port, a broker nobody listens on, a probe command that is not there.
    let taken = TcpListener::bind(("127.0.0.1", web)).unwrap();
    let dead = free_port();
    let path = tcp_config(
        dir.path(),
        web,
        &format!(
            "[kafka]\nswitch = \"on\"\nkafka_broker = \"127.0.0.1:{dead}\"\n\
             [[extend_probes]]\nname = \"ghost\"\ncommand = \"./ghost_probe.py\"\nswitch = \"on\"\n"
        ),
    );
    let said = failed(Command::new(BIN).args(["check", "--config"]).arg(&path));
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(
        said[0].starts_with(&format!(
            "port: web_server 127.0.0.1:{web} cannot be bound: "
        )),
        "{said:?}"
    );
    assert!(
        said[1].starts_with(&format!("kafka: broker 127.0.0.1:{dead} unreachable: ")),
        "{said:?}"
    );
    assert_eq!(
        said[2],
        format!(
            "extend_probes[0] ghost: command {}/./ghost_probe.py not found",
            dir.path().display()
        )
    );
    drop(taken);
}

#[test]
fn check_as_a_user_without_privileges_names_them() {
    if !require(
        is_root() && have("setpriv", &["--version"]),
        "root and setpriv (util-linux) to become another user",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = tcp_config(dir.path(), free_port(), "");
    let said = failed(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(["check", "--config"])
            .arg(&path),
    );
    assert_eq!(said.len(), 1, "{said:?}");
    for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_PERFMON"] {
        assert!(said[0].contains(cap), "{said:?}");
    }
    assert!(
        said[0].starts_with("privileges: the tcp probe needs "),
        "{said:?}"
    );
}

#[test]
fn check_in_a_namespace_without_cgroup2_names_it() {
    if !require(
        is_root() && have("unshare", &["--version"]),
        "root and unshare (util-linux) for a mount namespace",
    ) {
        return;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let cgroup2: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1])
        })
        .collect();
    assert!(!cgroup2.is_empty(), "this host has no cgroup2 to hide");
    let dir = tempfile::tempdir().unwrap();
    let path = tcp_config(dir.path(), free_port(), "");
    // Unmounted in a private mount namespace only: the host keeps its cgroup2.
    let script = format!(
        "umount -l {} && exec \"$0\" check --config \"$1\"",
        cgroup2.join(" ")
    );
    assert_eq!(
        failed(
            Command::new("unshare")
                .args(["-m", "--propagation", "private", "sh", "-c", &script, BIN])
                .arg(&path)
        ),
        [
            "cgroup2: no cgroup2 filesystem in /proc/mounts: the tcp probe attaches to the cgroup v2 root (mount it, e.g. on /sys/fs/cgroup)"
        ]
    );
    assert!(
        std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(" cgroup2 ")
    );
}

#[test]
fn the_agent_logs_the_preflight_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        &format!(
            "[[extend_probes]]\nname = \"ghost\"\ncommand = \"./ghost_probe.py\"\nswitch = \"on\"\n\
             [web_server]\nbind_addr = \"127.0.0.1\"\nport = {}\n",
            free_port()
        ),
    );
    let mut agent = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = agent.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("preflight:") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let _ = agent.kill();
    let _ = agent.wait();
    let line = line.expect("no preflight line in the agent's log");
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("preflight: extend_probes[0] ghost: command ")
            && line.contains("ghost_probe.py not found"),
        "{line}"
    );
}
