//! The monitoring wiring in packaging/, checked by the tools that will read it:
//! - promtool: the scrape config and alert rules are valid and the rules' unit tests pass;
//! - the Kubernetes schemas (kubernetes-validate, strict): the DaemonSet manifest, whose
//!   ConfigMap the agent itself validates;
//! - end to end: a real Prometheus server scrapes the real agent (real eBPF TCP probe, real
//!   traffic) with the shipped alert rules loaded, and every PromQL expression of the shipped
//!   Grafana dashboard and alert rules is run through its HTTP API and must return data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{
    Agent, Peer, free_port, have, http_get, is_root,
    kube::{have_kubernetes_validate, kubernetes_validate, packaging, yaml_documents},
    output_text,
    prometheus::Prometheus,
    require,
};
use serde_json::Value;

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool").args(args).output().unwrap();
    (out.status.success(), output_text(&out))
}

#[test]
fn scrape_config_and_alert_rules_pass_promtool() {
    if !require(
        have("promtool", &["--version"]),
        "promtool (Debian package prometheus)",
    ) {
        return;
    }
    let config = packaging("prometheus/prometheus.yml");
    let rules = packaging("prometheus/gopher-alerts.yml");
    let tests = packaging("prometheus/tests/gopher-alerts.test.yml");
    let (ok, said) = promtool(&["check", "config", config.to_str().unwrap()]);
    assert!(ok && said.contains("1 rule files found"), "{said}");
    let (ok, said) = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(ok && said.contains("SUCCESS: 12 rules found"), "{said}");
    let (ok, said) = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(ok && said.contains("SUCCESS"), "{said}");

    // The harness can fail: a wrong expectation in a copy of the unit tests is reported.
    let dir = tempfile::tempdir().unwrap();
    let bad_tests = std::fs::read_to_string(&tests)
        .unwrap()
        .replace("../gopher-alerts.yml", rules.to_str().unwrap())
        .replace("severity: critical", "severity: page");
    let bad = dir.path().join("bad.test.yml");
    std::fs::write(&bad, bad_tests).unwrap();
    let (ok, said) = promtool(&["test", "rules", bad.to_str().unwrap()]);
    assert!(!ok && said.contains("GopherAgentDown"), "{said}");
}

#[test]
fn daemonset_is_valid_and_its_config_checks() {
    if !require(
        have_kubernetes_validate(),
        "kubernetes-validate (scripts/test-deps.sh pip-installs it)",
    ) {
        return;
    }
    let manifest = packaging("kubernetes/daemonset.yaml");
    let (ok, said) = kubernetes_validate(&manifest);
    assert!(ok, "{said}");
    // Namespace, ConfigMap, ServiceAccount, DaemonSet.
    assert_eq!(said.matches(" passed for resource ").count(), 4, "{said}");
    // Strict validation does reject an unknown field.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("hostPID: true", "hostPid: true"),
    )
    .unwrap();
    let (ok, said) = kubernetes_validate(&bad);
    assert!(!ok, "{said}");

    let docs = yaml_documents(&manifest);
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["probes.toml"].as_str())
        .unwrap();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], 8888);
    assert_eq!(container["ports"][0]["name"], "metrics");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
        // The probes never render a scrape (issue 13).
        assert_eq!(container[probe]["httpGet"]["path"], "/healthz", "{probe}");
    }
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for needed in [
        "/etc/gopher-agent",
        "/sys/fs/cgroup",
        "/sys/fs/bpf",
        "/sys/kernel",
        "/run/netns",
    ] {
        assert!(mounts.contains(&needed), "{needed} not mounted: {mounts:?}");
    }
    let caps = &container["securityContext"]["capabilities"];
    assert_eq!(caps["drop"][0], "ALL");
    // The same capabilities as the systemd unit's bounding set.
    let unit = std::fs::read_to_string(packaging("systemd/gopher-agent.service")).unwrap();
    let mut unit_caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();
    let mut pod_caps: Vec<String> = caps["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    unit_caps.sort();
    pod_caps.sort();
    assert_eq!(pod_caps, unit_caps);

    // The ConfigMap's config is one the agent accepts, web port 8888 included.
    let file = dir.path().join("probes.toml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gopher"))
        .arg("--check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(config.contains("port = 8888"));
}

/// Every `expr` of the dashboard's panels, and the metric selectors of its `label_values`
/// variables with the label they read.
/// `(panel title, expr)` and `(selector, label)` pairs.
type Pairs = Vec<(String, String)>;

