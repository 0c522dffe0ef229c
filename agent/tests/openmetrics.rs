//! OpenMetrics negotiation on the real agent, read by the reference OpenMetrics parser
//! (prometheus_client's): asked for the way Prometheus asks (its default `Accept`), plain and
//! gzip, the body is OpenMetrics (`# EOF`, counter families without `_total`, samples with it)
//! and carries the same series as the text format, which a scrape without `Accept` still gets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::{Agent, output_text, require, support};

/// (family, type, sample name, labels) of each sample of an OpenMetrics scrape.
type Series = (String, String, String, BTreeMap<String, String>);

fn scrape_openmetrics(agent: &Agent, gzip: bool) -> Vec<Series> {
    let mut cmd = Command::new("python3");
    cmd.arg(support("scrape.py")).arg(agent.url());
    if gzip {
        cmd.arg("gzip");
    }
    cmd.arg("openmetrics");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_owned();
            let labels = v["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            (s("family"), s("type"), s("name"), labels)
        })
        .collect()
}

#[test]
fn openmetrics_when_asked_parsed_by_the_reference_parser() {
    if !require(
        Command::new("python3")
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "python3 with prometheus_client (scripts/test-deps.sh installs it)",
    ) {
        return;
    }
    let agent = Agent::start(
        "[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\ninterval = 1\n\
         [[probes]]\nname = \"system_vmstat\"\nswitch = \"on\"\ninterval = 1\n",
    );
    let text = agent.wait_for(
        std::time::Duration::from_secs(30),
        "vmstat and meminfo rows",
        |s| {
            s.iter()
                .any(|x| x.name == "gala_gopher_system_vmstat_pgfault_total")
                && s.iter()
                    .any(|x| x.name == "gala_gopher_system_meminfo_mem_total_bytes")
        },
    );

    for gzip in [false, true] {
        let om = scrape_openmetrics(&agent, gzip);
        let find = |sample: &str| {
            om.iter()
                .find(|(_, _, name, _)| name == sample)
                .unwrap_or_else(|| panic!("{sample} missing (gzip {gzip}): {om:?}"))
        };
        // A table counter: family without _total, typed counter, the sample keeps _total.
        let (family, ty, _, _) = find("gala_gopher_system_vmstat_pgfault_total");
        assert_eq!(
            (family.as_str(), ty.as_str()),
            ("gala_gopher_system_vmstat_pgfault", "counter")
        );
        let (family, ty, _, _) = find("gala_gopher_system_meminfo_mem_total_bytes");
        assert_eq!(
            (family.as_str(), ty.as_str()),
            ("gala_gopher_system_meminfo_mem_total_bytes", "gauge")
        );
        // Self-metrics and the process collector's float counter.
        let (family, ty, _, _) = find("process_cpu_seconds_total");
        assert_eq!(
            (family.as_str(), ty.as_str()),
            ("process_cpu_seconds", "counter")
        );
        let (family, ty, _, labels) = find("gopher_build_info");
        assert_eq!(
            (family.as_str(), ty.as_str()),
            ("gopher_build_info", "gauge")
        );
        assert!(labels.contains_key("revision"), "{labels:?}");

        // The same series as the text format (names and labels; values move between scrapes).
        let om_series: BTreeSet<(String, BTreeMap<String, String>)> = om
            .iter()
            .map(|(_, _, name, labels)| (name.clone(), labels.clone()))
            .collect();
        let text_series: BTreeSet<(String, BTreeMap<String, String>)> = text
            .iter()
            .map(|s| (s.name.clone(), s.labels.clone()))
            .collect();
        let stable = |set: &BTreeSet<(String, BTreeMap<String, String>)>| {
            set.iter()
                .filter(|(n, _)| n.starts_with("gala_gopher_"))
                .cloned()
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(stable(&om_series), stable(&text_series));
    }

    // Without Accept: the text format, no EOF (the reference text parser read it above).
    let out = Command::new("curl")
        .args(["-s", "-i", &agent.url()])
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(
        raw.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        &raw[..raw.len().min(400)]
    );
    assert!(!raw.contains("# EOF"));
}
