//! Drop-in for gala-gopher's users (issue 12): its `gala-gopher.conf` run by the real agent and
//! converted by `gopher convert`, and its Prometheus names (`[web_server] metric_names =
//! "gala-gopher"`) checked by the real promtool and by queries written the gala-gopher way
//! against a real Prometheus server.
//!
//! The agent needs root (eBPF); promtool and prometheus come from Debian's `prometheus`
//! package. Without them the tests skip loudly, and fail under `GOPHER_STRICT_TESTS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, have, is_root, prometheus::Prometheus, require};

const GOPHER: &str = env!("CARGO_BIN_EXE_gopher");

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gala-gopher.conf")
}

/// The real agent (`common::Agent`) with its log kept in a file.
struct Running {
    agent: Agent,
    port: u16,
    log: PathBuf,
    _logs: tempfile::TempDir,
}

impl Running {
    fn start(file_name: &str, body: impl FnOnce(u16, u16) -> String) -> Running {
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("stderr.log");
        let agent = Agent::start_file(file_name, body, Some(&log));
        Running {
            port: agent.port,
            agent,
            log,
            _logs: logs,
        }
    }

    /// Scrapes until `ok` holds for the body; panics with the log after `timeout`.
    fn wait_metrics(&self, timeout: Duration, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let body = self.agent.raw();
            if ok(&body) {
                return body;
            }
            assert!(
                start.elapsed() < timeout,
                "{what} not seen after {timeout:?}\nlog:\n{}\nbody:\n{body}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The manual's file with only what a shared test machine needs changed: our own ports (the
/// control channel's as gopher's own `control` section) and logs on stderr.
fn manual_conf(port: u16, control: u16) -> String {
    let text = std::fs::read_to_string(fixture()).unwrap();
    assert!(text.contains("port = 8888;") && text.contains("\"/var/log/gala-gopher\""));
    text.replace(
        "port = 8888;",
        &format!("bind_addr = \"127.0.0.1\";\n    port = {port};"),
    )
    .replace("\"/var/log/gala-gopher\"", "\"\"")
        + &format!("\ncontrol = {{ listen = \"127.0.0.1:{control}\"; }};\n")
}

#[test]
fn the_manuals_gala_gopher_conf_runs_with_native_probes_and_one_warning() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let agent = Running::start("gala-gopher.conf", manual_conf);
    // tcp (an extend probe in gala-gopher) runs as the native probe; system_* as the native ones.
    let body = agent.wait_metrics(Duration::from_secs(30), "the native probes", |b| {
        [
            "tcp",
            "system_meminfo",
            "system_vmstat",
            "system_tcp",
            "system_inode",
        ]
        .iter()
        .all(|p| {
            b.contains(&format!(
                "gopher_probe_state{{probe=\"{p}\",state=\"running\"}} 1"
            ))
        }) && b.contains("gala_gopher_system_meminfo_")
    });
    // The extend probes stay extension probes: "auto" ones wait for their start check.
    for probe in ["dnsmasq", "haproxy", "nginx", "lvs", "redis"] {
        assert!(
            body.contains(&format!("probe=\"{probe}\"")),
            "{probe} missing\n{body}"
        );
    }
    // `example` (a gala-gopher built-in gopher lacks) is named in one warning, once.
    let log = agent.log_text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("gopher has no probe for"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("WARN") && warned[0].contains("\"example\""),
        "{log}"
    );
    let missing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("program is not on this node"))
        .collect();
    assert_eq!(missing.len(), 1, "{log}");
    assert!(missing[0].contains("\"lvs\" (/opt/gala-gopher/extend_probes/trace_lvs)"));
}

#[test]
fn gopher_convert_writes_a_probes_toml_that_check_config_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("probes.toml");
    let run = Command::new(GOPHER)
        .arg("convert")
        .arg(fixture())
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", common::output_text(&run));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        stderr
            .matches("gopher has no probe for \"example\"")
            .count(),
        1,
        "{stderr}"
    );
    let toml = std::fs::read_to_string(&out).unwrap();
    let parsed: toml::Table = toml.parse().unwrap();
    let probes: Vec<(String, String)> = parsed["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["switch"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let on = |n: &str| (n.to_owned(), "on".to_owned());
    assert_eq!(
        probes,
        vec![
            on("system_meminfo"),
            on("system_vmstat"),
            on("system_tcp"),
            on("system_inode"),
            on("tcp")
        ]
    );
    let extend: Vec<&str> = parsed["extend_probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(extend, ["redis", "dnsmasq", "haproxy", "nginx", "lvs"]);
    let lvs = &parsed["extend_probes"].as_array().unwrap()[4];
    assert_eq!(
        lvs["start_check"].as_str(),
        Some("lsmod | grep ip_vs | wc -l")
    );
    assert_eq!(lvs["switch"].as_str(), Some("auto"));
    assert_eq!(parsed["kafka"]["kafka_topic"].as_str(), Some("gala_gopher"));
    assert_eq!(parsed["web_server"]["port"].as_integer(), Some(8888));

    let check = Command::new(GOPHER)
        .arg("--check-config")
        .arg(&out)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", common::output_text(&check));
    // And the gala-gopher file itself, read directly.
    let direct = Command::new(GOPHER)
        .arg("--check-config")
        .arg(fixture())
        .output()
        .unwrap();
    assert!(direct.status.success(), "{}", common::output_text(&direct));
    assert!(String::from_utf8_lossy(&direct.stderr).contains("warning: gala-gopher.conf"));
}

#[test]
fn a_bad_gala_gopher_conf_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gala-gopher.conf");
    let text = std::fs::read_to_string(fixture())
        .unwrap()
        .replace("port = 8888;", "port = 70000;");
    std::fs::write(&path, &text).unwrap();
    let line = text.lines().position(|l| l.contains("70000")).unwrap() + 1;
    let check = Command::new(GOPHER)
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains(&format!("gala-gopher.conf:{line}:")) && stderr.contains("web_server.port"),
        "{stderr}"
    );
}