fn dashboard_queries() -> (Pairs, Pairs) {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(packaging("grafana/gopher-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap().to_owned();
            exprs.push((title, target["expr"].as_str().unwrap().to_owned()));
        }
    }
    let mut variables = Vec::new();
    for var in dash["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let q = var["query"]["query"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {q} is not label_values(selector, label)"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        variables.push((selector.trim().to_owned(), label.trim().to_owned()));
    }
    (exprs, variables)
}

/// Grafana's variables, as Grafana would expand them for this one agent: the job and instance
/// variables select it (the values Grafana offers come from `gopher_build_info`, checked
/// separately), `$__rate_interval` is Grafana's max(4 x scrape interval, step + scrape
/// interval), 4 s at a 1 s scrape interval, rounded up to 5 s to cover a late scrape.
fn substitute(expr: &str, instance: &str) -> String {
    expr.replace("$__rate_interval", "5s")
        .replace("$job", "gopher")
        .replace("$instance", instance)
}

/// `(name, expr)` of every alert rule.
fn alert_rules() -> Vec<(String, String)> {
    let docs = yaml_documents(&packaging("prometheus/gopher-alerts.yml"));
    docs[0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .filter_map(|r| {
            Some((
                r["alert"].as_str()?.to_owned(),
                r["expr"].as_str().unwrap().trim().to_owned(),
            ))
        })
        .collect()
}

/// An alert's measure: its expression without the final `<op> <number>` (the convention of
/// gopher-alerts.yml, asserted here). A healthy system leaves the full alert expression empty,
/// so it is the measure that must return data: that proves the metric names, labels and
/// arithmetic match what the agent exports; the threshold is what `promtool test rules` checks.
fn measure(alert: &str, expr: &str) -> String {
    let (rest, number) = expr
        .rsplit_once(char::is_whitespace)
        .unwrap_or_else(|| panic!("{alert}: no threshold"));
    assert!(
        number.parse::<f64>().is_ok(),
        "{alert}: {number:?} is not a number"
    );
    let rest = rest.trim_end();
    let op = [">=", "<=", "==", "!=", ">", "<"]
        .into_iter()
        .find(|op| rest.ends_with(op))
        .unwrap_or_else(|| panic!("{alert}: expression does not end in a comparison: {expr}"));
    rest[..rest.len() - op.len()].trim().to_owned()
}

#[test]
fn every_dashboard_and_alert_query_returns_data_from_a_real_prometheus() {
    if !require(is_root(), "root (the agent's eBPF TCP probe)")
        || !require(
            have("prometheus", &["--version"]),
            "prometheus (Debian package)",
        )
    {
        return;
    }
    // Kafka on, towards a port where nothing listens, with a 1 s delivery timeout: messages
    // really fail, so the Kafka alert's full expression (not just its measure) has data. The
    // tcp probe gives every link its srtt histogram (by default only links of two or more open
    // connections carry one), so the RTT quantile panels have this host's one-connection links.
    let dead = free_port();
    let agent = Agent::start(&format!(
        "[ingress]\ninterval = 1\n[egress]\ninterval = 1\n\
         [kafka]\nswitch = \"on\"\nkafka_broker = \"127.0.0.1:{dead}\"\n\
         message_timeout_ms = 1000\nflush_timeout = 1\n\
         [[probes]]\nname = \"tcp\"\nswitch = \"on\"\ninterval = 1\n\
         params = {{ srtt_histogram = \"all\" }}\n\
         [[probes]]\nname = \"system_tcp\"\nswitch = \"on\"\ninterval = 1\n\
         [[probes]]\nname = \"endpoint\"\nswitch = \"on\"\ninterval = 1\n"
    ));
    let instance = format!("127.0.0.1:{}", agent.port);
    let prom = Prometheus::start(
        "gopher",
        &instance,
        Some(&packaging("prometheus/gopher-alerts.yml")),
    );

    // Real traffic: a Python server and client (pids of their own) move 1 MB each way and keep
    // the link open while Prometheus scrapes.
    let mut server = Peer::spawn(&[], &["server", "127.0.0.1", "0", "1000000", "1000000"]);
    let port = server.line().strip_prefix("ready ").unwrap().to_owned();
    let mut client = Peer::spawn(&[], &["client", "127.0.0.1", &port, "1000000", "1000000"]);
    assert_eq!(client.line(), "done");
    assert_eq!(server.line(), "done");
    let wait = Duration::from_mins(1);

    // The tcp_link series arrived in Prometheus, with this link's bytes.
    let link = format!(
        "gala_gopher_tcp_link_tx_bytes_total{{job=\"gopher\", instance=\"{instance}\", server_port=\"{port}\", role=\"1\"}}"
    );
    let start = Instant::now();
    loop {
        let r = prom.wait_for_data(&link, wait);
        if r[0]["value"][1].as_str() == Some("1000000") {
            break;
        }
        assert!(
            start.elapsed() < wait,
            "client tx_bytes never 1000000: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for field in [
        "rx_bytes_total",
        "packets_out_total",
        "retran_packets_total",
        "link_count",
        "rtt",
    ] {
        prom.wait_for_data(
            &format!("gala_gopher_tcp_link_{field}{{job=\"gopher\"}}"),
            wait,
        );
    }

    // Every dashboard query, with its variables expanded, returns data.
    let (exprs, variables) = dashboard_queries();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for (selector, label) in &variables {
        let r = prom.wait_for_data(&substitute(selector, &instance), wait);
        assert!(
            r.iter().any(|s| s["metric"][label.as_str()].is_string()),
            "variable {selector}/{label}: {r:?}"
        );
    }
    for (title, expr) in &exprs {
        assert!(
            !substitute(expr, &instance).contains('$'),
            "{title}: unexpanded variable in {expr}"
        );
        let r = prom.wait_for_data(&substitute(expr, &instance), wait);
        eprintln!("dashboard {title:?}: {} series", r.len());
    }

    check_alerts(&prom, &instance, wait);
    client.close();
    server.close();
}

/// Every alert of the shipped rules against `prom`, which scrapes the agent at `instance` whose
/// Kafka deliveries fail.
fn check_alerts(prom: &Prometheus, instance: &str, wait: Duration) {
    // Every alert: the full expression is valid PromQL, and its measure returns data.
    let alerts = alert_rules();
    let names: Vec<&str> = alerts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "GopherAgentDown",
            "GopherProbeFailed",
            "GopherKafkaDeliveryFailing",
            "GopherHighTcpRetransmission",
            "GopherListenerOverflowing",
            "GopherConnectFailures",
            "GopherRowsDropped",
            "GopherEbpfEventsLost",
            "GopherEbpfMapFull",
            "GopherTcpLinksAggregated",
            "GopherProbePanicked",
            "GopherTaskRestarted",
        ]
    );
    for (name, expr) in &alerts {
        prom.query(expr)
            .unwrap_or_else(|e| panic!("{name}: invalid PromQL: {e}"));
        let r = prom.wait_for_data(&measure(name, expr), wait);
        eprintln!("alert {name}: measure has {} series", r.len());
    }
    // Kafka really fails here: the alert condition holds and Prometheus, evaluating the shipped
    // rules, has the alert pending (its `for:` is 10 minutes).
    let kafka = &alerts[2].1;
    prom.wait_for_data(kafka, wait);
    let start = Instant::now();
    loop {
        let (_, body) = http_get(prom.port, "/api/v1/alerts").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let pending = v["data"]["alerts"].as_array().unwrap().iter().any(|a| {
            a["labels"]["alertname"] == "GopherKafkaDeliveryFailing"
                && a["labels"]["instance"] == instance
                && a["state"] == "pending"
        });
        if pending {
            break;
        }
        assert!(start.elapsed() < wait, "Kafka alert not pending: {body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The agent is up and its probes and tasks run: those alerts stay quiet. (The retransmission
    // alert is left out: it measures every link of the host, and other traffic on a shared
    // machine may well retransmit; so are row drops and eBPF losses, which a shared machine's
    // thousands of links can cause at the default caps.)
    let (_, body) = http_get(prom.port, "/api/v1/alerts").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    for a in v["data"]["alerts"].as_array().unwrap() {
        let name = a["labels"]["alertname"].as_str().unwrap();
        assert!(
            ![
                "GopherAgentDown",
                "GopherProbeFailed",
                "GopherProbePanicked",
                "GopherTaskRestarted"
            ]
            .contains(&name),
            "{a}"
        );
    }
}

#[test]
fn alert_measures_follow_the_convention() {
    // Pure: the stripping the end-to-end test relies on.
    assert_eq!(
        measure("a", "up{job=~\"gopher.*\"} == 0"),
        "up{job=~\"gopher.*\"}"
    );
    assert_eq!(
        measure(
            "b",
            "sum by (i) (rate(x[5m]))\n  / sum by (i) (rate(y[5m]))\n  > 0.05"
        ),
        "sum by (i) (rate(x[5m]))\n  / sum by (i) (rate(y[5m]))"
    );
    assert!(std::panic::catch_unwind(|| measure("c", "rate(x[5m])")).is_err());
    assert!(std::panic::catch_unwind(|| measure("d", "x > y")).is_err());
    for (name, expr) in alert_rules() {
        let m = measure(&name, &expr);
        assert!(!m.is_empty() && m.len() < expr.len(), "{name}");
    }
}
