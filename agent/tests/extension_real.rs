//! The shipped extension probes (`packaging/extend_probes/`) against real nginx, redis and
//! haproxy that each test starts itself, with its own config in a temp dir, on loopback test
//! ports (whatever the package install did with the system instances does not matter).
//!
//! Standalone: each probe script's output lines are checked against its meta file (table name,
//! field count, numbers where the meta says counter/gauge) and their values against an
//! independent read of the service by the test (stub_status over a raw socket, INFO inline,
//! `show stat` on the stats socket), taken just before and just after the probe's read.
//! Lifecycle: target restarts, SIGTERM and a closed stdout.
//! End to end: the agent runs the probe with `switch = "auto"` and a start check keyed to the
//! test's own instance: service up → probe started → rows on /metrics; service stopped → probe
//! stopped and its processes gone. All three tables as served pass `promtool check metrics`.
//! Shipped config: the repo's `[[extend_probes]]` entries are consistent (program, meta, table),
//! their `pgrep -x` checks count exactly the service's processes, and the entries run verbatim
//! from another working directory (relative paths resolved against the config's directory).
//! Here: the helpers and the services; the tests by topic beside it in extension_real/:
//! `standalone` (with lifecycle), `auto` (end to end), `shipped`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::float_cmp,
    clippy::too_many_lines
)]

mod common;
// The crate root names its submodules from tests/: these live beside it in extension_real/ (by
// topic; one test binary, so one link).
#[path = "extension_real/auto.rs"]
mod auto;
#[path = "extension_real/shipped.rs"]
mod shipped;
#[path = "extension_real/standalone.rs"]
mod standalone;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use common::{Agent, Sample, require};
use gopher::imdb::{FieldType, TableMeta};

const WAIT: Duration = Duration::from_secs(20);

type Row = BTreeMap<String, String>;

// ---------------------------------------------------------------------------------------------
// Probe scripts and their meta files.

fn shipped(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/extend_probes")
        .join(file)
        .canonicalize()
        .unwrap_or_else(|e| panic!("packaging/extend_probes/{file}: {e}"))
}

/// The one table of a shipped meta file, read by the agent's own meta loader.
fn meta_of(file: &str) -> TableMeta {
    let mut tables =
        gopher::config::load_meta_file(&shipped(file)).unwrap_or_else(|e| panic!("{file}: {e:?}"));
    assert_eq!(tables.len(), 1, "{file} defines one table");
    tables.remove(0)
}

/// Parses `|table|v1|…|vN|` against `meta`: right table, one value per field, numbers where
/// the field is a counter or gauge (counters non-negative). Values by field name.
fn parse_row(line: &str, meta: &TableMeta) -> Row {
    let inner = line
        .strip_prefix('|')
        .and_then(|l| l.strip_suffix('|'))
        .unwrap_or_else(|| panic!("not a |table|…| row: {line:?}"));
    let mut parts = inner.split('|');
    assert_eq!(parts.next(), Some(meta.name.as_str()), "table of {line:?}");
    let values: Vec<&str> = parts.collect();
    assert_eq!(
        values.len(),
        meta.fields.len(),
        "{line:?} has {} values, meta {} has {} fields",
        values.len(),
        meta.name,
        meta.fields.len()
    );
    meta.fields
        .iter()
        .zip(values)
        .map(|(f, v)| {
            if matches!(f.ty, FieldType::Counter | FieldType::Gauge) && !v.is_empty() {
                let n: f64 = v
                    .parse()
                    .unwrap_or_else(|_| panic!("{} = {v:?} is not a number: {line}", f.name));
                assert!(n.is_finite(), "{} = {v}", f.name);
                assert!(f.ty != FieldType::Counter || n >= 0.0, "{} = {v}", f.name);
            }
            (f.name.clone(), v.to_owned())
        })
        .collect()
}

fn num(row: &Row, field: &str) -> f64 {
    row[field]
        .parse()
        .unwrap_or_else(|_| panic!("{field} = {:?} in {row:?}", row[field]))
}

