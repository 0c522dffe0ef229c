//! End to end: the real agent with its real eBPF programs, real TCP links, scraped /metrics.
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
    os::unix::fs::MetadataExt,
};

use common::{
    Agent, Peer, is_root, require, sh,
    tcp::{CONFIG, expect_row, ready},
};

fn family(addr: &str) -> &'static str {
    if addr.contains(':') { "10" } else { "2" }
}

/// A Python server (its own pid) and this test process as client, then the reverse; checks
/// both ends' rows while the link is open and after it closed.
fn both_directions(agent: &Agent, addr: &str) {
    let me = std::process::id().to_string();
    // 1. peer is the server, we are the client.
    let (c2s, s2c) = (5000usize, 3000usize);
    let mut server = Peer::spawn(
        &[],
        &["server", addr, "0", &s2c.to_string(), &c2s.to_string()],
    );
    let port: u16 = server
        .line()
        .strip_prefix("ready ")
        .unwrap()
        .parse()
        .unwrap();
    let mut client = TcpStream::connect((addr, port)).unwrap();
    client.write_all(&vec![b'x'; c2s]).unwrap();
    let mut buf = vec![0u8; s2c];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(server.line(), "done");
    let (spid, scomm) = (server.pid().to_string(), server.comm());
    let base = |role: &str, tgid: &str| {
        vec![
            ("role", role.to_owned()),
            ("tgid", tgid.to_owned()),
            ("server_ip", addr.to_owned()),
            ("server_port", port.to_string()),
            ("client_ip", addr.to_owned()),
            ("protocol", family(addr).to_owned()),
        ]
    };
    let exact = |tx: usize, rx: usize, links: f64| {
        move |r: &BTreeMap<String, f64>| {
            r["tx_bytes"] == tx as f64 && r["rx_bytes"] == rx as f64 && r["link_count"] == links
        }
    };
    let c = expect_row(
        agent,
        "client row (live)",
        &base("1", &me),
        exact(c2s, s2c, 1.0),
    );
    assert!(
        c["packets_out"] >= 1.0 && c["packets_in"] >= 1.0 && c["rtt"] > 0.0,
        "{c:?}"
    );
    let mut srv_want = base("0", &spid);
    srv_want.push(("process_name", scomm.clone()));
    expect_row(
        agent,
        "server row (live, owner = accepting process)",
        &srv_want,
        exact(s2c, c2s, 1.0),
    );
    drop(client);
    server.close();
    expect_row(
        agent,
        "client row (closed)",
        &base("1", &me),
        exact(c2s, s2c, 0.0),
    );
    expect_row(
        agent,
        "server row (closed)",
        &srv_want,
        exact(s2c, c2s, 0.0),
    );

    // 2. we are the server, the peer is the client.
    let (c2s, s2c) = (1234usize, 4321usize);
    let listener = TcpListener::bind((addr, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = Peer::spawn(
        &[],
        &[
            "client",
            addr,
            &port.to_string(),
            &c2s.to_string(),
            &s2c.to_string(),
        ],
    );
    let (mut conn, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; c2s];
    conn.read_exact(&mut buf).unwrap();
    conn.write_all(&vec![b'y'; s2c]).unwrap();
    assert_eq!(client.line(), "done");
    let cpid = client.pid().to_string();
    let base = |role: &str, tgid: &str| {
        vec![
            ("role", role.to_owned()),
            ("tgid", tgid.to_owned()),
            ("server_port", port.to_string()),
            ("server_ip", addr.to_owned()),
            ("protocol", family(addr).to_owned()),
        ]
    };
    expect_row(
        agent,
        "server row (we accept)",
        &base("0", &me),
        exact(s2c, c2s, 1.0),
    );
    expect_row(
        agent,
        "client row (peer)",
        &base("1", &cpid),
        exact(c2s, s2c, 1.0),
    );
    client.close();
    drop(conn);
    expect_row(
        agent,
        "server row (we accept, closed)",
        &base("0", &me),
        exact(s2c, c2s, 0.0),
    );
    expect_row(
        agent,
        "client row (peer, closed)",
        &base("1", &cpid),
        exact(c2s, s2c, 0.0),
    );
}

#[test]
fn loopback_ipv4_and_ipv6_links_in_both_directions() {
    if !require(is_root(), "root (eBPF, sock_diag in every namespace)") {
        return;
    }
    let agent = Agent::start(CONFIG);
    assert!(ready(&agent));
    both_directions(&agent, "127.0.0.1");
    both_directions(&agent, "::1");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("curl -sf {} | promtool check metrics", agent.url()))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{out:?}"
    );
}

