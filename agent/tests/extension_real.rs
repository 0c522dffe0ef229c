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
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::float_cmp,
    clippy::too_many_lines
)]

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use common::{Agent, Sample, free_port, require};
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

// ---------------------------------------------------------------------------------------------
// Standalone: the probe scripts against real services.

#[test]
fn nginx_probe_matches_stub_status() {
    if !require(have("nginx"), "nginx (apt-get install nginx)") {
        return;
    }
    let meta = meta_of("nginx.meta.toml");
    let nginx = start_nginx();
    let port = nginx.port;
    for _ in 0..5 {
        assert!(http_get(port, "/").unwrap().ends_with("ok\n"));
    }
    let url = format!("http://127.0.0.1:{port}/nginx_status");
    // Independent read, the probe's read, independent read: one request and one connection
    // each, one at a time, so the probe's numbers sit exactly between the test's.
    let before = stub_status(port);
    let lines = probe_once("nginx_probe.py", &["--url", &url]);
    let after = stub_status(port);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let row = parse_row(&lines[0], &meta);
    assert_eq!(row["server"], format!("127.0.0.1:{port}"));
    assert_eq!(num(&row, "up"), 1.0);
    let fields = [
        "active_connections",
        "accepts",
        "handled",
        "requests",
        "reading",
        "writing",
        "waiting",
    ];
    for (i, f) in fields.iter().enumerate() {
        let (b, p, a) = (before[i], num(&row, f), after[i]);
        if meta.fields[meta.field_index(f).unwrap()].ty == FieldType::Counter {
            assert_eq!(
                (b + 1.0, p + 1.0),
                (p, a),
                "{f}: before {b}, probe {p}, after {a}"
            );
        } else {
            // Each read sees only its own connection, busy writing the page.
            assert_eq!((b, p), (p, a), "{f}");
        }
    }
    assert_eq!(
        before[3], 7.0,
        "5 requests, this read and nginx's own count"
    );

    // The redis probe pointed at nginx: not RESP, so up = 0, and the probe carries on.
    let lines = probe_once("redis_probe.py", &["--addr", &format!("127.0.0.1:{port}")]);
    assert_eq!(
        num(&parse_row(&lines[0], &meta_of("redis.meta.toml")), "up"),
        0.0
    );

    // A page that is not stub_status and a port nobody listens on: up = 0, no values.
    let lines = probe_once(
        "nginx_probe.py",
        &[
            "--url",
            &format!("http://127.0.0.1:{port}/elsewhere"),
            "--url",
            &format!("http://127.0.0.1:{}/nginx_status", free_port()),
        ],
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        let row = parse_row(l, &meta);
        assert_eq!(num(&row, "up"), 0.0, "{l}");
        assert!(
            fields.iter().all(|f| row[*f].is_empty()),
            "down target, values left: {l}"
        );
    }
}

