//! The real agent's metrics endpoint under abuse (issue 13): idle connections, clients that
//! send their headers a byte at a time and clients that stop reading do not keep a scrape
//! out; `/healthz` and the landing page at `/` answer without rendering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::fd::FromRawFd as _,
    time::{Duration, Instant},
};

use common::Agent;

const CONFIG: &str = "[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\ninterval = 1\n";

/// One request on its own connection; the status line, headers and body.
fn get(port: u16, method: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (head.to_owned(), body.to_owned())
}

/// A connection with a tiny receive buffer, so that the agent's writes to it stall as soon as
/// it stops reading.
fn small_window(port: u16) -> TcpStream {
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            std::ptr::from_ref(&addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn a_scrape_answers_while_idle_slow_and_stalled_clients_hold_connections() {
    let agent = Agent::start(CONFIG);
    let port = agent.port;
    // 100 connections that never send a byte (the old server had 64 slots, taken before
    // accept, for 30 s each).
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // 10 that send their request a trickle at a time, and 10 that ask for /metrics and never
    // read the answer.
    let mut trickling: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let stalled: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = small_window(port);
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for s in &mut trickling {
        s.write_all(b"a").unwrap();
    }

    let started = Instant::now();
    let samples = agent
        .scrape()
        .expect("scrape with 120 abusive connections held");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the scrape took {took:?}");
    assert!(samples.iter().any(|s| s.name == "gopher_build_info"));
    let started = Instant::now();
    let (head, body) = get(port, "GET", "/healthz");
    assert!(
        head.starts_with("HTTP/1.1 200") && body == "ok\n",
        "{head}\n{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        idle.len() + trickling.len() + stalled.len(),
        120,
        "all held until here"
    );
}

#[test]
fn healthz_and_the_landing_page_render_nothing() {
    let agent = Agent::start(CONFIG);
    let renders = |agent: &Agent| {
        let samples = agent.scrape().unwrap();
        samples
            .iter()
            .find(|s| s.name == "gopher_scrape_renders_total")
            .map(|s| s.value)
            .unwrap()
    };
    let before = renders(&agent);
    let (head, body) = get(agent.port, "GET", "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(body.contains("<a href=\"metrics\">"), "{body}");
    let (head, body) = get(agent.port, "GET", "/healthz");
    assert!(
        head.starts_with("HTTP/1.1 200") && body == "ok\n",
        "{head}\n{body}"
    );
    let (head, body) = get(agent.port, "HEAD", "/metrics");
    assert!(
        head.starts_with("HTTP/1.1 200") && body.is_empty(),
        "{head}"
    );
    let (head, _) = get(agent.port, "GET", "/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // The scrape that reads the counter is the only render since the first.
    assert!((renders(&agent) - before - 1.0).abs() < f64::EPSILON);
}
