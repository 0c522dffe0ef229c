//! End to end, idle links through the socket iterator: the real agent, real sockets. The
//! iterator writes an idle socket as its cookie alone ("unchanged since its last record"), so
//! these check what that must not break: an idle link stays live interval after interval, its
//! later traffic is counted exactly, and a socket that closes between two walks is closed (by
//! its close event, or, for a socket older than the agent that has none, by its absence).
// Counters are compared exactly on purpose: they must be exact.
#![allow(clippy::float_cmp, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use common::{
    Agent, Sample, is_root, require,
    tcp::{CONFIG, expect_row, ready, row},
};

/// Intervals (CONFIG's are 1 s) an idle link is left alone: more than the two missed walks
/// after which a socket is taken as gone.
const IDLE: Duration = Duration::from_secs(5);

struct Pair {
    listener: TcpListener,
    client: TcpStream,
    server: TcpStream,
}

fn pair() -> Pair {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    Pair {
        listener,
        client,
        server,
    }
}

impl Pair {
    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// `n` bytes client to server, read to the end.
    fn send(&mut self, n: usize) {
        self.client.write_all(&vec![3u8; n]).unwrap();
        let mut got = vec![0u8; n];
        self.server.read_exact(&mut got).unwrap();
    }
}

/// The agent must read through the iterator for these to mean anything: a skip when it
/// cannot load here, a failure under `GOPHER_STRICT_TESTS`.
fn on_iterator(agent: &Agent) -> bool {
    let samples = agent.scrape().unwrap();
    let iterator = samples.iter().any(|s: &Sample| {
        s.name == "gopher_tcp_socket_source" && s.label("source") == "iterator" && s.value == 1.0
    });
    require(
        iterator,
        "the eBPF socket iterator (the agent fell back to sock_diag)",
    )
}

fn want(role: &str, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("role", role.to_owned()),
        ("tgid", std::process::id().to_string()),
        ("server_port", port.to_string()),
    ]
}

/// One scrape now, no waiting: the row as the agent has it after the idle stretch.
fn now(agent: &Agent, role: &str, port: u16) -> BTreeMap<String, f64> {
    row(&agent.scrape().unwrap(), &want(role, port)).expect("the link's row")
}

fn exact(tx: f64, rx: f64, links: f64) -> impl Fn(&BTreeMap<String, f64>) -> bool {
    move |r| r["tx_bytes"] == tx && r["rx_bytes"] == rx && r["link_count"] == links
}

#[test]
fn an_idle_link_stays_live_and_its_later_traffic_counts_exactly() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let agent = Agent::start(CONFIG);
    assert!(ready(&agent));
    if !on_iterator(&agent) {
        return;
    }
    let mut p = pair();
    let port = p.port();
    p.send(1000);
    expect_row(
        &agent,
        "client row",
        &want("1", port),
        exact(1000.0, 0.0, 1.0),
    );
    expect_row(
        &agent,
        "server row",
        &want("0", port),
        exact(0.0, 1000.0, 1.0),
    );
    // Idle for several walks: reported unchanged each time, and still live, same totals.
    std::thread::sleep(IDLE);
    for role in ["1", "0"] {
        let r = now(&agent, role, port);
        assert_eq!(
            r["link_count"], 1.0,
            "idle link {role} taken as gone: {r:?}"
        );
        assert_eq!(r["tx_bytes"] + r["rx_bytes"], 1000.0, "{r:?}");
    }
    // Traffic after the idle stretch: counted, exactly once.
    p.send(2345);
    expect_row(
        &agent,
        "client row, new bytes",
        &want("1", port),
        exact(3345.0, 0.0, 1.0),
    );
    expect_row(
        &agent,
        "server row, new bytes",
        &want("0", port),
        exact(0.0, 3345.0, 1.0),
    );
    std::thread::sleep(IDLE);
    let r = now(&agent, "0", port);
    assert_eq!((r["rx_bytes"], r["link_count"]), (3345.0, 1.0), "{r:?}");
    // Closed between two walks, after idle ones: closed, with its totals.
    drop(p);
    expect_row(
        &agent,
        "client row, closed",
        &want("1", port),
        exact(3345.0, 0.0, 0.0),
    );
    expect_row(
        &agent,
        "server row, closed",
        &want("0", port),
        exact(0.0, 3345.0, 0.0),
    );
}

#[test]
fn an_idle_link_older_than_the_agent_is_gone_once_absent() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    // Opened before the agent: no close event will come (its programs never saw it), so
    // only its absence from a complete walk can close it.
    let mut p = pair();
    let port = p.port();
    p.send(777);
    let agent = Agent::start(CONFIG);
    assert!(ready(&agent));
    if !on_iterator(&agent) {
        return;
    }
    // Counted from the agent's first reading (a full record), then idle.
    expect_row(&agent, "client row", &want("1", port), exact(0.0, 0.0, 1.0));
    std::thread::sleep(IDLE);
    let r = now(&agent, "1", port);
    assert_eq!(r["link_count"], 1.0, "idle link taken as gone: {r:?}");
    p.send(555);
    expect_row(
        &agent,
        "client row, new bytes",
        &want("1", port),
        exact(555.0, 0.0, 1.0),
    );
    expect_row(
        &agent,
        "server row, new bytes",
        &want("0", port),
        exact(0.0, 555.0, 1.0),
    );
    std::thread::sleep(IDLE);
    drop(p);
    expect_row(
        &agent,
        "client row, gone",
        &want("1", port),
        exact(555.0, 0.0, 0.0),
    );
    expect_row(
        &agent,
        "server row, gone",
        &want("0", port),
        exact(0.0, 555.0, 0.0),
    );
}
