//! End to end: the real agent's `endpoint` probe against a real listener that stops accepting,
//! in a network namespace of the test's own (so the namespace's kernel counters are the
//! listener's), checked exactly on /metrics through the reference Prometheus parser.
// Counters are compared exactly on purpose: they must be exact.
#![allow(clippy::float_cmp, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::fs::MetadataExt,
    process::{Command, Stdio},
    time::Duration,
};

use common::{Agent, Sample, is_root, require, sh, support};

const CONFIG: &str = r#"
[[probes]]
name = "endpoint"
switch = "on"
interval = 1
"#;

/// The `endpoint_tcp` fields of the one row whose labels match `want`.
fn row(samples: &[Sample], want: &[(&str, String)]) -> Option<BTreeMap<String, f64>> {
    table_row(samples, "endpoint_tcp", want)
}

/// The `endpoint_tcp` row of `want` once its `field` is `value` (within 20 s).
fn row_when(
    agent: &Agent,
    want: &[(&str, String)],
    field: &str,
    value: f64,
) -> BTreeMap<String, f64> {
    let what = format!("{field} = {value}");
    let samples = agent.wait_for(Duration::from_secs(20), &what, |s| {
        row(s, want).is_some_and(|r| r[field] == value)
    });
    row(&samples, want).unwrap()
}

/// The fields of the one row of `table` whose labels match `want`.
fn table_row(
    samples: &[Sample],
    table: &str,
    want: &[(&str, String)],
) -> Option<BTreeMap<String, f64>> {
    let prefix = format!("gala_gopher_{table}_");
    let mut fields = BTreeMap::new();
    for s in samples {
        let Some(field) = s.name.strip_prefix(&prefix) else {
            continue;
        };
        // endpoint_tcp_connect's fields also start with endpoint_tcp_.
        if table == "endpoint_tcp" && field.starts_with("connect_") {
            continue;
        }
        if want.iter().all(|(k, v)| s.label(k) == v) {
            let field = field.trim_end_matches("_total").to_owned();
            assert!(
                fields.insert(field, s.value).is_none(),
                "two rows match {want:?}"
            );
        }
    }
    (!fields.is_empty()).then_some(fields)
}

/// `TcpExt` counters of a namespace, from its own /proc/net/netstat.
fn tcp_ext(ns: &str) -> BTreeMap<String, f64> {
    ns_counters(ns, "/proc/net/netstat", "TcpExt:")
}

/// `Tcp:` counters (RFC 4022 MIB) of a namespace, from its own /proc/net/snmp.
fn tcp_mib(ns: &str) -> BTreeMap<String, f64> {
    ns_counters(ns, "/proc/net/snmp", "Tcp:")
}

/// The counters of the `prefix` lines (names, then values) of `file` as namespace `ns` sees it.
fn ns_counters(ns: &str, file: &str, prefix: &str) -> BTreeMap<String, f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", file])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .map(|(n, v)| (n.to_owned(), v.parse().unwrap()))
        .collect()
}

/// A namespace with only loopback, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("gopher-{tag}{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        Netns(name)
    }

    fn inode(&self) -> String {
        std::fs::metadata(format!("/run/netns/{}", self.0))
            .unwrap()
            .ino()
            .to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Namespaces `<tag>a` and `<tag>b` joined by a veth pair, `a` holding `<net>.1/24` and `b`
/// `<net>.2/24`; then `more` (with `{a}` and `{b}` the namespaces' names).
fn veth_pair(tag: &str, net: &str, more: &str) -> (Netns, Netns) {
    let (a, b) = (
        Netns::new(&format!("{tag}a")),
        Netns::new(&format!("{tag}b")),
    );
    let id = std::process::id() % 100_000;
    sh(&format!(
        "ip link add g{tag}a{id} netns {a} type veth peer name g{tag}b{id} netns {b} && \
         ip -n {a} addr add {net}.1/24 dev g{tag}a{id} && ip -n {b} addr add {net}.2/24 dev g{tag}b{id} && \
         ip -n {a} link set g{tag}a{id} up && ip -n {b} link set g{tag}b{id} up && {more}",
        a = a.0,
        b = b.0,
        more = more.replace("{a}", &a.0).replace("{b}", &b.0),
    ));
    (a, b)
}

/// `TcpExt` counters of `ns` once its listeners stopped retransmitting SYN-ACKs (they gave up
/// on their handshakes): counts that stay.
fn settled(ns: &str) -> BTreeMap<String, f64> {
    let mut kernel = tcp_ext(ns);
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = tcp_ext(ns);
        if now["TCPSynRetrans"] == kernel["TCPSynRetrans"] {
            return now;
        }
        kernel = now;
    }
}

