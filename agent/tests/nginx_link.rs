//! The nginx probe (`nginx_statistic`) against a real nginx the test starts itself (own config
//! in a temp dir, own loopback ports, two workers) as HTTP reverse proxy (is_l7 = 1) and stream
//! proxy (is_l7 = 0) in front of real backends, with clients bound to distinct 127.1.0.x
//! addresses holding their sessions open. Rows are read on /metrics through the reference
//! parser, field by field, and follow sessions as they open and close. Other nginx instances on
//! the machine (other tests) are left out by the test's own ports.
//!
//! Sessions already open when the agent starts (or restarts) are counted exactly from the
//! probe's first rows, not once they reconnect.
//!
//! An unsupported binary (a process named nginx that is not nginx) fails the probe with the
//! reason, on the probe's failure series, while the agent and its other probes keep running.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod common;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    Agent, Sample,
    nginx::{Setup, WAIT, http_session, setup, stream_session, traced, wait_held},
};
use gopher::imdb::FieldType;

type Rows = BTreeMap<(String, String, String, String, String, String), f64>;

/// This test's rows of `table` (front port one of `ports`), by every key and label, with their
/// link_count; every row must carry all of them.
fn rows(samples: &[Sample], table: &str, ports: &[u16]) -> Rows {
    let name = format!("gala_gopher_{table}_link_count");
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            ports
                .iter()
                .any(|p| s.label("virtual_port") == p.to_string())
        })
        .map(|s| {
            // Every field but link_count (the value) is a label.
            for l in &common::nginx::FIELDS[..6] {
                assert!(s.labels.contains_key(*l), "{l} missing on {s:?}");
            }
            (
                (
                    s.label("client_ip").to_owned(),
                    s.label("virtual_ip").to_owned(),
                    s.label("virtual_port").to_owned(),
                    s.label("server_ip").to_owned(),
                    s.label("server_port").to_owned(),
                    s.label("is_l7").to_owned(),
                ),
                s.value,
            )
        })
        .collect()
}

fn row(
    client: &str,
    vport: u16,
    sport: u16,
    l7: bool,
    n: f64,
) -> ((String, String, String, String, String, String), f64) {
    (
        (
            client.to_owned(),
            "127.0.0.1".to_owned(),
            vport.to_string(),
            "127.0.0.1".to_owned(),
            sport.to_string(),
            if l7 { "1" } else { "0" }.to_owned(),
        ),
        n,
    )
}

