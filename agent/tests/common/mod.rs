//! Shared helpers for the integration tests: run the real agent, scrape it with a real parser.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::missing_panics_doc
)]

pub mod kafka;
pub mod kube;
pub mod nginx;
pub mod outputs;
pub mod pki;
pub mod podman;
pub mod prometheus;
pub mod tcp;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

/// True when a missing capability must fail the test rather than skip it (set by `.ci/run`).
pub fn strict() -> bool {
    std::env::var("GOPHER_STRICT_TESTS").is_ok_and(|v| v == "1" || v == "true")
}

/// Returns false (after saying so loudly) when the test cannot run here; panics under strict.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    assert!(
        !strict(),
        "GOPHER_STRICT_TESTS is set and this test needs {what}"
    );
    eprintln!("\n*** SKIPPED: this test needs {what} ***\n");
    false
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(name)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map_or("", String::as_str)
    }
}

/// A test's config plus the listeners: web on `port`, control on `control_port` unless the
/// test has a `[control]` of its own (off the default port, so tests never collide with an
/// agent running on this machine).
fn config_body(config: &str, port: u16, control_port: u16) -> String {
    let control = if config.contains("[control]") {
        String::new()
    } else {
        format!("[control]\nlisten = \"127.0.0.1:{control_port}\"\n")
    };
    format!("{config}\n[web_server]\nbind_addr = \"127.0.0.1\"\nport = {port}\n{control}")
}

/// Scrapes `url` through prometheus_client's parser (the reference implementation).
pub fn scrape_url(url: &str) -> Result<Vec<Sample>, String> {
    let out = Command::new("python3")
        .arg(support("scrape.py"))
        .arg(url)
        .output()
        .map_err(|e| format!("running scrape.py: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Sample {
                name: v["name"].as_str().unwrap().to_owned(),
                labels: v["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect(),
                value: v["value"].as_f64().unwrap_or(f64::NAN),
            }
        })
        .collect())
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (the server closes: the body is what remains): the status
/// and body, or None while nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

pub struct Agent {
    child: Child,
    pub port: u16,
    /// The control channel's port (when the test's config has no `[control]` of its own).
    pub control_port: u16,
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `gopher` with the given config body (the web_server section is added here).
    pub fn start(config: &str) -> Agent {
        Self::start_file(
            "probes.toml",
            |port, control| config_body(config, port, control),
            None,
        )
    }

