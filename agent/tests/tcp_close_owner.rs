//! Owners and entries the eBPF side keeps without a `sock_release` program (real agent, real
//! eBPF, real sockets): the sock_ops program records a server socket's owner when its process
//! closes it (FIN_WAIT1 or LAST_ACK, in that process's context), and drops the entry of a
//! connect that failed when the socket reaches CLOSE. Both used to be `sock_release`'s work,
//! one program run per socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use common::{
    Agent, Peer, is_root, require,
    tcp::{CONFIG, expect_row, links_entries_held_by, links_map_full, ready},
};

/// Failed connects in [`failed_connects_leave_no_entry_behind`]: four times the map's slots.
const FAILED: usize = 4000;

/// A server socket that a forked child serves and closes (the listener stays with its parent):
/// its row is keyed to the child, the process that closed it, not to the listener's owner the
/// agent falls back to for server sockets it has no owner for. The socket lives a few
/// milliseconds, so its owner comes from the eBPF side (a dump that catches it live finds the
/// child in /proc: the same answer).
#[test]
fn a_server_socket_is_keyed_to_the_process_that_closed_it() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let agent = Agent::start(CONFIG);
    assert!(ready(&agent));
    let (c2s, s2c) = (777usize, 555usize);
    let mut server = Peer::spawn_script(
        &[],
        "fork_server.py",
        &["127.0.0.1", &s2c.to_string(), &c2s.to_string()],
    );
    let port: u16 = server
        .line()
        .strip_prefix("ready ")
        .unwrap()
        .parse()
        .unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(&vec![b'c'; c2s]).unwrap();
    let mut buf = vec![0u8; s2c];
    client.read_exact(&mut buf).unwrap();
    let child: u32 = server
        .line()
        .strip_prefix("closed ")
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(child, server.pid());
    assert_eq!(client.read(&mut buf).unwrap(), 0, "the child closed first");
    drop(client);
    let want = [
        ("role", "0".to_owned()),
        ("tgid", child.to_string()),
        ("server_port", port.to_string()),
        ("client_ip", "127.0.0.1".to_owned()),
    ];
    expect_row(
        &agent,
        "server row keyed to the closing child",
        &want,
        |r| r["tx_bytes"] == s2c as f64 && r["rx_bytes"] == c2s as f64 && r["link_count"] == 0.0,
    );
    server.close();
}

/// Connects that fail (refused: SYN_SENT to CLOSE) leave no entry behind in a `LINKS` map of
/// 1,024 slots: thousands of them later, nothing was refused for a full map. A leaked entry per
/// failed connect would fill the map after 1,024 and count every later insert as refused.
/// The default destroy hooks: the connect's entry goes when the socket is destroyed.
#[test]
fn failed_connects_leave_no_entry_behind() {
    failed_connects("");
}

/// The sockops hooks (`connect_hooks = true`): the entry goes at CLOSE or `sock_release`.
#[test]
fn failed_connects_leave_no_entry_behind_with_the_sockops_hooks() {
    failed_connects("connect_hooks = true\n");
}

fn failed_connects(params: &str) {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let agent = Agent::start(&format!(
        "{CONFIG}[probes.params]\nmax_links = 1024\n{params}"
    ));
    assert!(ready(&agent));
    // A port nobody listens on (bound and released: the kernel does not hand it out again at
    // once).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut refused = 0;
    for _ in 0..FAILED {
        if TcpStream::connect(("127.0.0.1", port)).is_err() {
            refused += 1;
        }
    }
    assert!(
        refused > FAILED / 2,
        "only {refused} of {FAILED} connects failed"
    );
    // Two intervals: the map-full counter is read at each collection.
    std::thread::sleep(Duration::from_secs(3));
    let samples = agent.scrape().unwrap();
    assert!(
        samples
            .iter()
            .any(|s| s.name == "gopher_probe_state" && s.label("probe") == "tcp"),
        "no probe state on /metrics"
    );
    let full = links_map_full(&samples);
    // Other sockets of the host (sibling tests' connections) may take slots meanwhile; leaked
    // entries would make it about FAILED - 1024.
    assert!(
        full < 1000.0,
        "{full} inserts refused for a full map after {refused} failed connects"
    );
}

/// Sockets connected twice in [`a_socket_connected_again_after_a_refusal_is_one_entry`].
const RECONNECTED: usize = 1500;

/// A socket whose first `connect()` was refused and whose second one succeeded has one entry:
/// the second connect overwrites the entry the first made (in the socket's slot, or in `LINKS`)
/// rather than making another that its destroy would leave behind. More of them than a map of
/// 1,024 holds: nothing refused, and every byte on the client's row, keyed to this process.
#[test]
fn a_socket_connected_again_after_a_refusal_is_one_entry() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let agent = Agent::start(&format!("{CONFIG}[probes.params]\nmax_links = 1024\n"));
    assert!(ready(&agent));
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let mut got = 0;
        for _ in 0..RECONNECTED {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            got += s.read_to_end(&mut buf).unwrap();
        }
        got
    });
    let addr = |port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    let connect = |fd: i32, port: u16| {
        let a = addr(port);
        // SAFETY: a valid socket and a sockaddr_in of the size given.
        unsafe {
            libc::connect(
                fd,
                (&raw const a).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
    };
    for _ in 0..RECONNECTED {
        // SAFETY: plain socket calls on a descriptor this loop owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            assert_eq!(connect(fd, closed), -1, "port {closed} accepted a connect");
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::ECONNREFUSED)
            );
            assert_eq!(connect(fd, port), 0, "{}", std::io::Error::last_os_error());
            assert_eq!(libc::write(fd, b"x".as_ptr().cast(), 1), 1);
            libc::close(fd);
        }
    }
    assert_eq!(server.join().unwrap(), RECONNECTED);
    let want = [
        ("role", "1".to_owned()),
        ("tgid", std::process::id().to_string()),
        ("server_port", port.to_string()),
    ];
    let row = expect_row(&agent, "the reconnected clients' row", &want, |r| {
        r["tx_bytes"] == RECONNECTED as f64
    });
    assert_eq!(row["tx_bytes"], RECONNECTED as f64);
    let samples = agent.scrape().unwrap();
    assert_eq!(
        links_map_full(&samples),
        0.0,
        "inserts refused after {RECONNECTED} reconnected sockets"
    );
}

/// UDP sockets given ICMP errors in [`error_reports_of_other_sockets_leave_no_entry_behind`].
const UDP_ERRORS: usize = 300;

/// `inet_sk_error_report` fires for every inet socket, and a UDP, ping or raw socket is in
/// CLOSE for life: the hook makes entries for TCP sockets only. One made for a UDP socket
/// with `IP_RECVERR` (ping and traceroute set it) that an ICMP error reached would never go:
/// no `tcp_destroy_sock` fires for it.
#[test]
fn error_reports_of_other_sockets_leave_no_entry_behind() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let agent = Agent::start(CONFIG);
    assert!(ready(&agent));
    let before = links_entries_held_by(agent.pid());
    // A UDP port nobody listens on: each datagram draws an ICMP port unreachable (loopback is
    // exempt from ICMP rate limits).
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut reported = 0;
    for _ in 0..UDP_ERRORS {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the size given.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        s.send_to(b"x", closed).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        if s.take_error().unwrap().is_some() {
            reported += 1;
        }
    }
    assert!(
        reported > UDP_ERRORS / 2,
        "only {reported} of {UDP_ERRORS} sockets got an ICMP error"
    );
    let after = links_entries_held_by(agent.pid());
    assert!(
        after < before + 20,
        "LINKS went from {before} to {after} entries after {reported} UDP error reports"
    );
}
