//! The TCP probe under load, end to end (real agent, real eBPF, real sockets): a `LINKS` map
//! too small for the live sockets, and a burst of short connections. Every byte the test moves
//! on its own port must show up in `tcp_link`, exactly, after the connections closed.
// Counters are compared exactly on purpose: they must be exact.
#![allow(clippy::float_cmp, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use common::{Agent, Sample, is_root, require};

const WAIT: Duration = Duration::from_secs(30);
/// Connections held at once against `max_links = 1024` (two sockets each, both ends here).
const N: usize = 1300;
/// The burst: client threads, connections each, request and reply sizes.
const CLIENTS: usize = 2;
const EACH: usize = 4000;
const REQ: usize = 16;
const RESP: usize = 48;

fn config(params: &str) -> String {
    format!(
        "[imdb]\nrecord_timeout = 300\nmax_records_num = 100000\n\
         [[probes]]\nname = \"tcp\"\nswitch = \"on\"\ninterval = 1\n\
         [probes.params]\n{params}\n"
    )
}

/// What the test expects on its port: bytes each way (client to server, server to client).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Moved {
    c2s: u64,
    s2c: u64,
}

/// Sums of `tcp_link` over every row on `port`, whatever its tgid: (client tx, client rx,
/// server tx, server rx, open connections).
fn totals(samples: &[Sample], port: u16) -> [f64; 5] {
    let mut t = [0.0; 5];
    let port = port.to_string();
    for s in samples {
        let Some(field) = s.name.strip_prefix("gala_gopher_tcp_link_") else {
            continue;
        };
        if s.label("server_port") != port {
            continue;
        }
        let client = s.label("role") == "1";
        let slot = match (field.trim_end_matches("_total"), client) {
            ("tx_bytes", true) => 0,
            ("rx_bytes", true) => 1,
            ("tx_bytes", false) => 2,
            ("rx_bytes", false) => 3,
            ("link_count", _) => 4,
            _ => continue,
        };
        t[slot] += s.value;
    }
    t
}

fn self_metric(samples: &[Sample], name: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && s.label("probe") == "tcp")
        .map(|s| s.value)
}

fn wait_exact(agent: &Agent, port: u16, moved: Moved) -> Vec<Sample> {
    let want = [
        moved.c2s as f64,
        moved.s2c as f64,
        moved.s2c as f64,
        moved.c2s as f64,
        0.0,
    ];
    agent.wait_for(
        WAIT,
        &format!("tcp_link totals {want:?} on port {port}"),
        |s| totals(s, port) == want,
    )
}

/// Lets this process hold a few thousand sockets (the soft limit is often 1024).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim), 0);
        lim.rlim_cur = lim.rlim_max.min(20_000);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim), 0);
    }
}

fn read_n(s: &mut TcpStream, n: usize) {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
}

/// 1,300 connections held at once (2,600 sockets, both ends here) against a map of 1,024 (the
/// default destroy hooks keep the clients there from their connect): the inserts that do not fit are counted, and the
/// bytes of the sockets without an entry, moved after they were last dumped live, still arrive
/// through their close events.
#[test]
fn a_full_links_map_is_counted_and_its_sockets_still_accounted() {
    held_connections("max_links = 1024");
}

/// The same with the sockops hooks (`connect_hooks = true`), which keep every live socket in
/// that map.
#[test]
fn a_full_links_map_is_counted_with_the_sockops_hooks() {
    held_connections("max_links = 1024\nconnect_hooks = true");
}

fn held_connections(params: &str) {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    raise_nofile();
    let agent = Agent::start(&config(params));
    agent.wait_running(WAIT, "tcp");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The listener stays open to the end: the agent falls back to its owner for server
    // sockets it has no owner for.
    let accepting = listener.try_clone().unwrap();
    let acceptor = thread::spawn(move || {
        (0..N)
            .map(|_| accepting.accept().unwrap().0)
            .collect::<Vec<_>>()
    });
    let clients: Vec<TcpStream> = (0..N)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let servers = acceptor.join().unwrap();

    let mut moved = Moved::default();
    for (i, (mut c, mut s)) in clients.into_iter().zip(servers).enumerate() {
        let (c2s, s2c) = (100 + i % 13, 200 + i % 7);
        c.write_all(&vec![b'c'; c2s]).unwrap();
        read_n(&mut s, c2s);
        s.write_all(&vec![b's'; s2c]).unwrap();
        read_n(&mut c, s2c);
        moved.c2s += c2s as u64;
        moved.s2c += s2c as u64;
        // Either end closes first: the FIN accounting differs between the two.
        let (first, mut second) = if i % 2 == 0 { (c, s) } else { (s, c) };
        first.shutdown(Shutdown::Write).unwrap();
        drop(first);
        let mut eof = [0u8; 1];
        assert_eq!(second.read(&mut eof).unwrap(), 0);
        drop(second);
    }
    let samples = wait_exact(&agent, port, moved);
    drop(listener);
    let full = common::tcp::links_map_full(&samples);
    assert!(
        full > 0.0,
        "no full-map insert counted with 1,300 connects held in 1,024 slots"
    );
    assert_eq!(
        self_metric(&samples, "gopher_ebpf_events_lost_total"),
        Some(0.0)
    );
}

/// Several thousand short connections as fast as two clients can make them: no close event is
/// lost and every byte is accounted.
#[test]
fn a_burst_of_short_connections_loses_no_close_event() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let agent = Agent::start(&config(""));
    agent.wait_running(WAIT, "tcp");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts, answers and closes first (so the server holds the TIME_WAITs, as a web server
    // does); the listener goes with the thread once the burst is done.
    let server = thread::spawn(move || {
        for _ in 0..CLIENTS * EACH {
            let (mut s, _) = listener.accept().unwrap();
            read_n(&mut s, REQ);
            s.write_all(&[b's'; RESP]).unwrap();
        }
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            thread::spawn(move || {
                for _ in 0..EACH {
                    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    c.write_all(&[b'c'; REQ]).unwrap();
                    read_n(&mut c, RESP);
                    let mut eof = [0u8; 1];
                    assert_eq!(c.read(&mut eof).unwrap(), 0);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    server.join().unwrap();
    let n = (CLIENTS * EACH) as u64;
    let samples = wait_exact(
        &agent,
        port,
        Moved {
            c2s: n * REQ as u64,
            s2c: n * RESP as u64,
        },
    );
    assert_eq!(
        self_metric(&samples, "gopher_ebpf_events_lost_total"),
        Some(0.0)
    );
}