#[test]
fn redis_probe_matches_info() {
    if !require(
        have("redis-server"),
        "redis-server (apt-get install redis-server)",
    ) {
        return;
    }
    let meta = meta_of("redis.meta.toml");
    let redis = start_redis();
    let port = redis.port;
    let mut me = Redis::connect(port).unwrap();
    for k in ["k1", "k2", "k3"] {
        assert_eq!(me.cmd(&format!("SET {k} v")), "OK");
    }
    assert_eq!(me.cmd("SET k4 v EX 1000"), "OK");
    assert_eq!(me.cmd("GET k1"), "v");
    assert_eq!(me.cmd("GET k2"), "v");
    write!(me.0.get_mut(), "GET missing\r\n").unwrap();
    let mut nil = String::new();
    me.0.read_line(&mut nil).unwrap();
    assert_eq!(nil, "$-1\r\n");

    let before = me.info();
    let lines = probe_once("redis_probe.py", &["--addr", &format!("127.0.0.1:{port}")]);
    let after = me.info();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let row = parse_row(&lines[0], &meta);
    let f = |k: &str| -> f64 { before[k].parse().unwrap() };
    let g = |k: &str| -> f64 { after[k].parse().unwrap() };

    assert_eq!(row["server"], format!("127.0.0.1:{port}"));
    assert_eq!(row["version"], before["redis_version"]);
    assert_eq!(row["role"], "master");
    assert_eq!(num(&row, "up"), 1.0);
    // What the test did, exactly.
    assert_eq!(num(&row, "keys"), 4.0);
    assert_eq!(num(&row, "expires"), 1.0);
    assert_eq!(num(&row, "keyspace_hits"), 2.0);
    assert_eq!(num(&row, "keyspace_misses"), 1.0);
    // The probe's one INFO on one new connection, between the test's two INFOs.
    let tcp = num(&row, "total_commands_processed");
    assert_eq!(
        (f("total_commands_processed") + 1.0, tcp + 1.0),
        (tcp, g("total_commands_processed"))
    );
    assert_eq!(
        num(&row, "total_connections_received"),
        f("total_connections_received") + 1.0
    );
    assert_eq!(
        num(&row, "total_connections_received"),
        g("total_connections_received")
    );
    assert_eq!(num(&row, "connected_clients"), f("connected_clients") + 1.0);
    for k in [
        "maxmemory",
        "connected_slaves",
        "blocked_clients",
        "rejected_connections",
        "evicted_keys",
        "expired_keys",
    ] {
        assert_eq!(num(&row, k), f(k), "{k}");
    }
    // Every field named after an INFO field: counters between the two reads, gauges numbers.
    for field in &meta.fields {
        let name = field.name.as_str();
        if !before.contains_key(name) || ["keys", "expires"].contains(&name) {
            continue;
        }
        match field.ty {
            FieldType::Counter => {
                let v = num(&row, name);
                assert!(
                    f(name) <= v && v <= g(name),
                    "{name}: {} <= {v} <= {}",
                    f(name),
                    g(name)
                );
            }
            FieldType::Gauge => assert!(num(&row, name) >= 0.0, "{name}"),
            _ => {}
        }
    }
    assert!(num(&row, "used_memory") > 0.0);
    assert!(f("uptime_in_seconds") <= num(&row, "uptime_in_seconds"));

    // The nginx probe pointed at redis: not HTTP, so up = 0, and the probe carries on.
    let lines = probe_once(
        "nginx_probe.py",
        &["--url", &format!("http://127.0.0.1:{port}/nginx_status")],
    );
    assert_eq!(
        num(&parse_row(&lines[0], &meta_of("nginx.meta.toml")), "up"),
        0.0
    );
}

#[test]
fn haproxy_probe_matches_show_stat() {
    if !require(have("haproxy"), "haproxy (apt-get install haproxy)") {
        return;
    }
    let meta = meta_of("haproxy.meta.toml");
    let hp = start_haproxy();
    for _ in 0..4 {
        assert!(http_get(hp.svc.port, "/").unwrap().ends_with("ok"));
    }
    let before = show_stat(&hp.sock).unwrap();
    let lines = probe_once("haproxy_probe.py", &["--socket", &hp.sock]);
    let after = show_stat(&hp.sock).unwrap();
    assert_eq!(
        lines.len(),
        before.len(),
        "one row per statistics line: {lines:?}"
    );
    let types = BTreeMap::from([("0", "frontend"), ("1", "backend"), ("2", "server")]);
    let mut seen = BTreeMap::new();
    for (line, (b, a)) in lines.iter().zip(before.iter().zip(&after)) {
        let row = parse_row(line, &meta);
        assert_eq!(row["instance"], format!("unix:{}", hp.sock));
        assert_eq!(
            (row["proxy"].as_str(), row["server"].as_str()),
            (b["pxname"].as_str(), b["svname"].as_str())
        );
        assert_eq!(row["type"], types[b["type"].as_str()], "{line}");
        assert_eq!(row["status"], b["status"], "{line}");
        for field in &meta.fields {
            let Some(col) = documented_column(&field.description) else {
                continue;
            };
            let (bv, av, v) = (&b[col], &a[col], &row[&field.name]);
            match field.ty {
                FieldType::Counter if !bv.is_empty() => {
                    let (bn, an, vn): (f64, f64, f64) =
                        (bv.parse().unwrap(), av.parse().unwrap(), v.parse().unwrap());
                    assert!(
                        bn <= vn && vn <= an,
                        "{line}: {} ({col}): {bn} <= {vn} <= {an}",
                        field.name
                    );
                }
                FieldType::Counter | FieldType::Gauge if bv == av => {
                    assert_eq!(v, bv, "{line}: {} ({col})", field.name);
                }
                _ => {}
            }
        }
        seen.insert(format!("{}/{}", row["proxy"], row["server"]), row);
    }
    // What the test did, exactly: 4 requests through fe_test to be_app/s1.
    for k in ["fe_test/FRONTEND", "be_app/s1", "be_app/BACKEND"] {
        let r = &seen[k];
        assert_eq!(num(r, "sessions"), 4.0, "{k}");
        assert_eq!(num(r, "http_responses_2xx"), 4.0, "{k}");
        assert_eq!(num(r, "up"), 1.0, "{k}");
    }
    assert_eq!(seen["fe_test/FRONTEND"]["status"], "OPEN");
    assert_eq!(seen["be_app/s1"]["status"], "UP");
    let dead = &seen["be_dead/d1"];
    assert_eq!((dead["status"].as_str(), num(dead, "up")), ("DOWN", 0.0));
    assert!(num(dead, "check_failures") >= 1.0);
    assert_eq!(num(&seen["be_dead/BACKEND"], "up"), 0.0);
    assert!(
        seen["fe_test/FRONTEND"]["weight"].is_empty(),
        "n/a stays empty"
    );

    // The same statistics from the stats page (--url …;csv): same lines, same counts.
    let url = format!("http://127.0.0.1:{}/stats;csv", hp.stats);
    let lines = probe_once("haproxy_probe.py", &["--url", &url]);
    let by_url: BTreeMap<String, Row> = lines
        .iter()
        .map(|l| parse_row(l, &meta))
        .map(|r| (format!("{}/{}", r["proxy"], r["server"]), r))
        .collect();
    assert_eq!(
        by_url.keys().collect::<Vec<_>>(),
        seen.keys().collect::<Vec<_>>()
    );
    let r = &by_url["be_app/s1"];
    assert_eq!(r["instance"], format!("127.0.0.1:{}", hp.stats));
    assert_eq!((num(r, "sessions"), num(r, "up")), (4.0, 1.0));
    assert_eq!(by_url["be_dead/d1"]["status"], "DOWN");

    // A socket nobody listens on: nothing printed, the reason on stderr, exit 0.
    let lines = probe_once(
        "haproxy_probe.py",
        &[
            "--socket",
            &format!("{}/none.sock", hp.svc.dir.path().display()),
        ],
    );
    assert!(lines.is_empty(), "{lines:?}");
}