/// `python3 <args>` run in `ns`, once it printed its first line (returned). It runs until its
/// stdin (returned) closes or it is killed.
fn python_in<S: AsRef<std::ffi::OsStr>>(
    ns: &str,
    args: &[S],
) -> (std::process::Child, std::process::ChildStdin, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, stdin, line.trim().to_owned())
}

/// The agent with the endpoint probe running, when the test can run (`needs` says what for).
fn endpoint_agent(needs: &str) -> Option<Agent> {
    if !require(is_root(), needs) {
        return None;
    }
    let agent = Agent::start(CONFIG);
    agent.wait_running(Duration::from_secs(20), "endpoint");
    Some(agent)
}

/// `backlog.py` in a namespace: a listener that never accepts, with clients of its own.
struct Backlog {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    out: BufReader<std::process::ChildStdout>,
    port: u16,
}

impl Backlog {
    fn spawn(ns: &str, args: &[&str]) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(support("backlog.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("ready ").unwrap().parse().unwrap();
        Backlog {
            child,
            stdin,
            out,
            port,
        }
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_listener_that_stops_accepting_shows_its_full_queue_and_exact_drops() {
    let Some(agent) = endpoint_agent("root (netns, sock_diag in other namespaces)") else {
        return;
    };
    let ns = Netns::new("ep");
    // Backlog 2: the kernel queues 3 handshakes (backlog + 1); the other 3 clients' SYNs are
    // dropped at the full queue, and again at each of their retries, until they close.
    let mut b = Backlog::spawn(&ns.0, &["2", "6"]);
    let (child, port) = (&mut b.child, b.port);
    let want = [
        ("tgid", child.id().to_string()),
        ("comm", "python3".to_owned()),
        ("s_addr", "127.0.0.1".to_owned()),
        ("s_port", port.to_string()),
        ("netns", ns.inode()),
    ];
    agent.wait_for(Duration::from_secs(20), "a full accept queue", |s| {
        row(s, &want).is_some_and(|r| {
            r["accept_queue"] == 3.0 && r["accept_queue_limit"] == 2.0 && r["sk_drops"] >= 3.0
        })
    });
    // The clients go: no SYN retries any more, so the kernel's count stops where it is.
    writeln!(b.stdin, "close").unwrap();
    let mut line = String::new();
    b.out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "closed");
    std::thread::sleep(Duration::from_millis(300));
    let kernel = tcp_ext(&ns.0);
    let drops = kernel["ListenDrops"];
    assert!(drops >= 3.0, "{kernel:?}");
    // Every drop here was an accept-queue overflow: sk_drops and ListenDrops agree.
    assert_eq!(kernel["ListenOverflows"], drops);
    let samples = agent.wait_for(Duration::from_secs(20), "exact drops", |s| {
        row(s, &want).is_some_and(|r| r["sk_drops"] == drops)
    });
    let r = row(&samples, &want).unwrap();
    assert_eq!((r["accept_queue"], r["accept_queue_limit"]), (3.0, 2.0));
    assert_eq!(tcp_ext(&ns.0)["ListenDrops"], drops, "the count moved on");
    // The three queued handshakes completed: three passive opens, the namespace's all. Every
    // drop was of a SYN (loopback completes a handshake inside connect()): none of a completed
    // handshake.
    assert_eq!(tcp_mib(&ns.0)["PassiveOpens"], 3.0);
    assert_eq!(
        (r["passive_open"], r["accept_overflow"]),
        (3.0, 0.0),
        "{r:?}"
    );
    // Every listen drop was a SYN refused at the full accept queue.
    assert_eq!(
        (r["listendrop"], r["syn_overflow"]),
        (drops, drops),
        "{r:?}"
    );
    // A SYN refused made no request socket: no handshake started, none failed.
    assert_eq!(r["passive_open_failed"], 0.0, "{r:?}");
    drop(b);
    // The listener is gone: so is its row.
    agent.wait_for(Duration::from_secs(20), "the row gone", |s| {
        row(s, &want).is_none()
    });
}

/// A client whose namespace drops every SYN-ACK: the listener retransmits its SYN-ACK (on its
/// timer and at each retransmitted SYN) until it gives up; the server's namespace holds no
/// client, so its `TCPSynRetrans` counts exactly those.
#[test]
fn synack_retransmissions_are_counted_per_listener_exactly() {
    let Some(agent) = endpoint_agent("root (netns, veth, nftables, eBPF)") else {
        return;
    };
    let (a, b) = veth_pair(
        "s",
        "10.214.0",
        "ip netns exec {a} sysctl -qw net.ipv4.tcp_synack_retries=1 && \
         ip netns exec {b} sysctl -qw net.ipv4.tcp_syn_retries=1",
    );
    sh(&format!(
        "ip netns exec {} nft -f - <<'EOF'\ntable inet gopher_test {{\n chain in {{\n  type filter hook input priority 0;\n  tcp flags & (syn | ack) == syn | ack drop\n }}\n}}\nEOF",
        b.0
    ));
    let server = Backlog::spawn(&a.0, &["16", "0", "10.214.0.1"]);
    let out = Command::new("ip")
        .args(["netns", "exec", &b.0, "python3", "-c"])
        .arg(format!(
            "import socket\ntry:\n socket.create_connection(('10.214.0.1', {}), timeout=10)\nexcept OSError as e:\n print(e.errno)",
            server.port
        ))
        .output()
        .unwrap();
    let errno = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(errno, "110", "the client's connect times out (ETIMEDOUT)");
    // The server gives up on the handshake after its last SYN-ACK.
    let kernel = settled(&a.0)["TCPSynRetrans"];
    assert!(kernel >= 1.0, "no SYN-ACK was retransmitted");
    let want = [
        ("tgid", server.child.id().to_string()),
        ("s_addr", "10.214.0.1".to_owned()),
        ("s_port", server.port.to_string()),
        ("netns", a.inode()),
    ];
    let samples = agent.wait_for(
        Duration::from_secs(20),
        "exact SYN-ACK retransmissions",
        |s| {
            row(s, &want)
                .is_some_and(|r| r["retran_synacks"] == kernel && r["passive_open_failed"] == 1.0)
        },
    );
    let r = row(&samples, &want).unwrap();
    // sk_drops also counts the retransmitted SYNs of the handshake in progress, which
    // TcpExtListenDrops does not: only no queue overflow is checked here.
    assert_eq!(r["accept_queue"], 0.0, "{r:?}");
    assert_eq!(tcp_ext(&a.0)["ListenOverflows"], 0.0);
}

/// One process in a namespace of its own: connects refused by a closed port, one timing out
/// against a blackholed address (nftables drops it; `tcp_syn_retries` 1 keeps it short), one
/// connection the server resets and one the client resets; exact counts per destination.
#[test]
fn connection_failures_by_reason_and_resets_are_counted_exactly() {
    let Some(agent) = endpoint_agent("root (netns, nftables, eBPF)") else {
        return;
    };
    let ns = Netns::new("cf");
    sh(&format!(
        "ip -n {n} addr add 10.215.0.1/24 dev lo && \
         ip netns exec {n} sysctl -qw net.ipv4.tcp_syn_retries=1",
        n = ns.0
    ));
    sh(&format!(
        "ip netns exec {} nft -f - <<'EOF'\ntable inet gopher_test {{\n chain pre {{\n  type filter hook prerouting priority 0;\n  ip daddr 10.215.0.2 drop\n }}\n}}\nEOF",
        ns.0
    ));
    let script = support("failures.py");
    let (mut child, stdin, line) = python_in(&ns.0, &[script.as_os_str(), "10.215.0.2".as_ref()]);
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"done"), "{line}");
    // ECONNREFUSED three times, ETIMEDOUT, then ECONNRESET at the client.
    assert_eq!(words[3], "111,111,111,110,104", "what the process saw");
    let (closed, server) = (words[1], words[2]);
    let key = |addr: &str, port: &str| {
        vec![
            ("tgid", child.id().to_string()),
            ("comm", "python3".to_owned()),
            ("d_addr", addr.to_owned()),
            ("d_port", port.to_owned()),
            ("netns", ns.inode()),
        ]
    };
    let expect = [
        (key("127.0.0.1", closed), [3.0, 3.0, 3.0, 0.0, 0.0, 0.0]),
        (key("10.215.0.2", "9"), [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]),
        (key("127.0.0.1", server), [2.0, 0.0, 0.0, 0.0, 1.0, 1.0]),
    ];
    let names = [
        "active_open",
        "active_open_failed",
        "connect_refused",
        "connect_timeout",
        "send_rsts",
        "receive_rsts",
    ];
    let got = |s: &[Sample], want: &[(&str, String)]| {
        table_row(s, "endpoint_tcp_connect", want).map(|r| names.map(|n| r[n]))
    };
    // Polled by hand so that a mismatch shows every row as it last was.
    let want: Vec<Option<[f64; 6]>> = expect.iter().map(|(_, v)| Some(*v)).collect();
    let mut rows = Vec::new();
    for _ in 0..80 {
        let s = agent.scrape().unwrap();
        rows = expect.iter().map(|(k, _)| got(&s, k)).collect();
        if rows == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(rows, want, "{names:?} per destination: {expect:?}");
    drop(stdin);
    let _ = child.wait();
    // The process is gone: so are its rows.
    agent.wait_for(Duration::from_secs(20), "its rows gone", |s| {
        expect.iter().all(|(k, _)| got(s, k).is_none())
    });
}

/// A server that accepts N connections on the wildcard address: N passive opens, exactly the
/// namespace's `PassiveOpens`.
#[test]
fn passive_opens_are_counted_exactly_per_listener() {
    let Some(agent) = endpoint_agent("root (netns, eBPF)") else {
        return;
    };
    let ns = Netns::new("po");
    let script = "import socket, sys\n\
        l = socket.socket(); l.bind(('0.0.0.0', 0)); l.listen(16)\n\
        port = l.getsockname()[1]\n\
        held = []\n\
        for _ in range(5):\n \
            c = socket.create_connection(('127.0.0.1', port)); s, _ = l.accept(); held += [c, s]\n\
        print(port, flush=True)\n\
        sys.stdin.read()\n";
    let (mut child, _stdin, port) = python_in(&ns.0, &["-c", script]);
    assert_eq!(tcp_mib(&ns.0)["PassiveOpens"], 5.0);
    let want = [
        ("tgid", child.id().to_string()),
        ("s_addr", "0.0.0.0".to_owned()),
        ("s_port", port),
        ("netns", ns.inode()),
    ];
    let samples = agent.wait_for(Duration::from_secs(20), "5 passive opens", |s| {
        row(s, &want).is_some_and(|r| r["passive_open"] == 5.0)
    });
    let r = row(&samples, &want).unwrap();
    assert_eq!((r["accept_overflow"], r["sk_drops"]), (0.0, 0.0), "{r:?}");
    assert_eq!((r["listendrop"], r["syn_overflow"]), (0.0, 0.0), "{r:?}");
    assert_eq!(
        r["passive_open_failed"], 0.0,
        "five handshakes, all completed: {r:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A handshake whose final ACK arrives when the accept queue is full: the server namespace
/// drops the ACKs of one client until a second client has filled the queue (backlog 0 holds
/// one connection), then lets them through; each ACK, answering a retransmitted SYN-ACK, is
/// refused at the full queue. Checked exactly against the namespace's `ListenOverflows`, with
/// no SYN refused (`sk_drops` counts each such ACK twice: once as a listen drop, once as a
/// segment discarded).
#[test]
fn accept_queue_overflows_are_counted_exactly_per_listener() {
    let Some(agent) = endpoint_agent("root (netns, veth, nftables, eBPF)") else {
        return;
    };
    let (a, b) = veth_pair(
        "o",
        "10.216.0",
        "ip -n {b} addr add 10.216.0.3/32 dev lo && \
         ip netns exec {a} sysctl -qw net.ipv4.tcp_synack_retries=2",
    );
    sh(&format!(
        "ip netns exec {} nft -f - <<'EOF'\ntable inet gopher_test {{\n chain in {{\n  type filter hook input priority 0;\n  ip saddr 10.216.0.3 tcp flags & (syn | ack) == ack drop\n }}\n}}\nEOF",
        a.0
    ));
    let server = Backlog::spawn(&a.0, &["0", "0", "10.216.0.1"]);
    let script = format!(
        "import socket, sys\n\
         late = socket.socket(); late.bind(('10.216.0.3', 0)); late.connect(('10.216.0.1', {p}))\n\
         first = socket.socket(); first.bind(('10.216.0.2', 0)); first.connect(('10.216.0.1', {p}))\n\
         print('connected', flush=True)\n\
         sys.stdin.read()\n",
        p = server.port
    );
    let (mut clients, _stdin, line) = python_in(&b.0, &["-c", &script]);
    assert_eq!(line, "connected");
    sh(&format!(
        "ip netns exec {} nft delete table inet gopher_test",
        a.0
    ));
    // The server retransmits its SYN-ACK until it gives up on the handshake.
    let kernel = settled(&a.0);
    let overflows = kernel["ListenOverflows"];
    assert!(overflows >= 1.0, "no ACK met the full queue: {kernel:?}");
    assert_eq!(kernel["ListenDrops"], overflows, "{kernel:?}");
    assert_eq!(tcp_mib(&a.0)["PassiveOpens"], 1.0);
    let want = [
        ("tgid", server.child.id().to_string()),
        ("s_addr", "10.216.0.1".to_owned()),
        ("s_port", server.port.to_string()),
        ("netns", a.inode()),
    ];
    let samples = agent.wait_for(Duration::from_secs(20), "exact accept overflows", |s| {
        row(s, &want).is_some_and(|r| r["accept_overflow"] == overflows)
    });
    let r = row(&samples, &want).unwrap();
    assert_eq!(r["passive_open"], 1.0, "{r:?}");
    assert_eq!(r["accept_queue"], 1.0, "{r:?}");
    assert_eq!(r["sk_drops"], 2.0 * overflows, "{r:?}");
    // One listen drop per overflowed ACK, the namespace's all; no SYN refused.
    assert_eq!(
        (r["listendrop"], r["syn_overflow"]),
        (overflows, 0.0),
        "{r:?}"
    );
    // The late handshake never got into the queue: the server gave up on it.
    let r = row_when(&agent, &want, "passive_open_failed", 1.0);
    assert_eq!(r["passive_open"], 1.0, "{r:?}");
    let _ = clients.kill();
    let _ = clients.wait();
}

/// A listener (backlog 1) whose clients' final ACKs the server's namespace drops: its SYN queue
/// holds backlog + 1 handshakes that never complete, and, without SYN cookies, every later SYN
/// (and each retry) is refused at the full SYN queue: `listendrop` and `syn_overflow` are the
/// namespace's `ListenDrops` (and `TCPReqQFullDrop`) exactly, with no `ListenOverflows`. With
/// SYN cookies the same SYNs are answered with a cookie: nothing is refused or counted. Either
/// way the two queued handshakes run out of SYN-ACK retries: two `passive_open_failed`.
#[test]
fn syns_refused_at_a_full_syn_queue_are_counted_exactly_with_and_without_syncookies() {
    let Some(agent) = endpoint_agent("root (netns, veth, nftables, eBPF)") else {
        return;
    };
    for (cookies, net) in [(0, "10.217.0"), (1, "10.218.0")] {
        let (a, b) = veth_pair(
            &format!("q{cookies}"),
            net,
            &format!(
                "ip netns exec {{a}} sysctl -qw net.ipv4.tcp_synack_retries=1 \
                 net.ipv4.tcp_syncookies={cookies} && \
                 ip netns exec {{b}} sysctl -qw net.ipv4.tcp_syn_retries=1"
            ),
        );
        sh(&format!(
            "ip netns exec {} nft -f - <<'EOF'\ntable inet gopher_test {{\n chain in {{\n  type filter hook input priority 0;\n  ip saddr {net}.2 tcp flags & (syn | ack) == ack drop\n }}\n}}\nEOF",
            a.0
        ));
        let server = Backlog::spawn(&a.0, &["1", "0", &format!("{net}.1")]);
        // Six clients at once; each connect() ends (or times out) before the script prints.
        let script = format!(
            "import socket, select\n\
             cs = []\n\
             for _ in range(6):\n \
                 c = socket.socket(); c.setblocking(False); c.connect_ex(('{net}.1', {p})); cs.append(c)\n\
             for c in cs:\n \
                 select.select([], [c], [], 10)\n\
             print(','.join(str(c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)) for c in cs))\n",
            p = server.port
        );
        let out = Command::new("ip")
            .args(["netns", "exec", &b.0, "python3", "-c", &script])
            .output()
            .unwrap();
        let errors = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let kernel = settled(&a.0);
        let drops = kernel["ListenDrops"];
        if cookies == 0 {
            // Two handshakes in the SYN queue (their clients think they connected), four
            // refused until their clients gave up.
            assert_eq!(errors, "0,0,110,110,110,110", "what the clients saw");
            assert!(drops >= 4.0, "{kernel:?}");
            assert_eq!(kernel["TCPReqQFullDrop"], drops, "{kernel:?}");
        } else {
            assert_eq!(errors, "0,0,0,0,0,0", "what the clients saw");
            assert_eq!(drops, 0.0, "{kernel:?}");
            assert_eq!(kernel["TCPReqQFullDoCookies"], 4.0, "{kernel:?}");
        }
        assert_eq!(kernel["ListenOverflows"], 0.0, "{kernel:?}");
        assert_eq!(tcp_mib(&a.0)["PassiveOpens"], 0.0);
        let want = [
            ("tgid", server.child.id().to_string()),
            ("s_addr", format!("{net}.1")),
            ("s_port", server.port.to_string()),
            ("netns", a.inode()),
        ];
        let samples = agent.wait_for(Duration::from_secs(20), "exact listen drops", |s| {
            row(s, &want).is_some_and(|r| r["listendrop"] == drops && r["sk_drops"] == drops)
        });
        let r = row(&samples, &want).unwrap();
        assert_eq!(
            (r["syn_overflow"], r["accept_overflow"], r["passive_open"]),
            (drops, 0.0, 0.0),
            "cookies {cookies}: {r:?}"
        );
        // The two queued handshakes ran out of SYN-ACK retries (their clients' final ACKs
        // never arrived); handshakes answered with a cookie have no request socket to fail.
        let r = row_when(&agent, &want, "passive_open_failed", 2.0);
        assert_eq!(r["passive_open"], 0.0, "cookies {cookies}: {r:?}");
        assert_eq!(tcp_ext(&a.0)["ListenDrops"], drops, "the count moved on");
    }
}
