//! The TCP probe on a busy node, end to end: counters across an agent restart, the series cap's
//! aggregate rows, client-prefix aggregation and filters. Real agent, real sockets; each test
//! keeps to its own ports (`include_ports`), so other traffic on the host never counts.
#![allow(
    clippy::float_cmp,
    clippy::too_many_lines,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss
)]

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use common::{
    Agent, Peer, Sample, connect_from, is_root, require,
    tcp::{CONFIG, WAIT, expect_row, ready},
};

fn config(params: &str) -> String {
    format!("{CONFIG}[probes.params]\n{params}\n")
}

/// One connection from `source`: the client sends `c2s` bytes, the server `s2c`.
fn exchange(l: &TcpListener, source: Ipv4Addr, c2s: usize, s2c: usize) -> (TcpStream, TcpStream) {
    let port = l.local_addr().unwrap().port();
    let mut client = connect_from(source, port);
    let (mut server, from) = l.accept().unwrap();
    assert_eq!(from.ip(), source);
    client.write_all(&vec![1; c2s]).unwrap();
    server.read_exact(&mut vec![0; c2s]).unwrap();
    server.write_all(&vec![2; s2c]).unwrap();
    client.read_exact(&mut vec![0; s2c]).unwrap();
    (client, server)
}

/// Every tcp_link row on `port`, as (labels, fields).
fn rows_on(
    samples: &[Sample],
    port: u16,
) -> Vec<(BTreeMap<String, String>, BTreeMap<String, f64>)> {
    let mut rows: BTreeMap<Vec<(String, String)>, BTreeMap<String, f64>> = BTreeMap::new();
    for s in samples {
        let Some(field) = s.name.strip_prefix("gala_gopher_tcp_link_") else {
            continue;
        };
        // A histogram's buckets (`srtt`) are one series each (told apart by `le`), not rows.
        if field.ends_with("_bucket") || s.label("server_port") != port.to_string() {
            continue;
        }
        let key: Vec<_> = s.labels.clone().into_iter().collect();
        rows.entry(key)
            .or_default()
            .insert(field.trim_end_matches("_total").to_owned(), s.value);
    }
    rows.into_iter()
        .map(|(k, v)| (k.into_iter().collect(), v))
        .collect()
}

fn metric(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// A long-lived connection moving bytes steadily, through an agent kill and restart: after
/// the restart its row counts only what moved since (Prometheus sees a reset), never the
/// connection's lifetime again.
#[test]
fn no_counter_spike_across_an_agent_restart() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = config(&format!("include_ports = [{port}]"));
    let agent = Agent::start(&cfg);
    assert!(ready(&agent));
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, stop) = (Arc::clone(&written), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                client.write_all(&[7; 16 * 1024]).unwrap();
                written.fetch_add(16 * 1024, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0; 64 * 1024];
        while server.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let me = std::process::id().to_string();
    let want = |role: &str| {
        vec![
            ("role", role.to_owned()),
            ("tgid", me.clone()),
            ("server_port", port.to_string()),
        ]
    };
    let before = expect_row(&agent, "busy link, first agent", &want("1"), |r| {
        r["tx_bytes"] >= 4e6
    });
    assert!(before["tx_bytes"] <= written.load(Ordering::SeqCst) as f64);

    drop(agent);
    let at_restart = written.load(Ordering::SeqCst);
    let agent = Agent::start(&cfg);
    assert!(ready(&agent));
    let after = expect_row(&agent, "busy link, second agent", &want("1"), |_| true);
    let moved = (written.load(Ordering::SeqCst) - at_restart) as f64;
    // Whether Prometheus sees a reset (value below the old one) or a rise, increase() over
    // the restart is at most the new value: bounded by what moved, with the lifetime (at
    // least `before`) never counted again.
    assert!(
        after["tx_bytes"] <= moved,
        "after the restart the row counts {} bytes, but only {moved} moved since (lifetime {})",
        after["tx_bytes"],
        written.load(Ordering::SeqCst)
    );
    let srv = expect_row(&agent, "busy link, server side", &want("0"), |_| true);
    assert!(srv["rx_bytes"] <= (written.load(Ordering::SeqCst) - at_restart) as f64);
    // And it goes on counting what moves.
    let later = expect_row(&agent, "busy link counting again", &want("1"), |r| {
        r["tx_bytes"] >= after["tx_bytes"] + 2e6
    });
    assert!(later["tx_bytes"] <= (written.load(Ordering::SeqCst) - at_restart) as f64);
    assert_eq!(later["link_count"], 1.0);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    reader.join().unwrap();
}