#[test]
fn redis_probe_survives_a_restart_and_exits_on_sigterm() {
    if !require(
        have("redis-server"),
        "redis-server (apt-get install redis-server)",
    ) {
        return;
    }
    let meta = meta_of("redis.meta.toml");
    let mut redis = start_redis();
    let port = redis.port;
    let probe = Running::spawn(
        "redis_probe.py",
        &["--addr", &format!("127.0.0.1:{port}"), "--interval", "0.2"],
    );
    let up = |want: f64| {
        let meta = &meta;
        move |l: &str| num(&parse_row(l, meta), "up") == want
    };
    let first = parse_row(&probe.line(), &meta);
    assert_eq!(num(&first, "up"), 1.0);

    redis.stop();
    let down = parse_row(&probe.until("up = 0", up(0.0)), &meta);
    assert!(
        down.iter()
            .all(|(k, v)| ["server", "up"].contains(&k.as_str()) || v.is_empty()),
        "a down server leaves no stale values: {down:?}"
    );
    let dir = std::mem::replace(&mut redis.dir, tempfile::tempdir().unwrap());
    let _redis = start_redis_in(dir, port);
    let again = parse_row(&probe.until("up = 1 again", up(1.0)), &meta);
    assert!(
        num(&again, "total_commands_processed") < num(&first, "total_commands_processed") + 50.0
    );
    assert_eq!(again["role"], "master");

    let (status, stderr) = probe.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM ends the probe cleanly: {status:?}\n{stderr}"
    );
    assert!(
        stderr.contains("cannot read") && stderr.contains("readable again"),
        "{stderr}"
    );
    assert!(!stderr.contains("Traceback"), "{stderr}");
}

/// When haproxy goes away, the rows it had keep coming with up = 0 and no stale values, so that
/// `up == 0` alerts fire instead of the series silently ageing out.
#[test]
fn haproxy_probe_reports_known_rows_down_when_haproxy_goes_away() {
    if !require(have("haproxy"), "haproxy (apt-get install haproxy)") {
        return;
    }
    let meta = meta_of("haproxy.meta.toml");
    let mut hp = start_haproxy();
    let probe = Running::spawn(
        "haproxy_probe.py",
        &["--socket", &hp.sock, "--interval", "0.2"],
    );
    let s1 = |want: f64| {
        let meta = &meta;
        move |l: &str| {
            let r = parse_row(l, meta);
            r["proxy"] == "be_app" && r["server"] == "s1" && num(&r, "up") == want
        }
    };
    probe.until("be_app/s1 up = 1", s1(1.0));
    hp.svc.stop();
    let down = parse_row(&probe.until("be_app/s1 up = 0", s1(0.0)), &meta);
    assert!(
        down.iter().all(|(k, v)| {
            ["instance", "proxy", "server", "type", "up"].contains(&k.as_str()) || v.is_empty()
        }),
        "an unreachable haproxy leaves no stale values: {down:?}"
    );
}

