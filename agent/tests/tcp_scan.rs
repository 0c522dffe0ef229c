//! End to end, the tcp probe's host scans on a hostile node: a network namespace that cannot be
//! opened is counted once, not every interval (issue 10). The /proc walk back-off and the
//! incremental namespace discovery are tested in the probe's unit tests with real sockets and
//! namespaces (`owners.rs`, `netns.rs`); their cost in bench/scan.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]

mod common;

use std::time::Duration;

use common::{Agent, Sample, is_root, require};

const CONFIG: &str = r#"
[[probes]]
name = "tcp"
switch = "on"
interval = 1
"#;

fn tcp_errors(samples: &[Sample]) -> f64 {
    samples
        .iter()
        .find(|s| s.name == "gopher_probe_errors_total" && s.label("probe") == "tcp")
        .map_or(0.0, |s| s.value)
}

/// A stale pin in /run/netns (what `ip netns add` leaves when its bind mount is lost): a plain
/// file that setns refuses. Removed on drop.
struct StalePin(std::path::PathBuf);

impl StalePin {
    fn new() -> Self {
        std::fs::create_dir_all("/run/netns").unwrap();
        let path =
            std::path::PathBuf::from(format!("/run/netns/gopher-stale{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        StalePin(path)
    }
}

impl Drop for StalePin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_namespace_that_cannot_be_opened_is_counted_once() {
    if !require(is_root(), "root (/run/netns, eBPF)") {
        return;
    }
    let pin = StalePin::new();
    let agent = Agent::start(CONFIG);
    let samples = agent.wait_for(Duration::from_secs(20), "tcp probe error counted", |s| {
        tcp_errors(s) >= 1.0
    });
    let counted = tcp_errors(&samples);
    // Five more intervals: the same namespace is not counted again.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        tcp_errors(&agent.scrape().unwrap()),
        counted,
        "counted once, not per interval"
    );
    drop(pin);
}