/// Runs a probe for one round (`--once`) and returns its stdout lines.
fn probe_once(script: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new(shipped(script))
        .args(args)
        .arg("--once")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {args:?}: {:?}\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("Traceback"), "{script}: {stderr}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A probe running in its loop, its stdout lines delivered through a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn spawn(script: &str, args: &[&str]) -> Running {
        let mut child = Command::new(shipped(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sink, mut err) = (Arc::clone(&stderr), child.stderr.take().unwrap());
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0_u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Running {
            child,
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("no output line from the probe")
    }

    /// Reads lines until one satisfies `pred`.
    fn until(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500))
                && pred(&l)
            {
                return l;
            }
        }
        panic!("probe printed no line with {what}");
    }

    /// Waits until the probe has written `needle` to stderr.
    fn wait_stderr(&self, needle: &str) {
        eventually(&format!("{needle:?} on the probe's stderr"), || {
            self.stderr.lock().unwrap().contains(needle)
        });
    }

    /// SIGTERM; returns the exit status and everything the probe wrote to stderr.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_exit(&mut self.child, Duration::from_secs(5));
        self.stderr_reader.take().unwrap().join().unwrap();
        let err = self.stderr.lock().unwrap().clone();
        (status, err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("pid {} did not exit within {timeout:?}", child.id());
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------------------------------------
// Services, each in a temp dir of its own, run in the foreground as children of the test.

struct Service {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Service {
    fn spawn(dir: tempfile::TempDir, port: u16, program: &str, args: &[&str]) -> Service {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        Service {
            child: Some(child),
            dir,
            port,
        }
    }

    /// SIGTERM, wait for the exit (reaped: no zombie left for `kill -0` to find).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A free port for a service the test runs, below the kernel's ephemeral range
/// (`ip_local_port_range`, 32768 up by default). Such a port is never handed to a `connect()`
/// or to a bind to port 0, so nothing else on the host (the agent's listeners, the test's own
/// scrapes) can take it between this choice and the service's bind: a port from the ephemeral
/// range could be, and then the service failed to start.
fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Spread over the range below it by pid and time, so that test binaries running one after
    // another do not start from the same port.
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let (first, span) = (10_000u32, u32::from(low).saturating_sub(10_000).max(1));
    (0..span)
        .map(|i| first + (seed.wrapping_add(i.wrapping_mul(7919))) % span)
        .filter_map(|p| u16::try_from(p).ok())
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below the ephemeral range")
}

fn start_nginx() -> Service {
    start_nginx_in(tempfile::tempdir().unwrap(), free_port())
}

/// nginx in the foreground (`daemon off`), its pid file, logs and config in `dir`.
fn start_nginx_in(dir: tempfile::TempDir, port: u16) -> Service {
    let d = dir.path().display();
    let conf = format!(
        r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /nginx_status {{ stub_status; }}
        location / {{ return 200 "ok\n"; }}
    }}
}}
"#
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let (prefix, conf_path) = (d.to_string(), conf_path.display().to_string());
    let error_log = format!("{d}/error.log");
    let svc = Service::spawn(
        dir,
        port,
        "nginx",
        &["-p", &prefix, "-c", &conf_path, "-e", &error_log],
    );
    eventually("nginx answering", || {
        http_get(port, "/nginx_status").is_ok_and(|r| r.contains("Active connections"))
    });
    svc
}

/// stub_status read by the test: every number on the page, in page order (active, accepts,
/// handled, requests, reading, writing, waiting).
fn stub_status(port: u16) -> Vec<f64> {
    let resp = http_get(port, "/nginx_status").unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    let nums: Vec<f64> = body
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 7, "stub_status page: {body:?}");
    nums
}

fn start_redis_in(dir: tempfile::TempDir, port: u16) -> Service {
    start_redis_with(dir, port, &[])
}