/// Bytes the client (c2s) and the server (s2c) of connection `i` send.
fn c2s(i: u8) -> usize {
    1000 * usize::from(i)
}

fn s2c(i: u8) -> usize {
    100 * usize::from(i)
}

type Bytes = fn(u8) -> usize;

/// More distinct client addresses than `max_series`: the first links get rows of their own,
/// the rest are folded into one row per (process, role, server), client_ip 0.0.0.0, with exact
/// link counts and bytes, and counted.
#[test]
fn links_beyond_max_series_fold_into_an_aggregate_row() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let agent = Agent::start(&config(&format!(
        "max_series = 4\ninclude_ports = \"{port}\""
    )));
    assert!(ready(&agent));
    let n = 6u8;
    let mut conns = Vec::new();
    for i in 1..=n {
        conns.push(exchange(
            &listener,
            Ipv4Addr::new(127, 0, 0, 10 + i),
            c2s(i),
            s2c(i),
        ));
    }
    let total = 2.0 * f64::from(n);
    let check = |s: &[Sample], live: bool| {
        let rows = rows_on(s, port);
        let count: f64 = rows.iter().map(|(_, f)| f["link_count"]).sum();
        if count != if live { total } else { 0.0 } || rows.len() != 4 + 2 {
            return false;
        }
        for role in ["0", "1"] {
            let of_role: Vec<_> = rows.iter().filter(|(l, _)| l["role"] == role).collect();
            let agg: Vec<_> = of_role
                .iter()
                .filter(|(l, _)| l["client_ip"] == "0.0.0.0")
                .collect();
            assert_eq!(agg.len(), 1, "one aggregate row per role: {of_role:?}");
            let (_, agg) = agg[0];
            let singles: Vec<u8> = of_role
                .iter()
                .filter(|(l, _)| l["client_ip"] != "0.0.0.0")
                .map(|(l, _)| {
                    l["client_ip"]
                        .rsplit('.')
                        .next()
                        .unwrap()
                        .parse::<u8>()
                        .unwrap()
                        - 10
                })
                .collect();
            let folded: Vec<u8> = (1..=n).filter(|i| !singles.contains(i)).collect();
            let (tx, rx): (Bytes, Bytes) = if role == "1" { (c2s, s2c) } else { (s2c, c2s) };
            let sum = |f: &dyn Fn(u8) -> usize| folded.iter().map(|&i| f(i) as f64).sum::<f64>();
            assert_eq!(
                agg["tx_bytes"],
                sum(&tx),
                "role {role} aggregate tx: {agg:?}"
            );
            assert_eq!(
                agg["rx_bytes"],
                sum(&rx),
                "role {role} aggregate rx: {agg:?}"
            );
            if live {
                assert_eq!(agg["link_count"], folded.len() as f64);
            }
            for (l, f) in &of_role {
                if l["client_ip"] != "0.0.0.0" {
                    let i = l["client_ip"]
                        .rsplit('.')
                        .next()
                        .unwrap()
                        .parse::<u8>()
                        .unwrap()
                        - 10;
                    assert_eq!((f["tx_bytes"], f["rx_bytes"]), (tx(i) as f64, rx(i) as f64));
                }
            }
        }
        true
    };
    let s = agent.wait_for(WAIT, "4 links and 2 aggregate rows", |s| check(s, true));
    assert_eq!(
        metric(&s, "gopher_tcp_links_aggregated_total"),
        total - 4.0,
        "every folded socket counted"
    );
    drop(conns);
    agent.wait_for(WAIT, "the same rows, closed", |s| check(s, false));
}

