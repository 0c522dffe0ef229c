//! Kafka over TLS: a verified broker gets the rows, a wrong CA gets nothing and is counted.
//! tansu has no TLS listener: a TLS-terminating proxy, support/tls_proxy.py, stands in front of
//! it, and the broker advertises the proxy, so every connection a client makes after the
//! bootstrap goes through TLS too.

use super::*;

/// A test CA, a server certificate for localhost/127.0.0.1 signed by it, and an unrelated
/// ("rogue") CA, as PEM files in a temporary directory (`common::pki`'s, written out).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let certs = common::pki::pki();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        for (name, text) in [
            ("ca.pem", &certs.ca),
            ("rogue-ca.pem", &certs.rogue_ca),
            ("server.pem", &certs.server.0),
            ("server.key", &certs.server.1),
        ] {
            common::pki::write(pki.dir.path(), name, text);
        }
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `support/tls_proxy.py` on `port`, terminating TLS with the [`Pki`] server certificate and
/// forwarding to `upstream` in plain TCP.
struct TlsProxy {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl TlsProxy {
    fn start(port: u16, upstream: &str, pki: &Pki) -> TlsProxy {
        let mut child = Command::new("python3")
            .arg(support("tls_proxy.py"))
            .arg(port.to_string())
            .arg(upstream)
            .arg(pki.path("server.pem"))
            .arg(pki.path("server.key"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening", "tls_proxy.py did not start");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let err = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in err.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        TlsProxy { child, log }
    }

    /// Connections whose TLS handshake succeeded so far.
    fn handshakes(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == "tls ok")
            .count()
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker behind a TLS proxy: tansu on a plain loopback port advertising the proxy's port;
/// clients bootstrap with [`TlsBroker::addr`].
struct TlsBroker {
    pki: Pki,
    proxy: TlsProxy,
    proxy_port: u16,
    _broker: Broker,
}

impl TlsBroker {
    fn start(bin: PathBuf) -> TlsBroker {
        let pki = Pki::new();
        let proxy_port = free_port();
        let mut broker = Broker::new(bin, free_port());
        broker.advertised = Some(format!("tcp://localhost:{proxy_port}"));
        broker.start();
        let proxy = TlsProxy::start(proxy_port, &broker.addr(), &pki);
        TlsBroker {
            pki,
            proxy,
            proxy_port,
            _broker: broker,
        }
    }

    fn addr(&self) -> String {
        format!("localhost:{}", self.proxy_port)
    }

    /// `[kafka]` lines: TLS trusting the CA file `ca` (a [`Pki`] file name), and `more`.
    fn kafka(&self, ca: &str, more: &str) -> String {
        format!(
            "{more}\n[kafka.properties]\n\"security.protocol\" = \"ssl\"\n\
             \"ssl.ca.location\" = \"{}\"\n",
            self.pki.path(ca).display()
        )
    }
}

/// `security.protocol = "ssl"` with the broker's CA: rows are delivered over TLS (the only
/// way to the broker the agent is given, and the one the broker advertises), a TLS consumer
/// reads them, and the counters balance.
#[test]
fn tls_delivers_rows_to_a_verified_broker() {
    let Some(bin) = kafka_available() else { return };
    let tls = TlsBroker::start(bin);
    let probe = ExtProbe::counting();
    let since = now_ms();
    let agent = Agent::start(&agent_config_with(
        &tls.addr(),
        &tls.kafka("ca.pem", ""),
        1,
        &probe.config(),
    ));
    let consumer = Consumer::start_at(
        &tls.addr(),
        &[ROWS, META_TOPIC],
        Some(&tls.pki.path("ca.pem")),
    );
    let c = first_rows_settled(&agent, &probe, &consumer);
    assert!(c.delivered >= 3.0 && c.failed == 0.0, "{c:?}");
    let msgs = consumer.messages();
    for row in rows(&msgs, "ext_demo") {
        check_envelope(&row, "ext_demo", since);
        assert_eq!(field(&row, "host"), "h1");
    }
    assert!(
        msgs.iter()
            .any(|m| m.topic == META_TOPIC && meta_table(&m.json()) == "ext_demo"),
        "no metadata for ext_demo"
    );
    // Agent and consumer each: the bootstrap connection and the advertised broker's.
    assert!(tls.proxy.handshakes() >= 2, "{:?}", tls.proxy.log);
}

/// A CA that did not sign the broker's certificate: the handshake fails, nothing is
/// delivered, the messages stay queued and then fail by timeout (counted); the agent keeps
/// running and serving /metrics.
#[test]
fn tls_with_the_wrong_ca_delivers_nothing_and_counts_it() {
    let Some(bin) = kafka_available() else { return };
    let tls = TlsBroker::start(bin);
    let probe = ExtProbe::counting();
    probe.set_go(true);
    let mut agent = Agent::start(&agent_config_with(
        &tls.addr(),
        &tls.kafka("rogue-ca.pem", "message_timeout_ms = 3000"),
        1,
        &probe.config(),
    ));
    // (Balanced: every message queued is failed or still queued.) Balanced is only exact at a
    // scrape with no timeout between the queue gauge's sample and the counters (see `balanced`),
    // and here messages time out every second: on a loaded machine such a scrape can take
    // longer to come than `WAIT`.
    let s = agent.wait_for(WAIT * 3, "messages failed by timeout", |s| {
        by_reason(s, "gopher_kafka_failed_total", "timeout") >= 3.0 && counts(s).balanced()
    });
    let c = counts(&s);
    assert_eq!(c.delivered, 0.0, "{c:?}");
    assert_eq!(
        c.failed,
        by_reason(&s, "gopher_kafka_failed_total", "timeout")
    );
    assert_eq!(tls.proxy.handshakes(), 0, "{:?}", tls.proxy.log);
    // Still running, still serving, still trying.
    std::thread::sleep(Duration::from_secs(2));
    let later = counts(&agent.scrape().unwrap());
    assert!(
        later.queued > c.queued && later.delivered == 0.0,
        "{later:?}"
    );
    let (status, _) = agent.terminate(Duration::from_secs(30));
    assert!(status.expect("no exit after SIGTERM").success());
}