/// Without any service: each probe keeps running on refused connections, logs the reason once,
/// exits 0 on SIGTERM, and exits 0 without a traceback when its stdout is closed.
#[test]
fn probes_exit_cleanly_on_sigterm_and_closed_stdout() {
    let nowhere = format!("127.0.0.1:{}", free_port());
    let cases: [(&str, Vec<String>); 3] = [
        (
            "nginx_probe.py",
            vec!["--url".into(), format!("http://{nowhere}/nginx_status")],
        ),
        ("redis_probe.py", vec!["--addr".into(), nowhere.clone()]),
        (
            "haproxy_probe.py",
            vec!["--socket".into(), "/nonexistent/gopher-test.sock".into()],
        ),
    ];
    for (script, args) in &cases {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--interval", "0.1"]);
        let probe = Running::spawn(script, &args);
        probe.wait_stderr("cannot read");
        if *script != "haproxy_probe.py" {
            assert!(
                probe.line().starts_with('|'),
                "{script} prints rows for a down target"
            );
        }
        std::thread::sleep(Duration::from_millis(500)); // a few more failing rounds
        let (status, stderr) = probe.terminate();
        assert_eq!(status.code(), Some(0), "{script}: {status:?}\n{stderr}");
        assert_eq!(
            stderr.matches("cannot read").count(),
            1,
            "{script} logs a failure once per change: {stderr}"
        );
        assert!(!stderr.contains("Traceback"), "{script}: {stderr}");
    }
    // Closed stdout: the next write fails with EPIPE and the probe exits 0, quietly.
    for (script, args) in &cases[..2] {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--interval", "0.1"]);
        let mut child = Command::new(shipped(script))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert!(first.starts_with('|'), "{first:?}");
        drop(out);
        let status = wait_exit(&mut child, Duration::from_secs(5));
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(status.code(), Some(0), "{script}: {status:?}\n{stderr}");
        assert!(!stderr.contains("Traceback"), "{script}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// End to end: the agent runs the shipped probe with switch = "auto"; the start check is keyed to
// the test's own service instance, so that services running elsewhere on the host do not count.

/// An agent config with one shipped extension probe, checked every second.
fn agent_config(
    name: &str,
    script: &str,
    param: &str,
    start_check: &str,
    check_type: &str,
    meta: &str,
) -> String {
    format!(
        r#"
[imdb]
record_timeout = 120
[supervision]
start_check_interval = 1
start_check_timeout = 5
stop_grace = 2
[[extend_probes]]
name = "{name}"
command = "{}"
param = "{param}"
start_check = '''{start_check}'''
check_type = "{check_type}"
switch = "auto"
meta = "{}"
"#,
        shipped(script).display(),
        shipped(meta).display()
    )
}

fn state_is(s: &[Sample], probe: &str, state: &str) -> bool {
    s.iter().any(|x| {
        x.name == "gopher_probe_state"
            && x.label("probe") == probe
            && x.label("state") == state
            && x.value == 1.0
    })
}

/// The value of `metric` in the sample whose labels include `labels`.
fn value(s: &[Sample], metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.iter()
        .find(|x| x.name == metric && labels.iter().all(|(k, v)| x.label(k) == *v))
        .map(|x| x.value)
}

/// Rows refused for `probe`, any reason.
fn rejected(s: &[Sample], probe: &str) -> f64 {
    s.iter()
        .filter(|x| x.name == "gopher_probe_rows_rejected_total" && x.label("probe") == probe)
        .map(|x| x.value)
        .sum()
}

/// Live (not zombie) processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !zombie && cmdline.contains(needle) && pid != std::process::id() {
            out.push(pid);
        }
    }
    out
}

/// Service down → probe stopped, no rows; service up → probe running, rows; service down →
/// probe stopped, its processes gone. `up` starts the service, `check` looks at the rows.
/// What an end-to-end test watches: the probe's name, a string unique to its command line, and
/// the `up` metric with the labels of the test's own instance.
struct Watch<'a> {
    probe: &'a str,
    needle: String,
    up_metric: &'a str,
    labels: &'a [(&'a str, &'a str)],
}

