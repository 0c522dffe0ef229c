//! The agent as systemd runs it: the real binary, a real unix datagram socket as
//! `$NOTIFY_SOCKET` (what systemd gives a `Type=notify` service), a stderr that is the
//! `$JOURNAL_STREAM`, and `global.log_directory`. No probes are configured, so no root is needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    os::unix::{fs::MetadataExt as _, net::UnixDatagram},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::free_port;

/// Writes a config serving /metrics on a free port (plus `extra`) into `dir`; returns the port.
/// The control channel is off: its default port (8889) would make agents of tests running in
/// parallel (or another agent on the machine) refuse to start.
fn config(dir: &Path, extra: &str) -> u16 {
    let port = free_port();
    std::fs::write(
        dir.join("probes.toml"),
        format!(
            "{extra}\n[web_server]\nbind_addr = \"127.0.0.1\"\nport = {port}\n[control]\nswitch = \"off\"\n"
        ),
    )
    .unwrap();
    port
}

fn gopher(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gopher"));
    cmd.arg("--config")
        .arg(dir.join("probes.toml"))
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null());
    cmd
}

fn metrics_answer(port: u16) -> bool {
    Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_serving(port: u16) {
    let start = Instant::now();
    while !metrics_answer(port) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "agent never served /metrics"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "agent did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the child if a test fails half way.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the agent with stderr into `stderr_path` (and `env`) until it serves /metrics, stops it
/// and returns what it wrote there.
fn stderr_of_a_run(dir: &Path, port: u16, stderr_path: &Path, env: &[(&str, &str)]) -> String {
    // Appending to the file the caller may have made: the same inode, as JOURNAL_STREAM names.
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr_path)
        .unwrap();
    let mut cmd = gopher(dir);
    cmd.stderr(stderr).envs(env.iter().copied());
    let mut agent = Running(cmd.spawn().unwrap());
    wait_serving(port);
    assert!(terminate(&mut agent.0).success());
    std::fs::read_to_string(stderr_path).unwrap()
}

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = socket
        .recv(&mut buf)
        .expect("no notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn notifies_ready_once_serving_then_watchdog_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let port = config(dir.path(), "");
    let sock_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&sock_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut agent = Running(
        gopher(dir.path())
            .env("NOTIFY_SOCKET", &sock_path)
            // 1 s watchdog: pings every 0.5 s. No WATCHDOG_PID: the period is for this process.
            .env("WATCHDOG_USEC", "1000000")
            .spawn()
            .unwrap(),
    );

    let ready = recv(&socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready
            .lines()
            .any(|l| l == format!("MAINPID={}", agent.0.id())),
        "{ready:?}"
    );
    // READY means scrapeable: /metrics answers at once, without waiting.
    assert!(metrics_answer(port), "READY=1 before /metrics was served");

    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        assert_eq!(recv(&socket), "WATCHDOG=1");
        pings += 1;
    }
    let took = start.elapsed();
    // Three pings at half a second: about 1 s (the first may come at once).
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "3 pings in {took:?}"
    );
    // The agent's own tasks run supervised, their restart counters shown from 0 (Kafka is
    // off: no task). After the timing: a scrape under load would let pings queue up meanwhile.
    let out = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    for task in ["ingest", "web"] {
        assert!(
            body.contains(&format!(
                "gopher_task_restarts_total{{task=\"{task}\"}} 0\n"
            )),
            "{body}"
        );
    }
    assert!(!body.contains("task=\"kafka\""), "{body}");

    let status = terminate(&mut agent.0);
    assert!(status.success(), "{status}");
    // Pings may still be in flight; STOPPING=1 follows them.
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    loop {
        let msg = recv(&socket);
        if msg.starts_with("STOPPING=1") {
            break;
        }
        assert_eq!(msg, "WATCHDOG=1");
    }
}

#[test]
fn without_notify_socket_nothing_is_sent_and_the_agent_runs() {
    // The same binary by hand: no NOTIFY_SOCKET, no failure, no stray socket.
    let dir = tempfile::tempdir().unwrap();
    let port = config(dir.path(), "");
    let mut agent = Running(gopher(dir.path()).spawn().unwrap());
    wait_serving(port);
    assert!(terminate(&mut agent.0).success());
}

#[test]
fn log_directory_gets_a_daily_file_and_stderr_only_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let port = config(
        dir.path(),
        "[global]\nlog_directory = \"logs\"\nlog_level = \"info\"\n",
    );
    let err = stderr_of_a_run(dir.path(), port, &dir.path().join("stderr"), &[]);
    // Relative to the config file's directory, created by the agent.
    let logs = dir.path().join("logs");
    let files: Vec<_> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    let day = name
        .strip_prefix("gopher.")
        .and_then(|r| r.strip_suffix(".log"))
        .unwrap_or_else(|| panic!("{name}"));
    assert!(day.len() == 10 && day.as_bytes()[4] == b'-', "{name}");
    let log = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        log.contains("INFO") && log.contains("serving /metrics"),
        "{log}"
    );
    assert!(log.contains("stopping"), "{log}");
    // Info lines went to the file only.
    assert!(!err.contains("serving /metrics"), "{err}");
}

#[test]
fn under_journald_stderr_lines_carry_priorities_and_no_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let port = config(dir.path(), "");
    let stderr_path = dir.path().join("journal-stream");
    // What systemd sets for a service whose stderr is a journald stream: "device:inode" of it.
    let meta = std::fs::File::create(&stderr_path)
        .unwrap()
        .metadata()
        .unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let err = stderr_of_a_run(
        dir.path(),
        port,
        &stderr_path,
        &[("JOURNAL_STREAM", &stream)],
    );
    let serving = err
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        serving.starts_with("<6> INFO gopher: serving /metrics"),
        "{serving:?}"
    );
    assert!(!err.contains('\u{1b}'), "colour codes: {err:?}");

    // A stderr that is not the named stream (inherited variable): the normal format.
    let other = dir.path().join("other");
    let err = stderr_of_a_run(dir.path(), port, &other, &[("JOURNAL_STREAM", &stream)]);
    let serving = err
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .unwrap();
    assert!(!serving.starts_with('<'), "{serving:?}");
    // RFC 3339 timestamp first, as on a terminal.
    assert!(
        serving.as_bytes()[4] == b'-' && serving.contains('T'),
        "{serving:?}"
    );
}