fn wait_rows(agent: &Agent, table: &str, ports: &[u16], want: &Rows, what: &str) {
    let start = Instant::now();
    let mut last = Rows::new();
    while start.elapsed() < WAIT {
        if let Ok(s) = agent.scrape() {
            last = rows(&s, table, ports);
            if &last == want {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{what}: wanted\n{want:#?}\ngot\n{last:#?}");
}

#[test]
fn http_and_stream_sessions_per_client_front_and_backend() {
    let Some(Setup {
        serial: _serial,
        hb,
        sb,
        http,
        stream,
        nginx: _nginx,
    }) = setup()
    else {
        return;
    };
    let agent = Agent::start("[[probes]]\nname = \"nginx_link\"\nswitch = \"on\"\ninterval = 1\n");
    traced(&agent);
    let ports = [http, stream];
    let table = "nginx_statistic";
    // Nothing proxied yet: no rows of ours.
    wait_rows(&agent, table, &ports, &Rows::new(), "before any session");

    let (a, b) = (Ipv4Addr::new(127, 1, 0, 1), Ipv4Addr::new(127, 1, 0, 2));
    // Sessions of (a, http), (b, http), (b, stream), (a, stream).
    let expect = |n: [f64; 4]| -> Rows {
        [
            row("127.1.0.1", http, hb.port, true, n[0]),
            row("127.1.0.2", http, hb.port, true, n[1]),
            row("127.1.0.2", stream, sb.port, false, n[2]),
            row("127.1.0.1", stream, sb.port, false, n[3]),
        ]
        .into_iter()
        .collect()
    };
    let mut a_http: Vec<_> = (0..2).map(|_| http_session(a, http)).collect();
    let b_http = http_session(b, http);
    let mut b_stream: Vec<_> = (0..3).map(|_| stream_session(b, stream)).collect();
    let a_stream = stream_session(a, stream);
    // The backends hold what nginx opened: the truth the rows must match.
    wait_held(&hb, &sb, (3, 4));
    let want = expect([2.0, 1.0, 3.0, 1.0]);
    wait_rows(&agent, table, &ports, &want, "sessions open");
    // The addresses are keys (gala-spider's), link_count a gauge; /metrics types it untyped,
    // as it does tcp_link's link_count (a gauge named *_count would fail promtool's lint).
    let meta = gopher::probes::nginx::table_meta(table, 1);
    let types: Vec<(&str, FieldType)> = meta
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.ty))
        .collect();
    assert_eq!(
        types,
        [
            ("client_ip", FieldType::Key),
            ("virtual_ip", FieldType::Key),
            ("virtual_port", FieldType::Key),
            ("server_ip", FieldType::Key),
            ("server_port", FieldType::Key),
            ("is_l7", FieldType::Label),
            ("link_count", FieldType::Gauge),
        ]
    );
    let raw = agent.raw();
    assert!(
        raw.contains("# TYPE gala_gopher_nginx_statistic_link_count untyped"),
        "{raw}"
    );

    // Sessions end from the client side: nginx closes the upstream, the count follows.
    drop(a_http.pop());
    drop(b_stream.pop());
    drop(b_stream.pop());
    let want = expect([1.0, 1.0, 1.0, 1.0]);
    wait_rows(&agent, table, &ports, &want, "some sessions closed");
    // And up again.
    a_http.push(http_session(a, http));
    b_stream.push(stream_session(b, stream));
    let want = expect([2.0, 1.0, 2.0, 1.0]);
    wait_rows(&agent, table, &ports, &want, "sessions reopened");
    drop((a_http, b_http, b_stream, a_stream));
    wait_rows(&agent, table, &ports, &Rows::new(), "every session closed");
    wait_held(&hb, &sb, (0, 0));
}

/// The first rows of ours the agent shows: polled until the probe has sent its first interval.
fn first_rows(agent: &Agent, table: &str, ports: &[u16]) -> Rows {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if let Ok(s) = agent.scrape() {
            let r = rows(&s, table, ports);
            if !r.is_empty() {
                return r;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no {table} rows within {WAIT:?}");
}

#[test]
fn sessions_open_before_the_agent_starts_are_counted_from_its_first_rows() {
    let Some(nginx) = setup() else {
        return;
    };
    let (hb, sb, http, stream) = (&nginx.hb, &nginx.sb, nginx.http, nginx.stream);
    let ports = [http, stream];
    let table = "nginx_statistic";
    let (a, b) = (Ipv4Addr::new(127, 1, 0, 4), Ipv4Addr::new(127, 1, 0, 5));
    // Every session is open, and proxied to its backend, before any agent runs.
    let mut a_http: Vec<_> = (0..3).map(|_| http_session(a, http)).collect();
    let mut b_stream: Vec<_> = (0..2).map(|_| stream_session(b, stream)).collect();
    let a_stream = stream_session(a, stream);
    wait_held(hb, sb, (3, 3));
    let expect = |n: [f64; 3]| -> Rows {
        [
            row("127.1.0.4", http, hb.port, true, n[0]),
            row("127.1.0.5", stream, sb.port, false, n[1]),
            row("127.1.0.4", stream, sb.port, false, n[2]),
        ]
        .into_iter()
        .filter(|r| r.1 > 0.0)
        .collect()
    };
    let config = "[[probes]]\nname = \"nginx_link\"\nswitch = \"on\"\ninterval = 1\n";
    let agent = Agent::start(config);
    assert_eq!(
        first_rows(&agent, table, &ports),
        expect([3.0, 2.0, 1.0]),
        "first rows of an agent started after the sessions"
    );
    // An agent restart (a new map, nothing recorded): the same, at once.
    drop(agent);
    let agent = Agent::start(config);
    assert_eq!(
        first_rows(&agent, table, &ports),
        expect([3.0, 2.0, 1.0]),
        "first rows after an agent restart"
    );
    // Closing sessions found that way brings the counts down (ngx_close_connection).
    drop(a_http.pop());
    drop(b_stream.pop());
    wait_rows(
        &agent,
        table,
        &ports,
        &expect([2.0, 1.0, 1.0]),
        "some closed",
    );
    // New sessions add to them.
    a_http.push(http_session(a, http));
    wait_rows(&agent, table, &ports, &expect([3.0, 1.0, 1.0]), "one more");
    drop((a_http, b_stream, a_stream));
    wait_rows(&agent, table, &ports, &Rows::new(), "every session closed");
    wait_held(hb, sb, (0, 0));
}

#[test]
fn later_table_name_and_an_unsupported_binary_fails_the_probe_with_its_reason() {
    let Some(Setup {
        serial: _serial,
        sb,
        stream,
        nginx,
        ..
    }) = setup()
    else {
        return;
    };
    let agent = Agent::start(
        "[[probes]]\nname = \"nginx_link\"\nswitch = \"on\"\ninterval = 1\n[probes.params]\ntable = \"nginx_link\"\n\n\
         [[probes]]\nname = \"system_inode\"\nswitch = \"on\"\ninterval = 1\n",
    );
    traced(&agent);
    let s = stream_session(Ipv4Addr::new(127, 1, 0, 3), stream);
    let want: Rows = [row("127.1.0.3", stream, sb.port, false, 1.0)]
        .into_iter()
        .collect();
    wait_rows(&agent, "nginx_link", &[stream], &want, "nginx_link row");
    drop(s);
    drop(nginx);

    // A process named nginx that is not nginx: the probe stops with the reason.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("nginx");
    std::fs::copy("/usr/bin/sleep", &fake).unwrap();
    let mut child = Command::new(&fake).arg("120").spawn().unwrap();
    let samples = agent.wait_for(WAIT, "nginx probe failed with the reason", |s| {
        s.iter().any(|x| {
            x.name == "gopher_probe_last_failure_info"
                && x.label("probe") == "nginx_link"
                && x.label("reason").contains("no nginx version string")
        })
    });
    let reason = samples
        .iter()
        .find(|x| x.name == "gopher_probe_last_failure_info" && x.label("probe") == "nginx_link")
        .unwrap()
        .label("reason")
        .to_owned();
    assert!(reason.contains(&fake.display().to_string()), "{reason}");
    // The other probe carries on.
    agent.wait_running(WAIT, "system_inode");
    let before = agent.scrape().unwrap();
    let inode_rows = |s: &[Sample]| {
        s.iter()
            .filter(|x| x.name.starts_with("gala_gopher_system_inode_"))
            .count()
    };
    assert!(inode_rows(&before) > 0);
    let _ = child.kill();
    let _ = child.wait();
}