/// Server-role links aggregate their clients by /24; client-role links keep their address;
/// port, CIDR and process filters leave sockets out (and count them).
#[test]
fn client_prefixes_and_filters() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pb, pc) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
        c.local_addr().unwrap().port(),
    );
    let agent = Agent::start(&config(&format!(
        "client_prefix_v4 = 24\ninclude_ports = [{pa}, {pb}]\n\
         exclude_cidrs = [\"127.0.2.0/24\"]\nexclude_processes = \"python3\""
    )));
    assert!(ready(&agent));
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let _a1 = exchange(&a, ip("127.0.0.10"), 10, 1);
    let _a2 = exchange(&a, ip("127.0.0.11"), 20, 2);
    let _a3 = exchange(&a, ip("127.0.1.10"), 40, 4);
    let _b1 = exchange(&b, ip("127.0.2.10"), 80, 8);
    let _c1 = exchange(&c, ip("127.0.0.12"), 160, 16);
    // A python client on port b: its own (client-role) link is excluded by process name, our
    // server-role end of it is kept.
    let mut py = Peer::spawn(&[], &["client", "127.0.0.1", &pb.to_string(), "320", "32"]);
    let (mut conn, _) = b.accept().unwrap();
    conn.read_exact(&mut [0; 320]).unwrap();
    conn.write_all(&[0; 32]).unwrap();
    assert_eq!(py.line(), "done");
    assert_eq!(py.comm(), "python3");

    let me = std::process::id().to_string();
    let end = |role: &str, port: u16, client: &str| {
        vec![
            ("role", role.to_owned()),
            ("tgid", me.clone()),
            ("server_port", port.to_string()),
            ("client_ip", client.to_owned()),
        ]
    };
    // Port b: the client from 127.0.2.10 is excluded by CIDR on the server side only (the
    // CIDR filter looks at the peer; our client end's peer is 127.0.0.1).
    for (what, role, port, client, (links, rx, tx)) in [
        ("/24 of two clients", "0", pa, "127.0.0.0", (2.0, 30.0, 3.0)),
        ("/24 of one client", "0", pa, "127.0.1.0", (1.0, 40.0, 4.0)),
        (
            "client links keep their address",
            "1",
            pa,
            "127.0.0.11",
            (1.0, 2.0, 20.0),
        ),
        (
            "CIDR leaves the client end in",
            "1",
            pb,
            "127.0.2.10",
            (1.0, 8.0, 80.0),
        ),
        (
            "python's link, our end",
            "0",
            pb,
            "127.0.0.0",
            (1.0, 320.0, 32.0),
        ),
    ] {
        expect_row(&agent, what, &end(role, port, client), |r| {
            r["link_count"] == links && r["rx_bytes"] == rx && r["tx_bytes"] == tx
        });
    }
    let s = agent.wait_for(WAIT, "nothing else", |s| {
        let on_b = rows_on(s, pb);
        on_b.len() == 2 && rows_on(s, pc).is_empty() && rows_on(s, pa).len() == 2 + 3
    });
    assert!(
        rows_on(&s, pb).iter().all(|(l, _)| l["tgid"] == me),
        "python's own row is excluded"
    );
    // Excluded: port c (2 ends), 127.0.2.10's server end, python's client end.
    assert!(metric(&s, "gopher_tcp_sockets_excluded_total") >= 4.0);
    py.close();
}

/// Removes a file on drop.
struct Remove(String);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A namespace the probe cannot enter (here a file in /run/netns that is no namespace) is
/// counted, not just logged; the probe goes on with the others.
#[test]
fn a_namespace_that_cannot_be_opened_is_counted() {
    if !require(is_root(), "root (eBPF, /run/netns)") {
        return;
    }
    std::fs::create_dir_all("/run/netns").unwrap();
    let bogus = format!("/run/netns/gopher-bogus-{}", std::process::id());
    std::fs::write(&bogus, b"not a namespace").unwrap();
    let _remove = Remove(bogus);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let agent = Agent::start(&config(&format!("include_ports = [{port}]")));
    assert!(ready(&agent));
    let s = agent.wait_for(WAIT, "the failed namespace counted", |s| {
        s.iter().any(|x| {
            x.name == "gopher_tcp_netns_errors_total"
                && x.label("reason") == "open"
                && x.value >= 1.0
        })
    });
    assert!(metric(&s, "gopher_probe_errors_total") >= 1.0);
    // The probe still reports links of the namespaces it can read.
    let _c = exchange(&listener, Ipv4Addr::LOCALHOST, 5, 6);
    let me = std::process::id().to_string();
    expect_row(
        &agent,
        "a link next to the failed namespace",
        &[
            ("role", "1".to_owned()),
            ("tgid", me),
            ("server_port", port.to_string()),
        ],
        |r| r["tx_bytes"] == 5.0 && r["link_count"] == 1.0,
    );
}