/// redis in the foreground, no persistence, pid file and log in `dir`; `extra` arguments last.
fn start_redis_with(dir: tempfile::TempDir, port: u16, extra: &[&str]) -> Service {
    let d = dir.path().display().to_string();
    let mut args = vec![
        "--port".to_owned(),
        port.to_string(),
        "--bind".to_owned(),
        "127.0.0.1".to_owned(),
        "--save".to_owned(),
        String::new(),
        "--appendonly".to_owned(),
        "no".to_owned(),
        "--daemonize".to_owned(),
        "no".to_owned(),
        "--dir".to_owned(),
        d.clone(),
        "--logfile".to_owned(),
        format!("{d}/redis.log"),
        "--pidfile".to_owned(),
        format!("{d}/redis.pid"),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = Service::spawn(dir, port, "redis-server", &args);
    // A reply at all (+PONG, or -NOAUTH when a password is required) means it is serving.
    eventually("redis answering", || {
        Redis::connect(port).is_ok_and(|mut r| r.reply_line("PING").starts_with(['+', '-']))
    });
    svc
}

fn start_redis() -> Service {
    start_redis_in(tempfile::tempdir().unwrap(), free_port())
}

/// The test's own redis client: inline commands, replies read by hand.
struct Redis(BufReader<TcpStream>);

impl Redis {
    fn connect(port: u16) -> std::io::Result<Redis> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Redis(BufReader::new(s)))
    }

    /// Sends an inline command; returns the first line of the reply, whatever it is.
    fn reply_line(&mut self, line: &str) -> String {
        write!(self.0.get_mut(), "{line}\r\n").unwrap();
        let mut head = String::new();
        self.0.read_line(&mut head).unwrap();
        head.trim_end().to_owned()
    }

    fn cmd(&mut self, line: &str) -> String {
        write!(self.0.get_mut(), "{line}\r\n").unwrap();
        let mut head = String::new();
        self.0.read_line(&mut head).unwrap();
        let head = head.trim_end();
        match head.as_bytes().first() {
            Some(b'+' | b':') => head[1..].to_owned(),
            Some(b'$') => {
                let n: usize = head[1..].parse().unwrap();
                let mut buf = vec![0; n + 2];
                self.0.read_exact(&mut buf).unwrap();
                String::from_utf8(buf[..n].to_vec()).unwrap()
            }
            _ => panic!("redis replied {head:?} to {line:?}"),
        }
    }

    /// INFO as name → value; `keys` and `expires` summed over the keyspace lines.
    fn info(&mut self) -> BTreeMap<String, String> {
        let text = self.cmd("INFO");
        let mut m = BTreeMap::new();
        let (mut keys, mut expires) = (0_u64, 0_u64);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if k.starts_with("db") && k[2..].chars().all(|c| c.is_ascii_digit()) {
                for kv in v.split(',') {
                    match kv.split_once('=') {
                        Some(("keys", n)) => keys += n.parse::<u64>().unwrap(),
                        Some(("expires", n)) => expires += n.parse::<u64>().unwrap(),
                        _ => {}
                    }
                }
            } else {
                m.insert(k.to_owned(), v.to_owned());
            }
        }
        m.insert("keys".into(), keys.to_string());
        m.insert("expires".into(), expires.to_string());
        m
    }
}

struct Haproxy {
    svc: Service,
    sock: String,
    /// Port of the HTTP stats page (`/stats`, `/stats;csv`).
    stats: u16,
}

fn start_haproxy() -> Haproxy {
    start_haproxy_in(tempfile::tempdir().unwrap())
}

/// haproxy in the foreground (`-db`); config `haproxy.cfg` and stats socket `admin.sock` in `dir`.
fn start_haproxy_in(dir: tempfile::TempDir) -> Haproxy {
    let (front, origin, dead, stats) = (free_port(), free_port(), free_port(), free_port());
    let d = dir.path().display().to_string();
    let sock = format!("{d}/admin.sock");
    let cfg = format!(
        r"global
    stats socket {sock} mode 600 level admin
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend fe_test
    bind 127.0.0.1:{front}
    default_backend be_app
frontend fe_origin
    bind 127.0.0.1:{origin}
    http-request return status 200 content-type text/plain string ok
backend be_app
    server s1 127.0.0.1:{origin} check inter 200ms rise 1 fall 1
backend be_dead
    server d1 127.0.0.1:{dead} check inter 200ms rise 1 fall 1
frontend fe_stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
"
    );
    let cfg_path = format!("{d}/haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let svc = Service::spawn(dir, front, "haproxy", &["-db", "-f", &cfg_path]);
    let hp = Haproxy { svc, sock, stats };
    eventually("haproxy: s1 UP and d1 DOWN", || {
        show_stat(&hp.sock).is_ok_and(|s| {
            s.iter().any(|r| r["svname"] == "s1" && r["status"] == "UP")
                && s.iter()
                    .any(|r| r["svname"] == "d1" && r["status"] == "DOWN")
        })
    });
    hp
}

/// `show stat` read by the test, one map per CSV line (column name → value).
fn show_stat(sock: &str) -> std::io::Result<Vec<Row>> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"show stat\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let mut lines = text.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Err(std::io::Error::other(format!("not CSV: {text:?}")));
    };
    let names: Vec<&str> = header.split(',').collect();
    Ok(lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            names
                .iter()
                .zip(l.split(','))
                .map(|(n, v)| ((*n).to_owned(), v.to_owned()))
                .collect()
        })
        .collect())
}

/// The CSV column a haproxy_stat field documents in its description: "... (scur)".
fn documented_column(description: &str) -> Option<&str> {
    let inner = description.strip_suffix(')')?.rsplit_once('(')?.1;
    inner
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then_some(inner)
}
