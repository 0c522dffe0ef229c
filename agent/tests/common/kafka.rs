//! A real Kafka-protocol broker (tansu, memory storage) on a loopback port and an independent
//! consumer (Python confluent-kafka, `support/kafka_client.py`), for every test that checks
//! rows on Kafka (`kafka.rs` for the egress itself, `lb_links.rs` for the load-balancer tables):
//! one setup, not one per test file. Needs `tansu` (scripts/test-deps.sh installs it into
//! ~/.cache/gopher/tansu; `GOPHER_TANSU` names another binary) and `python3 -c 'import
//! confluent_kafka'`; [`kafka_available`] skips loudly without them.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::TcpStream,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use super::{require, support};

const WAIT: Duration = Duration::from_secs(30);
/// The rows topic and the metadata topic (gala-gopher's names).
pub const ROWS: &str = "gala_gopher";
pub const META_TOPIC: &str = "gala_gopher_metadata";

// ---------------------------------------------------------------------------------------------
// The broker.

/// The tansu binary: `GOPHER_TANSU`, else the one scripts/test-deps.sh installs, else `PATH`.
pub fn tansu_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GOPHER_TANSU") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let cached = home.join(".cache/gopher/tansu/bin/tansu");
    if cached.is_file() {
        return Some(cached);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v tansu"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    (found.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

pub fn python_kafka() -> bool {
    Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Both the broker and the consumer are here, or the test is skipped (loudly).
pub fn kafka_available() -> Option<PathBuf> {
    let bin = tansu_bin();
    let ok = require(
        bin.is_some(),
        "the tansu broker (scripts/test-deps.sh installs it into ~/.cache/gopher/tansu)",
    ) && require(
        python_kafka(),
        "python3 confluent-kafka (scripts/test-deps.sh pip-installs it)",
    );
    if ok { bin } else { None }
}

/// One tansu broker with memory storage on a loopback port. Memory storage: a restart starts
/// empty, so `start` (re)creates the topics every time.
pub struct Broker {
    pub bin: PathBuf,
    pub port: u16,
    /// What the broker tells clients to connect to (`--advertised-listener-url`); its own
    /// listener when `None`.
    pub advertised: Option<String>,
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub starts: u32,
}

impl Broker {
    pub fn new(bin: PathBuf, port: u16) -> Broker {
        Broker {
            bin,
            port,
            advertised: None,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            starts: 0,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("tansu-{}.log", self.starts))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts the broker, waits until it accepts connections, creates the topics.
    pub fn start(&mut self) {
        self.start_with(&[ROWS, META_TOPIC]);
    }

    /// [`Broker::start`] creating only `topics`.
    pub fn start_with(&mut self, topics: &[&str]) {
        assert!(self.child.is_none(), "broker already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let advertised = self.advertised.clone().unwrap_or_else(|| self.url());
        let child = Command::new(&self.bin)
            .args(["broker", "--listener-url", &self.url()])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(self.addr()).is_err() {
            assert!(
                start.elapsed() < WAIT,
                "tansu did not listen on {}:\n{}",
                self.addr(),
                self.log_tail()
            );
            assert!(
                self.child.as_mut().unwrap().try_wait().unwrap().is_none(),
                "tansu exited:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for topic in topics {
            self.create_topic(topic);
        }
    }

    pub fn create_topic(&self, topic: &str) {
        let start = Instant::now();
        loop {
            let out = Command::new(&self.bin)
                .args(["topic", "create", topic, "--broker", &self.url()])
                .args(["--partitions", "1"])
                .env("RUST_LOG", "warn")
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "tansu topic create {topic}: {}{}\nbroker log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 5 s) and waits until the port is free.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let start = Instant::now();
        while TcpStream::connect(self.addr()).is_ok() {
            assert!(start.elapsed() < WAIT, "port {} still open", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The consumer.

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub offset: i64,
    pub key: Option<String>,
    pub value: String,
}

impl Msg {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.value)
            .unwrap_or_else(|e| panic!("message is not JSON ({e}): {}", self.value))
    }
}

/// `kafka_client.py consume` reading partition 0 of the given topics from the beginning; a
/// thread collects every message it prints.
pub struct Consumer {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub got: Arc<Mutex<Vec<Msg>>>,
}

impl Consumer {
    pub fn start(broker: &Broker, topics: &[&str]) -> Consumer {
        Consumer::start_at(&broker.addr(), topics, None)
    }

    /// A consumer of `topics` at bootstrap address `addr`, with TLS trusting `ca` if given.
    pub fn start_at(addr: &str, topics: &[&str], ca: Option<&std::path::Path>) -> Consumer {
        let mut cmd = Command::new("python3");
        if let Some(ca) = ca {
            cmd.env("KAFKA_SSL_CA", ca);
        }
        let mut child = cmd
            .arg(support("kafka_client.py"))
            .args(["consume", addr, &topics.join(",")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap();
                sink.lock().unwrap().push(Msg {
                    topic: v["topic"].as_str().unwrap().to_owned(),
                    offset: v["offset"].as_i64().unwrap(),
                    key: v["key"].as_str().map(str::to_owned),
                    value: v["value"].as_str().unwrap_or_default().to_owned(),
                });
            }
        });
        Consumer { child, stdin, got }
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `pred` holds over everything consumed so far; panics with a dump on timeout.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Msg]) -> bool,
    ) -> Vec<Msg> {
        let start = Instant::now();
        loop {
            let got = self.messages();
            if pred(&got) {
                return got;
            }
            if start.elapsed() > timeout {
                let tail: Vec<String> = got
                    .iter()
                    .rev()
                    .take(20)
                    .map(|m| format!("{}@{}: {}", m.topic, m.offset, m.value))
                    .collect();
                panic!(
                    "timed out waiting for {what}; {} messages consumed, last ones:\n{}",
                    got.len(),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the consumer; everything it printed is kept.
    pub fn stop(&mut self) -> Vec<Msg> {
        drop(self.stdin.take());
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        self.messages()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn produce(broker: &Broker, topic: &str, n: usize) -> String {
    let out = Command::new("python3")
        .arg(support("kafka_client.py"))
        .args(["produce", &broker.addr(), topic, &n.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "produce: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

// ---------------------------------------------------------------------------------------------
// Records, agent and probes.

pub fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it here.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(rc, 0);
    let end = buf.iter().position(|&b| b == 0).unwrap();
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The JSON rows of `table` among `msgs` (topic `gala_gopher`).
pub fn rows(msgs: &[Msg], table: &str) -> Vec<BTreeMap<String, Value>> {
    msgs.iter()
        .filter(|m| m.topic == ROWS)
        .map(Msg::json)
        .filter(|v| v["table_name"] == table)
        .map(|v| v.as_object().unwrap().clone().into_iter().collect())
        .collect()
}

pub fn field<'a>(row: &'a BTreeMap<String, Value>, name: &str) -> &'a str {
    row.get(name)
        .unwrap_or_else(|| panic!("no field {name} in {row:?}"))
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a JSON string in {row:?}"))
}

/// The envelope every record carries: timestamp (ms, number) within `since..=now`, this
/// host's name, a machine id, the table; every other value a JSON string.
pub fn check_envelope(row: &BTreeMap<String, Value>, table: &str, since_ms: i64) {
    let ts = row["timestamp"]
        .as_i64()
        .unwrap_or_else(|| panic!("timestamp is not an integer: {row:?}"));
    assert!(
        ts >= since_ms - 1000 && ts <= now_ms() + 1000,
        "timestamp {ts} not in [{since_ms}, now]: {row:?}"
    );
    assert_eq!(field(row, "table_name"), table);
    assert_eq!(field(row, "hostname"), hostname());
    assert!(!field(row, "machine_id").is_empty(), "{row:?}");
    for (k, v) in row {
        if k != "timestamp" {
            assert!(v.is_string(), "{k} is not a JSON string in {row:?}");
        }
    }
}

/// Fast supervision and 1 s ingress/egress; Kafka on towards `broker`.
pub fn agent_config(broker: &str, extra: &str) -> String {
    agent_config_with(broker, "", 1, extra)
}

/// [`agent_config`] with more `[kafka]` lines and another egress interval (seconds).
pub fn agent_config_with(broker: &str, kafka: &str, egress: u32, extra: &str) -> String {
    format!(
        r#"
[ingress]
interval = 1
[egress]
interval = {egress}
[imdb]
record_timeout = 120
[kafka]
switch = "on"
kafka_broker = "{broker}"
{kafka}
[supervision]
restart_backoff = 1
restart_backoff_max = 2
max_quick_failures = 3
stop_grace = 2
start_check_interval = 1
start_check_timeout = 1
{extra}
"#
    )
}
