//! `tcp_link`'s health signals end to end (issue 14 items 3 and 4): connection resets per link
//! (`send_rsts`, `receive_rsts`) and the `srtt` histogram over a link's open connections, from
//! the real agent with its real eBPF programs, scraped through the reference parser.
//!
//! Resets are made the way applications make them: `SO_LINGER` 0 and close, which aborts the
//! connection with a RST (`tcp_send_reset`, after the socket moved to CLOSE) that the other end
//! receives (`tcp_receive_reset`, before its socket closes). Both ends are this process, on a
//! port of its own, so only this test's connections are in its rows; counts are exact.
// Counters are compared exactly on purpose: they must be exact.
#![allow(
    clippy::float_cmp,
    clippy::too_many_lines,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use common::{
    Agent, is_root, promtool_says, require,
    tcp::{CONFIG, WAIT, buckets, expect_row, ready, row},
};

/// The agent with the tcp probe running; None (a skip) where eBPF cannot run.
fn start() -> Option<Agent> {
    if !require(is_root(), "root (eBPF)") {
        return None;
    }
    let agent = Agent::start(CONFIG);
    require(ready(&agent), "tcp probe running").then_some(agent)
}

/// Closes `s` with a RST instead of a FIN (`SO_LINGER` on, 0 seconds).
fn abort(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a `linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(s);
}

/// `n` connections to `listener`, each after a byte each way: (client end, server end).
fn connect(listener: &TcpListener, n: usize) -> Vec<(TcpStream, TcpStream)> {
    let port = listener.local_addr().unwrap().port();
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut s, _) = listener.accept().unwrap();
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            s.write_all(b"y").unwrap();
            c.read_exact(&mut b).unwrap();
            (c, s)
        })
        .collect()
}

fn keys(role: &str, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("role", role.to_owned()),
        ("tgid", std::process::id().to_string()),
        ("server_port", port.to_string()),
        ("client_ip", "127.0.0.1".to_owned()),
    ]
}

fn resets(r: &BTreeMap<String, f64>) -> (f64, f64) {
    (r["send_rsts"], r["receive_rsts"])
}

/// Waits until the closed link `want` shows `(send_rsts, receive_rsts)`: exactly, and with no
/// open connection left.
fn expect_resets(agent: &Agent, end: &str, want: &[(&str, String)], counts: (f64, f64)) {
    let r = expect_row(agent, &format!("{end}: resets {counts:?}"), want, |r| {
        r["link_count"] == 0.0 && resets(r) == counts
    });
    assert_eq!(resets(&r), counts, "{end} row {r:?}");
}

/// Checks the `srtt` histogram of the row matching `want` against its other fields: one
/// observation per open connection, cumulative buckets, and a sum whose mean is `rtt`.
fn check_srtt(samples: &[common::Sample], want: &[(&str, String)], open: f64) {
    let r = row(samples, want).unwrap();
    let b = buckets(samples, "srtt", want);
    assert_eq!(b.len(), 13, "12 bounds and +Inf: {b:?}");
    assert_eq!(b.last().unwrap().0, f64::INFINITY, "{b:?}");
    let bounds: Vec<f64> = b.iter().map(|x| x.0).collect();
    let want_bounds = [
        50.0, 100.0, 250.0, 500.0, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5,
    ];
    assert_eq!(bounds[..12], want_bounds, "documented bounds (µs)");
    assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative: {b:?}");
    assert_eq!(
        b.last().unwrap().1,
        open,
        "+Inf counts every open connection"
    );
    assert_eq!(r["srtt_count"], open, "{r:?}");
    assert_eq!(r["link_count"], open, "{r:?}");
    // `rtt` is the integer mean of the same readings.
    assert_eq!((r["srtt_sum"] / open).floor(), r["rtt"], "{r:?}");
    assert!(r["srtt_sum"] > 0.0, "{r:?}");
}

#[test]
fn resets_on_each_end_and_srtt_histogram() {
    let Some(agent) = start() else {
        return;
    };
    // 1. The client aborts: RSTs sent on the client's link, received on the server's. Three
    //    connections live long enough to be read by a dump (the histogram is checked on
    //    them), two more reset at once (closed before any dump saw them), one closed cleanly.
    let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
    let p1 = l1.local_addr().unwrap().port();
    let held = connect(&l1, 3);
    let samples = agent.wait_for(WAIT, "3 open links on both ends", |s| {
        ["0", "1"].iter().all(|role| {
            row(s, &keys(role, p1)).is_some_and(|r| r["link_count"] == 3.0)
                && buckets(s, "srtt", &keys(role, p1)).last().map(|b| b.1) == Some(3.0)
        })
    });
    check_srtt(&samples, &keys("1", p1), 3.0);
    check_srtt(&samples, &keys("0", p1), 3.0);
    let raw = agent.raw();
    let says = promtool_says(&raw);
    assert!(says.trim().is_empty(), "promtool: {says}");
    assert!(
        raw.contains("# TYPE gala_gopher_tcp_link_srtt histogram"),
        "{raw}"
    );

    let mut quick = connect(&l1, 3);
    let clean = quick.pop().unwrap();
    for (c, s) in held.into_iter().chain(quick) {
        abort(c);
        // The server end reads the RST (ECONNRESET) and is then closed by the test.
        let mut s = s;
        let mut b = [0u8; 1];
        assert!(s.read(&mut b).is_err(), "the server end got a RST");
    }
    // The sixth connection ends with FINs: no reset anywhere.
    drop(clean);
    expect_resets(&agent, "client", &keys("1", p1), (5.0, 0.0));
    expect_resets(&agent, "server", &keys("0", p1), (0.0, 5.0));

    // 2. The server aborts: the reverse, on a listener of its own.
    let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
    let p2 = l2.local_addr().unwrap().port();
    for (c, s) in connect(&l2, 2) {
        abort(s);
        let mut c = c;
        let mut b = [0u8; 1];
        // The client end may see the RST as an error or (if it is still queued) after the
        // data: read until the error.
        while c.read(&mut b).is_ok_and(|n| n > 0) {}
    }
    expect_resets(&agent, "server", &keys("0", p2), (2.0, 0.0));
    expect_resets(&agent, "client", &keys("1", p2), (0.0, 2.0));

    // 3. Counters never go back: a few intervals later, the same exact counts. A closed link
    //    has no open connection: no histogram then.
    std::thread::sleep(Duration::from_secs(3));
    let samples = agent.scrape().unwrap();
    for (role, port, want) in [
        ("1", p1, (5.0, 0.0)),
        ("0", p1, (0.0, 5.0)),
        ("0", p2, (2.0, 0.0)),
        ("1", p2, (0.0, 2.0)),
    ] {
        let r = row(&samples, &keys(role, port)).unwrap();
        assert_eq!(resets(&r), want, "role {role} port {port}: {r:?}");
        assert!(buckets(&samples, "srtt", &keys(role, port)).is_empty());
    }
    let unattributed = samples
        .iter()
        .find(|s| s.name == "gopher_tcp_resets_unattributed_total")
        .map(|s| s.value);
    assert!(unattributed.is_some(), "self-metric declared");
}

/// A known-slow path without netem: a connection whose receiver never reads nor answers, fed
/// one byte every 50 ms, is acknowledged only by the delayed-ACK timer (40 ms at least on
/// Linux) once the receiver's first quick ACKs are spent, so its sender's smoothed RTT climbs
/// to tens of milliseconds; a ping-pong connection on the same link stays at loopback speed.
/// The link's histogram must put them in different buckets.
#[test]
fn srtt_histogram_tells_a_delayed_ack_connection_from_a_fast_one() {
    let Some(agent) = start() else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut fast = connect(&listener, 1);
    let (client, server) = &mut fast[0];
    let mut byte = [0u8; 1];
    for _ in 0..20 {
        client.write_all(b"p").unwrap();
        server.read_exact(&mut byte).unwrap();
        server.write_all(b"q").unwrap();
        client.read_exact(&mut byte).unwrap();
    }
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_nodelay(true).unwrap();
    let (_unread, _) = listener.accept().unwrap();
    for _ in 0..80 {
        slow.write_all(b"z").unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let want = keys("1", port);
    let le = |s: &[common::Sample], bound: f64| {
        buckets(s, "srtt", &want)
            .iter()
            .find(|b| b.0 == bound)
            .map(|b| b.1)
    };
    let samples = agent.wait_for(WAIT, "one fast and one slow connection", |s| {
        le(s, 10_000.0) == Some(1.0) && le(s, f64::INFINITY) == Some(2.0)
    });
    check_srtt(&samples, &want, 2.0);
    eprintln!(
        "client srtt buckets: {:?}",
        buckets(&samples, "srtt", &want)
    );
    // The slow one is a delayed-ACK round trip: tens of ms, under a quarter second.
    assert_eq!(
        le(&samples, 250_000.0),
        Some(2.0),
        "{:?}",
        buckets(&samples, "srtt", &want)
    );
    let r = row(&samples, &want).unwrap();
    assert!(r["srtt_sum"] > 10_000.0, "{r:?}");
}

/// A connection the peer resets while its process keeps the socket open: the kernel moves the
/// socket to CLOSE at once (no dump lists it from then on) but destroys it only when the
/// process closes it, here long after the agent stopped looking for the vanished socket. Its
/// counters go out at the reset (`inet_sk_error_report`), once: the late close adds nothing,
/// and its reset is counted.
#[test]
fn a_socket_reset_while_its_process_holds_it_counts_once() {
    let Some(agent) = start() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mut client, mut server) = connect(&listener, 1).pop().unwrap();
    let (c2s, s2c) = (300usize, 400usize);
    client.write_all(&vec![b'c'; c2s]).unwrap();
    let mut buf = vec![0u8; c2s.max(s2c)];
    server.read_exact(&mut buf[..c2s]).unwrap();
    server.write_all(&vec![b's'; s2c]).unwrap();
    client.read_exact(&mut buf[..s2c]).unwrap();
    abort(server);
    // `connect` moved a byte each way first.
    let (tx, rx) = ((c2s + 1) as f64, (s2c + 1) as f64);
    let want = keys("1", port);
    let exact = |r: &BTreeMap<String, f64>| {
        r["tx_bytes"] == tx && r["rx_bytes"] == rx && r["receive_rsts"] == 1.0
    };
    expect_row(&agent, "client row, reset, held open", &want, |r| {
        exact(r) && r["link_count"] == 0.0
    });
    // The agent forgets a socket that left its dumps after about 25 intervals.
    std::thread::sleep(Duration::from_secs(30));
    drop(client);
    std::thread::sleep(Duration::from_secs(3));
    let r = row(&agent.scrape().unwrap(), &want).expect("client row");
    assert!(exact(&r), "counted again at the late close: {r:?}");
}