/// Older kernels refuse current-task helpers in sockops; the agent then records client owners
/// with cgroup connect hooks. Same rows either way.
#[test]
fn loopback_links_with_the_connect_hook_fallback() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let agent = Agent::start(&format!("{CONFIG}[probes.params]\nconnect_hooks = true\n"));
    assert!(ready(&agent));
    both_directions(&agent, "127.0.0.1");
}

#[test]
fn links_that_predate_the_agent_are_picked_up() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    client.write_all(&[1u8; 777]).unwrap();
    let mut buf = [0u8; 777];
    conn.read_exact(&mut buf).unwrap();
    // A server that closed its listener but keeps its connection (draining): nothing listens on
    // its port any more, so the agent tells its socket from the client's by the ports (its own
    // outside the ephemeral range, its peer's inside).
    let (gone_port, _client2, _conn2) = {
        let base = 20_000 + u16::try_from(std::process::id() % 5_000).unwrap();
        let listener = (base..base + 100)
            .find_map(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .expect("a free port below the ephemeral range");
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (conn, _) = listener.accept().unwrap();
        (port, client, conn)
    };

    let agent = Agent::start(CONFIG);
    assert!(ready(&agent));
    let me = std::process::id().to_string();
    let want = |role: &str| {
        vec![
            ("role", role.to_owned()),
            ("tgid", me.clone()),
            ("server_port", port.to_string()),
        ]
    };
    // What moved before the agent saw the link is not reported as new traffic: its counters
    // start at its first reading, then count what moves from there.
    expect_row(&agent, "pre-existing client", &want("1"), |r| {
        r["tx_bytes"] == 0.0 && r["link_count"] == 1.0
    });
    expect_row(&agent, "pre-existing server", &want("0"), |r| {
        r["rx_bytes"] == 0.0 && r["link_count"] == 1.0
    });
    let drained = |role: &str| {
        vec![
            ("role", role.to_owned()),
            ("tgid", me.clone()),
            ("server_port", gone_port.to_string()),
        ]
    };
    expect_row(
        &agent,
        "pre-existing server, listener closed",
        &drained("0"),
        |r| r["link_count"] == 1.0,
    );
    expect_row(&agent, "pre-existing client of it", &drained("1"), |r| {
        r["link_count"] == 1.0
    });
    client.write_all(&[2u8; 555]).unwrap();
    let mut buf = [0u8; 555];
    conn.read_exact(&mut buf).unwrap();
    expect_row(&agent, "pre-existing client, new bytes", &want("1"), |r| {
        r["tx_bytes"] == 555.0 && r["link_count"] == 1.0
    });
    expect_row(&agent, "pre-existing server, new bytes", &want("0"), |r| {
        r["rx_bytes"] == 555.0 && r["link_count"] == 1.0
    });
    // This agent's own programs: other tests' agents may run beside it.
    let mine = common::gopher_attached_ids_held_by(agent.pid());
    // The sock_ops program at least (the connect and release hooks only where it cannot
    // record owners).
    assert!(!mine.is_empty(), "programs attached while the agent runs");
    drop(agent);
    assert_eq!(
        common::gopher_still_attached(&mine),
        0,
        "programs left attached after the agent stopped"
    );
}

/// Two namespaces joined by a veth pair, torn down on drop.
struct NetnsPair {
    a: String,
    b: String,
}

