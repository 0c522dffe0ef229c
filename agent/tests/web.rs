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

use common::{
    Agent,
    pki::{pki, write},
};

const CONFIG: &str = "[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\ninterval = 1\n";

/// One request on its own connection; the status line, headers and body.
fn get(port: u16, method: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A server that refuses the request (plain HTTP to a TLS port) may close before the write
    // or the read finishes: that is an empty answer, which callers expecting one then report.
    let mut raw = Vec::new();
    if write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .is_ok()
    {
        let _ = s.read_to_end(&mut raw);
    }
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

/// The agent with `[web_server] web_config_file`, which `Agent::start` cannot wait for (its
/// readiness check scrapes plain HTTP); killed when dropped.
struct SecuredAgent {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for SecuredAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flag`: the file through `--web.config.file` (as node_exporter) instead of the config key.
fn secured_agent(dir: tempfile::TempDir, web_config: &str, flag: bool) -> SecuredAgent {
    let port = common::free_port();
    let web = dir.path().join("web.yml");
    std::fs::write(&web, web_config).unwrap();
    let config = dir.path().join("probes.toml");
    std::fs::write(
        &config,
        format!(
            "{CONFIG}[web_server]\nbind_addr = \"127.0.0.1\"\nport = {port}\n{}\
             [control]\nlisten = \"127.0.0.1:{}\"\n",
            if flag {
                ""
            } else {
                "web_config_file = \"web.yml\"\n"
            },
            common::free_port()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gopher"));
    if flag {
        cmd.arg("--web.config.file").arg(&web);
    }
    let child = cmd
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let agent = SecuredAgent {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the agent did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    agent
}

/// curl (a real TLS client): status code, headers and body.
fn curl(port: u16, path: &str, args: &[&str]) -> (u32, String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-", "--resolve"])
        .arg(format!("localhost:{port}:127.0.0.1"))
        .args(args)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return (0, String::from_utf8_lossy(&out.stderr).into_owned(), raw);
    }
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

#[test]
fn tls_and_basic_auth_from_an_exporter_toolkit_web_config() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca);
    write(dir.path(), "server.crt", &pki.server.0);
    write(dir.path(), "server.key", &pki.server.1);
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let agent = secured_agent(
        dir,
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS12\n\
             basic_auth_users:\n  prometheus: {hash}\n"
        ),
        false,
    );
    let port = agent.port;
    let (code, head, body) = curl(
        port,
        "/metrics",
        &["--cacert", &ca, "-u", "prometheus:s3cret"],
    );
    assert_eq!(code, 200, "{head}{body}");
    assert!(body.contains("\ngopher_build_info{"), "{body}");
    // Wrong password, unknown user, none at all: 401 with a challenge.
    for creds in [&["-u", "prometheus:wrong"][..], &["-u", "eve:s3cret"], &[]] {
        let mut args = vec!["--cacert", ca.as_str()];
        args.extend_from_slice(creds);
        let (code, head, _) = curl(port, "/metrics", &args);
        assert_eq!(code, 401, "{creds:?}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: basic"),
            "{head}"
        );
    }
    // The landing page is behind the password too; liveness is not (kubelet sends none).
    assert_eq!(curl(port, "/", &["--cacert", &ca]).0, 401);
    let (code, _, body) = curl(port, "/healthz", &["--cacert", &ca]);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    // A client that does not trust the certificate, and plain HTTP, get nothing.
    let (code, err, _) = curl(port, "/metrics", &["-u", "prometheus:s3cret"]);
    assert_eq!(code, 0, "{err}");
    let (head, _) = get(port, "GET", "/healthz");
    assert!(!head.starts_with("HTTP/1.1 200"), "{head}");
    // Counted.
    let (_, _, body) = curl(
        port,
        "/metrics",
        &["--cacert", &ca, "-u", "prometheus:s3cret"],
    );
    let count = |reason: &str| {
        body.lines()
            .find(|l| l.starts_with(&format!("gopher_http_refused_total{{reason=\"{reason}\"}}")))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(count("unauthorized") >= 4.0, "{body}");
    assert!(count("tls_handshake") >= 1.0, "{body}");
}

#[test]
fn client_certificates_when_the_web_config_requires_them() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca);
    write(dir.path(), "server.crt", &pki.server.0);
    write(dir.path(), "server.key", &pki.server.1);
    let cert = write(dir.path(), "client.crt", &pki.client.0);
    let key = write(dir.path(), "client.key", &pki.client.1);
    let agent = secured_agent(
        dir,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_ca_file: ca.pem\n  client_auth_type: RequireAndVerifyClientCert\n",
        true,
    );
    let (code, head, body) = curl(
        agent.port,
        "/metrics",
        &["--cacert", &ca, "--cert", &cert, "--key", &key],
    );
    assert_eq!(code, 200, "{head}{body}");
    let (code, err, _) = curl(agent.port, "/metrics", &["--cacert", &ca]);
    assert_eq!(code, 0, "served without a client certificate: {err}");
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let (old, new) = (pki(), pki());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let old_ca = write(&path, "old-ca.pem", &old.ca);
    let new_ca = write(&path, "new-ca.pem", &new.ca);
    write(&path, "server.crt", &old.server.0);
    write(&path, "server.key", &old.server.1);
    let agent = secured_agent(
        dir,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
        false,
    );
    let served_by = |ca: &str| curl(agent.port, "/healthz", &["--cacert", ca]).0 == 200;
    assert!(served_by(&old_ca) && !served_by(&new_ca));

    // Renewed the way certbot and cert-manager do it: new files over the old ones.
    write(&path, "server.crt", &new.server.0);
    write(&path, "server.key", &new.server.1);
    assert!(served_by(&new_ca), "the renewed certificate is served");
    assert!(!served_by(&old_ca), "the old one is not any more");

    // Half a renewal (a certificate whose key is not there yet), then garbage: the last good
    // pair stays served; the agent neither stops serving nor exits.
    write(&path, "server.crt", &old.server.0);
    assert!(served_by(&new_ca), "a mismatched pair is not taken");
    write(&path, "server.crt", "not a certificate\n");
    assert!(served_by(&new_ca), "a broken file is not taken");
    // Completed: taken.
    write(&path, "server.crt", &old.server.0);
    write(&path, "server.key", &old.server.1);
    assert!(served_by(&old_ca));
    // Counted: the renewal (one reload per changed pair of files seen at a handshake), the two
    // refused states, the completed one.
    let (_, _, body) = curl(agent.port, "/metrics", &["--cacert", &old_ca]);
    let count = |result: &str| {
        body.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "gopher_web_tls_reloads_total{{result=\"{result}\"}}"
                ))
            })
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(
        (count("ok"), count("error")),
        (Some(2.0), Some(2.0)),
        "{body}"
    );
}
