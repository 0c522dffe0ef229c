//! End to end: the agent runs the shipped probe with switch = "auto"; the start check is keyed to
//! the test's own service instance, so that services running elsewhere on the host do not count.

use super::*;

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

pub(super) fn state_is(s: &[Sample], probe: &str, state: &str) -> bool {
    s.iter().any(|x| {
        x.name == "gopher_probe_state"
            && x.label("probe") == probe
            && x.label("state") == state
            && x.value == 1.0
    })
}

/// The value of `metric` in the sample whose labels include `labels`.
pub(super) fn value(s: &[Sample], metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.iter()
        .find(|x| x.name == metric && labels.iter().all(|(k, v)| x.label(k) == *v))
        .map(|x| x.value)
}

/// Rows refused for `probe`, any reason.
pub(super) fn rejected(s: &[Sample], probe: &str) -> f64 {
    s.iter()
        .filter(|x| x.name == "gopher_probe_rows_rejected_total" && x.label("probe") == probe)
        .map(|x| x.value)
        .sum()
}

/// Live (not zombie) processes whose command line contains `needle`.
pub(super) fn processes_with(needle: &str) -> Vec<u32> {
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
