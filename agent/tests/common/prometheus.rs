//! A real Prometheus server (Debian's `prometheus`, started by hand: no systemd) scraping the
//! test's agent every second, queried through its HTTP API. Shared by the tests that hold the
//! agent's series against Prometheus itself: the shipped dashboard and alert rules
//! (monitoring.rs) and gala-gopher's query style (gala_compat.rs). One starter, so that a fix
//! to how it is started or waited for reaches both.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{free_port, http_get};

/// A Prometheus server on its own loopback port and temporary storage, killed on drop.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second as job `job`, with `rules` (if any) loaded and evaluated
    /// every second; returns once `/-/ready` answers 200 (panics after a minute).
    pub fn start(job: &str, target: &str, rules: Option<&Path>) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let rule_files = rules.map_or_else(String::new, |r| {
            format!("rule_files:\n  - {}\n", r.display())
        });
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let prom = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while http_get(port, "/-/ready").is_none_or(|(status, _)| status != 200) {
            assert!(
                start.elapsed() < Duration::from_mins(1),
                "prometheus not ready"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prom
    }

    /// `/api/v1/query` at the current time: the result array, or Prometheus's error.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", urlencode(expr));
        let (status, body) = http_get(self.port, &path).ok_or("no answer")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Queries until the result is non-empty; panics with the last answer after `timeout`. An
    /// invalid expression fails at once: waiting does not fix it.
    pub fn wait_for_data(&self, expr: &str, timeout: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            match self.query(expr) {
                Ok(r) if !r.is_empty() => return r,
                Ok(_) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Ok(_) => panic!("no data after {timeout:?} for\n  {expr}"),
                Err(e) => panic!("invalid PromQL\n  {expr}\n{e}"),
            }
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a PromQL expression in a
/// query string).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