fn auto_lifecycle<S>(
    agent: &Agent,
    w: &Watch<'_>,
    up: impl FnOnce() -> S,
    check: impl FnOnce(&Agent),
    stop: impl FnOnce(S),
) {
    let (probe, needle, up_metric, labels) = (w.probe, w.needle.as_str(), w.up_metric, w.labels);
    // Down: the check says no, the probe does not run.
    agent.wait_for(WAIT, "probe stopped while its service is down", |s| {
        state_is(s, probe, "stopped")
    });
    std::thread::sleep(Duration::from_millis(2500)); // two more checks
    let s = agent.scrape().unwrap();
    assert!(
        state_is(&s, probe, "stopped"),
        "{probe} started without its service"
    );
    assert!(
        value(&s, up_metric, labels).is_none(),
        "rows before the service ran"
    );
    assert!(
        processes_with(needle).is_empty(),
        "probe process without its service"
    );

    let svc = up();
    agent.wait_for(WAIT, "probe running and its rows on /metrics", |s| {
        state_is(s, probe, "running") && value(s, up_metric, labels) == Some(1.0)
    });
    assert!(
        !processes_with(needle).is_empty(),
        "the probe's process runs"
    );
    check(agent);

    stop(svc);
    agent.wait_for(WAIT, "probe stopped after its service stopped", |s| {
        state_is(s, probe, "stopped")
    });
    eventually("the probe's processes gone", || {
        processes_with(needle).is_empty()
    });
    let s = agent.scrape().unwrap();
    assert_eq!(rejected(&s, probe), 0.0, "rows refused by the agent");
    assert!(
        value(&s, "gopher_probe_rows_total", &[("probe", probe)]).is_some_and(|n| n >= 1.0),
        "rows counted for {probe}"
    );
}