/// gala-gopher's machine id for this host, found the way gala-gopher finds it (its shell
/// pipeline for the IP), independently of the agent's code.
fn expected_machine_id() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let uuid = read("/sys/class/dmi/id/product_uuid")
        .or_else(|| read("/opt/gala-gopher/machine_id"))
        .or_else(|| read("/etc/machine-id"))
        .unwrap();
    let ip = Command::new("sh")
        .args([
            "-c",
            "ip a | grep inet | grep -v '127.0.0.1' | grep -v inet6 | awk 'NR==1 {print $2}' | awk -F '/' '{print $1}'",
        ])
        .output()
        .unwrap();
    format!("{uuid}-{}", String::from_utf8_lossy(&ip.stdout).trim())
}

#[test]
fn gala_gopher_naming_passes_promtool_but_for_total_and_answers_gala_gopher_queries() {
    if !require(is_root(), "root (eBPF)")
        || !require(have("promtool", &["--version"]), "promtool")
        || !require(have("prometheus", &["--version"]), "prometheus")
    {
        return;
    }
    // Our own port only: on a shared machine the host's other links (tens of thousands while
    // benchmarks run) would make each scrape of a debug build longer than Prometheus waits.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = listener.local_addr().unwrap().port();
    let agent = Running::start("probes.toml", |port, control| {
        format!(
            "[web_server]\nbind_addr = \"127.0.0.1\"\nport = {port}\nmetric_names = \"gala-gopher\"\n\
             [control]\nlisten = \"127.0.0.1:{control}\"\n\
             [imdb]\nrecord_timeout = 120\n\
             [[probes]]\nname = \"tcp\"\nswitch = \"on\"\ninterval = 1\n\
             [probes.params]\ninclude_ports = [{server_port}]\n\
             [[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\ninterval = 1\n"
        )
    });
    // One link of our own, on a port nobody else uses: once the probe counts it (a link's
    // counters start at its first reading), 1000 bytes client → server.
    let mut client = TcpStream::connect(("127.0.0.1", server_port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();

    let machine_id = expected_machine_id();
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let comm = comm.trim();
    let series = format!(
        "gala_gopher_tcp_link_rx_bytes{{tgid=\"{}\",role=\"0\",client_ip=\"127.0.0.1\",server_ip=\"127.0.0.1\",server_port=\"{server_port}\"",
        std::process::id()
    );
    agent.wait_metrics(Duration::from_secs(30), "our link", |b| {
        b.lines().any(|l| l.starts_with(&series))
    });
    client.write_all(&[7u8; 1000]).unwrap();
    let mut got = [0u8; 1000];
    server.read_exact(&mut got).unwrap();
    let body = agent.wait_metrics(Duration::from_secs(30), "our link's bytes", |b| {
        b.lines()
            .any(|l| l.starts_with(&series) && l.ends_with(" 1000"))
    });
    let line = body.lines().find(|l| l.starts_with(&series)).unwrap();
    assert!(
        line.contains(&format!(
            "comm=\"{comm}\",machine_id=\"{machine_id}\"}} 1000"
        )),
        "{line}"
    );
    let table_lines = || body.lines().filter(|l| l.contains("gala_gopher_"));
    for l in table_lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        assert!(
            !name.ends_with("_total") && !l.contains("process_name="),
            "{l}"
        );
    }
    // machine_id on every table series; the agent's own gopher_* metrics are left alone.
    for l in table_lines().filter(|l| !l.starts_with('#')) {
        assert!(l.contains(&format!("machine_id=\"{machine_id}\"")), "{l}");
    }

    let counters = common::outputs::assert_only_the_total_lint(&body);
    assert!(
        counters.contains("gala_gopher_tcp_link_rx_bytes"),
        "{counters:?}"
    );

    // A real Prometheus scraping the agent, queried the gala-gopher way.
    let prom = Prometheus::start("gala", &format!("127.0.0.1:{}", agent.port), None);
    let by_machine = prom.wait_for_data(
        &format!(
            "gala_gopher_tcp_link_rx_bytes{{machine_id=\"{machine_id}\",server_port=\"{server_port}\",role=\"0\"}}"
        ),
        Duration::from_mins(1),
    );
    assert_eq!(by_machine.len(), 1, "{by_machine:?}");
    assert_eq!(by_machine[0]["value"][1].as_str(), Some("1000"));
    assert_eq!(by_machine[0]["metric"]["comm"].as_str(), Some(comm));
    let segs = prom.wait_for_data(
        &format!(
            "sum by (machine_id) (gala_gopher_tcp_link_segs_in{{comm=\"{comm}\",server_port=\"{server_port}\"}})"
        ),
        Duration::from_mins(1),
    );
    assert_eq!(
        segs[0]["metric"]["machine_id"].as_str(),
        Some(machine_id.as_str())
    );
    let memory = prom.wait_for_data(
        &format!("gala_gopher_system_meminfo_mem_total_bytes{{machine_id=\"{machine_id}\"}}"),
        Duration::from_mins(1),
    );
    assert_eq!(memory.len(), 1);
    drop(client);
}