impl NetnsPair {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let (a, b) = (format!("gopher-a{id}"), format!("gopher-b{id}"));
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &a])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &b])
            .status();
        sh(&format!(
            "ip netns add {a} && ip netns add {b} && \
             ip link add gva{id} netns {a} type veth peer name gvb{id} netns {b} && \
             ip -n {a} addr add 10.213.0.1/24 dev gva{id} && ip -n {b} addr add 10.213.0.2/24 dev gvb{id} && \
             ip -n {a} link set gva{id} up && ip -n {b} link set gvb{id} up && \
             ip -n {a} link set lo up && ip -n {b} link set lo up"
        ));
        NetnsPair { a, b }
    }

    fn inode(name: &str) -> String {
        std::fs::metadata(format!("/run/netns/{name}"))
            .unwrap()
            .ino()
            .to_string()
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.a])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.b])
            .status();
    }
}

#[test]
fn links_between_namespaces_carry_their_netns_and_count_retransmissions() {
    if !require(is_root(), "root (netns, veth, nftables, eBPF)") {
        return;
    }
    let agent = Agent::start(CONFIG);
    assert!(ready(&agent));
    let ns = NetnsPair::new();
    // The client's namespace drops a share of the TCP segments arriving from the server, so
    // the server retransmits. (Dropping in the sender's own output hook would not do: TCP sees
    // a failed local send and sends again as new data, not as a retransmission.)
    sh(&format!(
        "ip netns exec {} nft -f - <<'EOF'\ntable inet gopher_test {{\n chain in {{\n  type filter hook input priority 0;\n  meta l4proto tcp numgen random mod 100 < 20 drop\n }}\n}}\nEOF",
        ns.b
    ));
    // Segments must cross the veth one MSS at a time: a handful of 64 KiB GSO packets would
    // often all survive a random drop and leave nothing to retransmit.
    let _ = std::process::Command::new("ip")
        .args([
            "-n",
            &ns.a,
            "link",
            "set",
            &format!("gva{}", std::process::id() % 100_000),
        ])
        .args(["gso_max_size", "1500"])
        .status();
    let (c2s, s2c) = (1000usize, 2_000_000usize);
    let mut server = Peer::spawn(
        &["ip", "netns", "exec", &ns.a],
        &[
            "server",
            "10.213.0.1",
            "0",
            &s2c.to_string(),
            &c2s.to_string(),
        ],
    );
    let port: u16 = server
        .line()
        .strip_prefix("ready ")
        .unwrap()
        .parse()
        .unwrap();
    let mut client = Peer::spawn(
        &["ip", "netns", "exec", &ns.b],
        &[
            "client",
            "10.213.0.1",
            &port.to_string(),
            &c2s.to_string(),
            &s2c.to_string(),
        ],
    );
    assert_eq!(client.line(), "done");
    assert_eq!(server.line(), "done");
    let (ino_a, ino_b) = (NetnsPair::inode(&ns.a), NetnsPair::inode(&ns.b));
    let srv = vec![
        ("role", "0".to_owned()),
        ("tgid", server.pid().to_string()),
        ("netns", ino_a.clone()),
        ("server_ip", "10.213.0.1".to_owned()),
        ("client_ip", "10.213.0.2".to_owned()),
        ("server_port", port.to_string()),
    ];
    let cli = vec![
        ("role", "1".to_owned()),
        ("tgid", client.pid().to_string()),
        ("netns", ino_b.clone()),
        ("server_ip", "10.213.0.1".to_owned()),
        ("client_ip", "10.213.0.2".to_owned()),
        ("server_port", port.to_string()),
    ];
    let s = expect_row(&agent, "server row in netns a", &srv, |r| {
        r["tx_bytes"] == s2c as f64 && r["rx_bytes"] == c2s as f64 && r["link_count"] == 1.0
    });
    assert!(
        s["retran_packets"] > 0.0,
        "20% loss must cause retransmissions: {s:?}"
    );
    expect_row(&agent, "client row in netns b", &cli, |r| {
        r["rx_bytes"] == s2c as f64 && r["tx_bytes"] == c2s as f64 && r["link_count"] == 1.0
    });
    client.close();
    server.close();
    let s = expect_row(&agent, "server row in netns a (closed)", &srv, |r| {
        r["tx_bytes"] == s2c as f64 && r["link_count"] == 0.0
    });
    assert!(s["retran_packets"] > 0.0, "{s:?}");
    expect_row(&agent, "client row in netns b (closed)", &cli, |r| {
        r["rx_bytes"] == s2c as f64 && r["link_count"] == 0.0
    });
}