#[test]
fn nginx_auto_start_check_runs_the_probe_while_nginx_runs() {
    if !require(have("nginx"), "nginx (apt-get install nginx)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pid_file = dir.path().join("nginx.pid").display().to_string();
    let url = format!("http://127.0.0.1:{port}/nginx_status");
    let agent = Agent::start(&agent_config(
        "nginx",
        "nginx_probe.py",
        &format!("--url {url} --interval 1"),
        &format!("test -s {pid_file} && kill -0 $(cat {pid_file}) 2>/dev/null && echo 1 || echo 0"),
        "count",
        "nginx.meta.toml",
    ));
    let server = format!("127.0.0.1:{port}");
    let labels = [("server", server.as_str())];
    let watch = Watch {
        probe: "nginx",
        needle: format!("nginx_probe.py --url {url}"),
        up_metric: "gala_gopher_nginx_status_up",
        labels: &labels,
    };
    auto_lifecycle(
        &agent,
        &watch,
        || start_nginx_in(dir, port),
        |agent| {
            // The agent's numbers come from the probe's earlier reads: each one below the
            // page the test reads afterwards, and the probe's reads keep counting up.
            let s = agent.scrape().unwrap();
            let page = stub_status(port);
            let counter = |s: &[Sample], f: &str| {
                value(s, &format!("gala_gopher_nginx_status_{f}_total"), &labels)
                    .unwrap_or_else(|| panic!("{f}_total missing"))
            };
            for (i, f) in ["accepts", "handled", "requests"].iter().enumerate() {
                let v = counter(&s, f);
                assert!(
                    v >= 1.0 && v < page[i + 1],
                    "{f}: agent {v}, page {}",
                    page[i + 1]
                );
            }
            agent.wait_for(WAIT, "requests_total past the test's read", |s| {
                counter(s, "requests") > page[3]
            });
            for f in ["active_connections", "reading", "writing", "waiting"] {
                let v = value(&s, &format!("gala_gopher_nginx_status_{f}"), &labels);
                assert!(v.is_some_and(|v| v >= 0.0), "{f}: {v:?}");
            }
        },
        |mut svc| svc.stop(),
    );
}

#[test]
fn redis_auto_start_check_runs_the_probe_while_redis_runs() {
    if !require(
        have("redis-server"),
        "redis-server (apt-get install redis-server)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pid_file = dir.path().join("redis.pid").display().to_string();
    let agent = Agent::start(&agent_config(
        "redis",
        "redis_probe.py",
        &format!("--addr 127.0.0.1:{port} --interval 1"),
        &format!("kill -0 $(cat {pid_file} 2>/dev/null) 2>/dev/null"),
        "exit",
        "redis.meta.toml",
    ));
    let server = format!("127.0.0.1:{port}");
    let labels = [("server", server.as_str())];
    let watch = Watch {
        probe: "redis",
        needle: format!("redis_probe.py --addr 127.0.0.1:{port}"),
        up_metric: "gala_gopher_redis_server_up",
        labels: &labels,
    };
    auto_lifecycle(
        &agent,
        &watch,
        || start_redis_in(dir, port),
        |agent| {
            let mut me = Redis::connect(port).unwrap();
            for i in 0..7 {
                assert_eq!(me.cmd(&format!("SET key{i} v")), "OK");
            }
            assert_eq!(me.cmd("GET key1"), "v");
            let info = me.info();
            let v =
                |s: &[Sample], f: &str| value(s, &format!("gala_gopher_redis_server_{f}"), &labels);
            let s = agent.wait_for(WAIT, "the test's keys and lookup in the rows", |s| {
                v(s, "keys") == Some(7.0) && v(s, "keyspace_hits_total") == Some(1.0)
            });
            let up = s
                .iter()
                .find(|x| x.name == "gala_gopher_redis_server_up" && x.label("server") == server)
                .unwrap();
            assert_eq!(up.label("version"), info["redis_version"]);
            assert_eq!(up.label("role"), "master");
            assert_eq!(v(&s, "keyspace_misses_total"), Some(0.0));
            assert_eq!(v(&s, "maxmemory"), Some(info["maxmemory"].parse().unwrap()));
        },
        |mut svc| svc.stop(),
    );
}

#[test]
fn haproxy_auto_start_check_runs_the_probe_while_haproxy_runs() {
    if !require(have("haproxy"), "haproxy (apt-get install haproxy)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let sock = format!("{d}/admin.sock");
    // `[h]aproxy` matches haproxy's command line but not the checking shell's own.
    let agent = Agent::start(&agent_config(
        "haproxy",
        "haproxy_probe.py",
        &format!("--socket {sock} --interval 1"),
        &format!("pgrep -f '[h]aproxy -db -f {d}/haproxy.cfg' | wc -l"),
        "count",
        "haproxy.meta.toml",
    ));
    let instance = format!("unix:{sock}");
    let labels = [
        ("instance", instance.as_str()),
        ("proxy", "be_app"),
        ("server", "s1"),
    ];
    let front = std::cell::Cell::new(0);
    let watch = Watch {
        probe: "haproxy",
        needle: format!("haproxy_probe.py --socket {sock}"),
        up_metric: "gala_gopher_haproxy_stat_up",
        labels: &labels,
    };
    auto_lifecycle(
        &agent,
        &watch,
        || {
            let hp = start_haproxy_in(dir);
            front.set(hp.svc.port);
            hp
        },
        |agent| {
            for _ in 0..3 {
                assert!(http_get(front.get(), "/").unwrap().ends_with("ok"));
            }
            let s = agent.wait_for(WAIT, "the test's 3 requests through be_app/s1", |s| {
                value(s, "gala_gopher_haproxy_stat_sessions_total", &labels) == Some(3.0)
                    && value(
                        s,
                        "gala_gopher_haproxy_stat_http_responses_2xx_total",
                        &labels,
                    ) == Some(3.0)
            });
            let dead = [
                ("instance", instance.as_str()),
                ("proxy", "be_dead"),
                ("server", "d1"),
            ];
            assert_eq!(value(&s, "gala_gopher_haproxy_stat_up", &dead), Some(0.0));
            let d1 = s
                .iter()
                .find(|x| x.name == "gala_gopher_haproxy_stat_up" && x.label("server") == "d1")
                .unwrap();
            assert_eq!((d1.label("status"), d1.label("type")), ("DOWN", "server"));
        },
        |mut hp| hp.svc.stop(),
    );
}

// ---------------------------------------------------------------------------------------------
// The repo's probes.toml as shipped.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Processes (zombies included, as pgrep counts them) whose name is exactly `comm`.
fn count_comm(comm: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .count()
}

/// Runs a start check as the agent does (`sh -c`, from the config's directory); its number.
fn run_count_check(check: &str) -> usize {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(check)
        .current_dir(repo())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{check:?} printed {text:?}"))
}

/// The shipped entries: name, the exact process name its start check counts, its table.
const SHIPPED: [(&str, &str, &str); 3] = [
    ("nginx", "nginx", "nginx_status"),
    ("redis", "redis-server", "redis_server"),
    ("haproxy", "haproxy", "haproxy_stat"),
];

/// The agent binary on a config file of our own, started from another working directory.
struct AgentAt {
    child: Child,
    port: u16,
}

impl AgentAt {
    fn start(config: &Path, cwd: &Path, port: u16) -> AgentAt {
        let child = Command::new(env!("CARGO_BIN_EXE_gopher"))
            .arg("--config")
            .arg(config)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let agent = AgentAt { child, port };
        agent.wait_for("agent ready", |s| {
            s.iter().any(|x| x.name == "gopher_build_info")
        });
        agent
    }

    fn scrape(&self) -> Option<Vec<Sample>> {
        common::scrape_url(&format!("http://127.0.0.1:{}/metrics", self.port)).ok()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Some(s) = self.scrape()
                && pred(&s)
            {
                return s;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("timed out waiting for {what}");
    }
}

impl Drop for AgentAt {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = wait_exit(&mut self.child, Duration::from_secs(10));
    }
}

/// Each shipped entry is auto with a count check, its program is in packaging/extend_probes/
/// (relative to probes.toml) and executable, its meta file defines the table the program
/// writes, and its check counts exactly the service's processes: never the checking shell.
#[test]
fn shipped_entries_are_consistent_and_their_checks_count_only_the_service() {
    let cfg = gopher::config::load(&repo().join("probes.toml")).unwrap();
    for (name, comm, table) in SHIPPED {
        let e = cfg
            .extend_probes
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no [[extend_probes]] {name} in probes.toml"));
        assert_eq!(e.switch, gopher::config::Switch::Auto, "{name}");
        assert_eq!(e.check_type, gopher::config::CheckType::Count, "{name}");
        let program = e.command.split_whitespace().next().unwrap();
        assert!(
            program.starts_with("packaging/extend_probes/"),
            "{name}: {program}"
        );
        let path = repo().join(program);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert!(mode & 0o111 != 0, "{} is not executable", path.display());
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(
            source.contains(&format!("TABLE = \"{table}\"")),
            "{program} writes {table}"
        );
        let tables = gopher::config::load_meta_file(e.meta.as_ref().unwrap()).unwrap();
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].name, table, "{name}: meta file");

        let check = e.start_check.as_deref().unwrap();
        let (before, n, after) = (count_comm(comm), run_count_check(check), count_comm(comm));
        assert!(
            before == n && n == after,
            "{check:?} = {n}, {comm} processes: {before}/{after}"
        );
    }
    // With the test's own instances running, the checks count them (nginx: master + worker).
    let missing: Vec<_> = ["nginx", "redis-server", "haproxy"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    if !require(missing.is_empty(), &format!("{missing:?} installed")) {
        return;
    }
    let _services = (start_nginx(), start_redis(), start_haproxy());
    for (name, comm, _) in SHIPPED {
        let e = cfg.extend_probes.iter().find(|e| e.name == name).unwrap();
        let check = e.start_check.as_deref().unwrap();
        let (before, n, after) = (count_comm(comm), run_count_check(check), count_comm(comm));
        assert!(n >= 1, "{check:?} = {n} while {comm} runs");
        assert!(
            before == n && n == after,
            "{check:?} = {n}, {comm} processes: {before}/{after}"
        );
    }
}

/// The extension part of the repo's probes.toml, verbatim, run by the agent from another
/// working directory with the config in a copy of the checkout's layout: the relative program
/// and meta paths resolve, the pgrep checks start every probe while the service runs and stop it
/// afterwards. (The shipped parameters point at the default ports, not at the test's
/// instances: nginx_status and redis_server rows say up = 0, which still shows them flowing.)
#[test]
fn shipped_probes_toml_entries_run_from_a_checkout() {
    let missing: Vec<_> = ["nginx", "redis-server", "haproxy"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    if !require(missing.is_empty(), &format!("{missing:?} installed")) {
        return;
    }
    let text = std::fs::read_to_string(repo().join("probes.toml")).unwrap();
    let section = &text[text.find("[[extend_probes]]").unwrap()..];
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("packaging"), dir.path().join("packaging")).unwrap();
    let port = free_port();
    let config = format!(
        "[supervision]\nstart_check_interval = 1\nstop_grace = 2\n\
         [web_server]\nbind_addr = \"127.0.0.1\"\nport = {port}\n\n{section}"
    );
    let path = dir.path().join("probes.toml");
    std::fs::write(&path, config).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let agent = AgentAt::start(&path, elsewhere.path(), port);

    let others: Vec<_> = SHIPPED
        .iter()
        .filter(|(_, comm, _)| count_comm(comm) > 0)
        .collect();
    if !others.is_empty() {
        // The shipped checks count every such process on the host, so with the host's own
        // services running the stop half cannot be shown here; the start half still can.
        eprintln!("\n*** host services already run ({others:?}): checking start only ***\n");
        agent.wait_for("probes of running host services started", |s| {
            others
                .iter()
                .all(|(name, _, _)| state_is(s, name, "running"))
        });
        return;
    }
    agent.wait_for("every shipped probe stopped", |s| {
        SHIPPED
            .iter()
            .all(|(name, _, _)| state_is(s, name, "stopped"))
    });
    let services = (start_nginx(), start_redis(), start_haproxy());
    let s = agent.wait_for("every shipped probe running, rows flowing", |s| {
        SHIPPED
            .iter()
            .all(|(name, _, _)| state_is(s, name, "running"))
            && value(
                s,
                "gala_gopher_nginx_status_up",
                &[("server", "127.0.0.1:80")],
            )
            .is_some()
            && value(
                s,
                "gala_gopher_redis_server_up",
                &[("server", "127.0.0.1:6379")],
            )
            .is_some()
    });
    for (name, _, _) in SHIPPED {
        assert_eq!(rejected(&s, name), 0.0, "{name}: rows refused");
    }
    drop(services);
    agent.wait_for("every shipped probe stopped again", |s| {
        SHIPPED
            .iter()
            .all(|(name, _, _)| state_is(s, name, "stopped"))
    });
    for script in ["nginx_probe.py", "redis_probe.py", "haproxy_probe.py"] {
        eventually("probe processes gone", || {
            processes_with(&format!("extend_probes/{script}")).is_empty()
        });
    }
}

#[test]
fn redis_probe_authenticates_with_a_password_file_or_rediscli_auth() {
    if !require(
        have("redis-server"),
        "redis-server (apt-get install redis-server)",
    ) {
        return;
    }
    let meta = meta_of("redis.meta.toml");
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "s3cret word\n").unwrap();
    let pw_file = pw_file.display().to_string();
    let redis = start_redis_with(dir, free_port(), &["--requirepass", "s3cret word"]);
    let addr = format!("127.0.0.1:{}", redis.port);
    let up = |lines: &[String]| num(&parse_row(&lines[0], &meta), "up");

    assert_eq!(
        up(&probe_once("redis_probe.py", &["--addr", &addr])),
        0.0,
        "no password"
    );
    assert_eq!(
        up(&probe_once(
            "redis_probe.py",
            &["--addr", &addr, "--password-file", &pw_file]
        )),
        1.0,
        "--password-file"
    );
    let out = Command::new(shipped("redis_probe.py"))
        .args(["--addr", &addr, "--once"])
        .env("REDISCLI_AUTH", "s3cret word")
        .output()
        .unwrap();
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(up(&lines), 1.0, "REDISCLI_AUTH");
    // An unreadable password file stops the probe (exit 2) rather than running without it.
    let out = Command::new(shipped("redis_probe.py"))
        .args(["--addr", &addr, "--once", "--password-file", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "unreadable password file is a usage error"
    );
}

/// All three probes' tables as the agent serves them pass `promtool check metrics` silently
/// (names, HELP, TYPE, counters' `_total`), and the agent refuses none of their rows.
#[test]
fn all_three_tables_pass_promtool() {
    let tools = ["nginx", "redis-server", "haproxy", "promtool"];
    let missing: Vec<_> = tools.into_iter().filter(|p| !have(p)).collect();
    if !require(missing.is_empty(), &format!("{missing:?} installed")) {
        return;
    }
    let (nginx, redis, hp) = (start_nginx(), start_redis(), start_haproxy());
    let entry = |name: &str, script: &str, param: String, meta: &str| {
        format!(
            "[[extend_probes]]\nname = \"{name}\"\ncommand = \"{}\"\nparam = \"{param}\"\n\
             switch = \"on\"\nmeta = \"{}\"\n",
            shipped(script).display(),
            shipped(meta).display()
        )
    };
    let config = [
        entry(
            "nginx",
            "nginx_probe.py",
            format!(
                "--url http://127.0.0.1:{}/nginx_status --interval 1",
                nginx.port
            ),
            "nginx.meta.toml",
        ),
        entry(
            "redis",
            "redis_probe.py",
            format!("--addr 127.0.0.1:{} --interval 1", redis.port),
            "redis.meta.toml",
        ),
        entry(
            "haproxy",
            "haproxy_probe.py",
            format!("--socket {} --interval 1", hp.sock),
            "haproxy.meta.toml",
        ),
    ]
    .concat();
    let agent = Agent::start(&config);
    let s = agent.wait_for(WAIT, "rows of all three tables", |s| {
        [
            "gala_gopher_nginx_status_requests_total",
            "gala_gopher_redis_server_total_commands_processed_total",
            "gala_gopher_haproxy_stat_sessions_total",
        ]
        .iter()
        .all(|m| s.iter().any(|x| x.name == *m))
    });
    for probe in ["nginx", "redis", "haproxy"] {
        assert_eq!(rejected(&s, probe), 0.0, "{probe}: rows refused");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(agent.raw().as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}