    /// Starts `gopher` with the file `name` written by `body(web port, control port)`, whose
    /// stderr (the log) goes to `log` when given.
    pub fn start_file(
        name: &str,
        body: impl FnOnce(u16, u16) -> String,
        log: Option<&Path>,
    ) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let control_port = free_port();
        let path = dir.path().join(name);
        std::fs::write(&path, body(port, control_port)).unwrap();
        let stderr = log.map_or_else(Stdio::inherit, |l| {
            Stdio::from(std::fs::File::create(l).unwrap())
        });
        let child = Command::new(env!("CARGO_BIN_EXE_gopher"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let agent = Agent {
            child,
            port,
            control_port,
            dir,
        };
        agent.wait_for(Duration::from_secs(30), "agent ready", |s| {
            s.iter().any(|x| x.name == "gopher_build_info")
        });
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replaces the config file (same ports) and sends SIGHUP.
    pub fn reload(&self, config: &str) {
        let path = self.dir.path().join("probes.toml");
        std::fs::write(&path, config_body(config, self.port, self.control_port)).unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }

    /// Scrapes /metrics through prometheus_client's parser (the reference implementation).
    pub fn scrape(&self) -> Result<Vec<Sample>, String> {
        scrape_url(&self.url())
    }

    /// Scrapes until `pred` holds; panics with the last scrape on timeout.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let start = Instant::now();
        let mut last = Err(String::from("no scrape yet"));
        while start.elapsed() < timeout {
            last = self.scrape();
            if let Ok(s) = &last
                && pred(s)
            {
                return s.clone();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let dump = match last {
            Ok(s) => s
                .iter()
                .filter(|x| {
                    x.name.starts_with("gala_gopher_tcp_link") || x.name.starts_with("gopher_probe")
                })
                .map(|x| format!("{} {:?} {}", x.name, x.labels, x.value))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => e,
        };
        panic!("timed out waiting for {what}; last scrape:\n{dump}");
    }

    /// Waits until `probe` reports the running state.
    pub fn wait_running(&self, timeout: Duration, probe: &str) -> Vec<Sample> {
        self.wait_for(timeout, &format!("{probe} probe running"), |s| {
            s.iter().any(|x| {
                x.name == "gopher_probe_state"
                    && x.label("probe") == probe
                    && x.label("state") == "running"
                    && x.value > 0.5
            })
        })
    }

    /// SIGTERM, then waits up to `timeout` for the exit; returns its status and how long it
    /// took (`None`: still running, killed).
    pub fn terminate(&mut self, timeout: Duration) -> (Option<std::process::ExitStatus>, Duration) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (Some(status), start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (None, start.elapsed())
    }

    pub fn raw(&self) -> String {
        let out = Command::new("curl")
            .args(["-sf", &self.url()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Already gone (terminate): its pid may belong to another process by now.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `promtool check metrics` says about `exposition` (stdout and stderr).
pub fn promtool_says(exposition: &str) -> String {
    promtool_check(exposition).1
}

/// `promtool check metrics` on `exposition`: whether it exited 0, and what it said (stdout and
/// stderr).
pub fn promtool_check(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// A `peer.py` process: a TCP server or client with a pid of its own.
pub struct Peer {
    pub child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Peer {
    pub fn spawn(prefix: &[&str], args: &[&str]) -> Peer {
        Self::spawn_script(prefix, "peer.py", args)
    }

    /// Like [`Peer::spawn`], running another support script with the same stdin/stdout
    /// protocol (`close` → `closed`).
    pub fn spawn_script(prefix: &[&str], script: &str, args: &[&str]) -> Peer {
        let mut cmd = Command::new(prefix.first().copied().unwrap_or("python3"));
        if prefix.is_empty() {
            cmd.arg(support(script));
        } else {
            cmd.args(&prefix[1..]).arg("python3").arg(support(script));
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        Peer { child, stdin, out }
    }

    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "peer exited early");
        l.trim().to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn comm(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid()))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn close(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = writeln!(s, "close");
        }
        assert_eq!(self.line(), "closed");
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "command failed: {cmd}");
}

/// gopher programs attached to the cgroup2 root, as bpftool (not the agent) sees them. With
/// `holder`, only those that process holds (other agents may run on a shared machine).
/// Ids of the gopher programs attached to the cgroup2 root.
fn gopher_attached_ids() -> Vec<u64> {
    let cg = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
        })
        .unwrap();
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show", &cg])
        .output()
        .unwrap();
    let progs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    progs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("gopher_")))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// The attached gopher programs whose ids the process `pid` holds (program and link fds name
/// them in fdinfo): one agent's own, whatever other agents run beside the test.
pub fn gopher_attached_ids_held_by(pid: u32) -> Vec<u64> {
    let held: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .flat_map(|info| {
                    info.lines()
                        .filter_map(|l| l.strip_prefix("prog_id:"))
                        .filter_map(|v| v.trim().parse().ok())
                        .collect::<Vec<u64>>()
                })
                .collect()
        })
        .unwrap_or_default();
    gopher_attached_ids()
        .into_iter()
        .filter(|id| held.contains(id))
        .collect()
}

/// How many of the programs `ids` are still attached (program ids are not reused soon).
pub fn gopher_still_attached(ids: &[u64]) -> usize {
    gopher_attached_ids()
        .iter()
        .filter(|id| ids.contains(id))
        .count()
}

pub fn gopher_programs_attached_by(holder: Option<u32>) -> usize {
    match holder {
        None => gopher_attached_ids().len(),
        Some(pid) => gopher_attached_ids_held_by(pid).len(),
    }
}

pub fn gopher_programs_attached() -> usize {
    gopher_programs_attached_by(None)
}

/// A command's stdout and stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// True when `program args` runs and exits 0 (a tool is installed and working).
pub fn have(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A client socket bound to `source` before it connects (127.0.0.0/8 is all loopback).
pub fn connect_from(source: std::net::Ipv4Addr, port: u16) -> std::net::TcpStream {
    // SAFETY: plain socket(2)/bind(2)/connect(2) on a descriptor we own from here on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let sa = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = size_of::<libc::sockaddr_in>() as u32;
        let local = sa(source, 0);
        assert_eq!(libc::bind(fd, (&raw const local).cast(), len), 0);
        let remote = sa(std::net::Ipv4Addr::LOCALHOST, port);
        assert_eq!(libc::connect(fd, (&raw const remote).cast(), len), 0);
        <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    }
}
