//! The load-balancer link probes (`haproxy_link`, `lvs_link`, `dnsmasq_link`) against a real
//! haproxy, a real nftables DNAT rule and a real dnsmasq, all started by the test in network
//! namespaces of its own:
//!
//! ```text
//!   clients netns (10.N.1.2, 10.N.1.3) ── proxy netns (10.N.1.1 | 10.N.2.1) ── servers netns (10.N.2.2, 10.N.2.3)
//!                                         haproxy, dnsmasq, nft DNAT 10.N.3.100:80
//! ```
//!
//! Every client address holds its own number of sessions; the rows on /metrics (read by the
//! reference parser) are checked field by field against what the backends saw (each accepted
//! connection's peer and local address) and against the clients' own counts, then sessions are
//! closed and `link_count` must go down (rows of finished links vanish). The agent runs in the
//! host namespace; `switch = "auto"` start checks start the probes. The same rows are checked on
//! Kafka (a real broker) and in gala-gopher naming, with promtool on both (`common::outputs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    clippy::float_cmp
)]

mod common;

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use common::{Agent, Peer, Sample, have, is_root, outputs::Outputs, require};

const WAIT: Duration = Duration::from_secs(30);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Three namespaces (clients, proxy, servers) wired as in the module doc; removed on drop.
struct Net {
    ns: [String; 3],
    /// Second octet of every address: unique per test and process.
    n: u32,
}

const C: usize = 0;
const R: usize = 1;
const S: usize = 2;

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    fn new() -> Net {
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        let n = 100 + (std::process::id() * 3 + seq) % 150;
        let tag = format!("{}{seq}", std::process::id());
        let ns = [
            format!("lbc{tag}"),
            format!("lbr{tag}"),
            format!("lbs{tag}"),
        ];
        for name in &ns {
            run(&["ip", "netns", "add", name]);
        }
        let net = Net { ns, n };
        let (cli, rtr, srv) = (&net.ns[C], &net.ns[R], &net.ns[S]);
        run(&[
            "ip", "-n", cli, "link", "add", "c0", "type", "veth", "peer", "name", "r0", "netns",
            rtr,
        ]);
        run(&[
            "ip", "-n", rtr, "link", "add", "r1", "type", "veth", "peer", "name", "s0", "netns",
            srv,
        ]);
        for (ns, dev, addrs) in [
            (cli, "c0", vec![net.ip(1, 2), net.ip(1, 3), net.ip(1, 4)]),
            (rtr, "r0", vec![net.ip(1, 1)]),
            (rtr, "r1", vec![net.ip(2, 1)]),
            (srv, "s0", vec![net.ip(2, 2), net.ip(2, 3)]),
        ] {
            for addr in addrs {
                run(&[
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    dev,
                ]);
            }
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        run(&[
            "ip",
            "-n",
            cli,
            "route",
            "add",
            "default",
            "via",
            &net.ip(1, 1),
        ]);
        run(&[
            "ip",
            "-n",
            srv,
            "route",
            "add",
            "default",
            "via",
            &net.ip(2, 1),
        ]);
        net.exec(R, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        net
    }

    fn ip(&self, sub: u32, host: u32) -> String {
        format!("10.{}.{sub}.{host}", self.n)
    }

    fn exec(&self, ns: usize, cmd: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.ns[ns]];
        full.extend_from_slice(cmd);
        run(&full);
    }

    /// A server (haproxy, dnsmasq) in the foreground in namespace `ns`: `ip netns exec` execs
    /// it, so the child's pid is the server's. Killed on drop.
    fn spawn(&self, ns: usize, cmd: &[&str]) -> Server {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns[ns]])
            .args(cmd)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Server(child)
    }

    /// An lb_peer.py process in namespace `ns`, once it printed its first line.
    fn peer(&self, ns: usize, args: &[&str]) -> (Peer, String) {
        let prefix = ["ip", "netns", "exec", &self.ns[ns]];
        let mut p = Peer::spawn_script(&prefix, "lb_peer.py", args);
        let first = p.line();
        (p, first)
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn can_run() -> bool {
    require(is_root(), "root (network namespaces, conntrack)")
        && require(
            have("nft", &["--version"]),
            "nft (apt-get install nftables)",
        )
}

/// The `link_count` samples of `table` whose `label` is one of `ours`, keyed by `keys`.
fn rows(
    s: &[Sample],
    table: &str,
    label: &str,
    ours: &[String],
    keys: &[&str],
) -> BTreeMap<Vec<String>, f64> {
    let name = format!("gala_gopher_{table}_link_count");
    s.iter()
        .filter(|x| x.name == name && ours.iter().any(|o| o == x.label(label)))
        .map(|x| {
            (
                keys.iter().map(|k| x.label(k).to_owned()).collect(),
                x.value,
            )
        })
        .collect()
}

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

const HAPROXY_KEYS: [&str; 7] = [
    "client_ip",
    "virtual_ip",
    "virtual_port",
    "server_ip",
    "server_port",
    "protocol",
    "mode",
];

#[test]
fn haproxy_link_counts_tcp_and_http_sessions_per_client_and_server() {
    if !can_run()
        || !require(
            have("haproxy", &["-v"]),
            "haproxy (apt-get install haproxy)",
        )
    {
        return;
    }
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let (vip, srv) = (net.ip(1, 1), net.ip(2, 2));
    let (mut backend, ready) = net.peer(S, &["backend", &srv, "9001", &srv, "9002"]);
    assert_eq!(ready, "ready");
    let sock = dir.path().join("admin.sock");
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  stats socket {} mode 600 level admin\n\
             defaults\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
             frontend ft\n  mode tcp\n  bind {vip}:8001\n  default_backend bt\n\
             backend bt\n  mode tcp\n  server s1 {srv}:9001\n\
             frontend fh\n  mode http\n  bind {vip}:8002\n  default_backend bh\n\
             backend bh\n  mode http\n  server h1 {srv}:9002\n",
            sock.display()
        ),
    )
    .unwrap();
    // In the foreground: its pid is the child's; killed with it.
    let _haproxy = net.spawn(R, &["haproxy", "-db", "-f", cfg.to_str().unwrap()]);
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Outputs::start(
        "[supervision]\nstart_check_interval = 1\n\
         [[probes]]\nname = \"haproxy_link\"\nswitch = \"auto\"\ninterval = 1\n",
    );
    let agent = &out.agent;
    agent.wait_running(WAIT, "haproxy_link");
    let (a, b) = (net.ip(1, 2), net.ip(1, 3));
    let (mut a_tcp, r1) = net.peer(C, &["clients", &a, &vip, "8001", "3", "tcp"]);
    let (mut b_tcp, r2) = net.peer(C, &["clients", &b, &vip, "8001", "1", "tcp"]);
    let (mut a_http, r3) = net.peer(C, &["clients", &a, &vip, "8002", "2", "http"]);
    assert_eq!([r1, r2, r3], ["ready", "ready", "ready"]);
    let ours = [vip.clone()];
    let expect = BTreeMap::from([
        (key(&[&a, &vip, "8001", &srv, "9001", "0", "tcp"]), 3.0),
        (key(&[&b, &vip, "8001", &srv, "9001", "0", "tcp"]), 1.0),
        (key(&[&a, &vip, "8002", &srv, "9002", "1", "http"]), 2.0),
    ]);
    agent.wait_for(WAIT, "haproxy_link rows of every client", |s| {
        rows(s, "haproxy_link", "virtual_ip", &ours, &HAPROXY_KEYS) == expect
    });
    out.check("haproxy_link", &HAPROXY_KEYS, &vip, &expect);
    // Going down: a's tcp sessions end; its row vanishes, the others stay as they were.
    a_tcp.close();
    let expect = BTreeMap::from([
        (key(&[&b, &vip, "8001", &srv, "9001", "0", "tcp"]), 1.0),
        (key(&[&a, &vip, "8002", &srv, "9002", "1", "http"]), 2.0),
    ]);
    agent.wait_for(WAIT, "a's tcp row gone", |s| {
        rows(s, "haproxy_link", "virtual_ip", &ours, &HAPROXY_KEYS) == expect
    });
    // A closed HTTP client's request still waits for its server (no abortonclose): the stream
    // is live until the backend goes away.
    a_http.close();
    b_tcp.close();
    let _ = backend.child.kill();
    let _ = backend.child.wait();
    agent.wait_for(WAIT, "no haproxy_link rows left", |s| {
        rows(s, "haproxy_link", "virtual_ip", &ours, &HAPROXY_KEYS).is_empty()
    });
}

const LVS_KEYS: [&str; 7] = [
    "client_ip",
    "virtual_ip",
    "virtual_port",
    "local_ip",
    "server_ip",
    "server_port",
    "protocol",
];

/// The config running `lvs_link` every second over the proxy namespace.
fn lvs_config(net: &Net, sections: &str, switch: &str) -> String {
    let ns_file = format!("/run/netns/{}", net.ns[R]);
    format!(
        "{sections}[[probes]]\nname = \"lvs_link\"\nswitch = \"{switch}\"\ninterval = 1\n\
         [probes.params]\nnamespaces = [\"{ns_file}\"]\n"
    )
}

/// An agent running [`lvs_config`], once the probe runs.
fn lvs_agent(net: &Net, sections: &str, switch: &str) -> Agent {
    let agent = Agent::start(&lvs_config(net, sections, switch));
    agent.wait_running(WAIT, "lvs_link");
    agent
}

#[test]
fn lvs_link_counts_dnat_flows_per_client_and_backend() {
    if !can_run() {
        return;
    }
    let net = Net::new();
    let (s1, s2, vip) = (net.ip(2, 2), net.ip(2, 3), net.ip(3, 100));
    let (mut backend, ready) = net.peer(S, &["backend", &s1, "9003", &s2, "9003"]);
    assert_eq!(ready, "ready");
    // Round robin over two backends, as kube-proxy's iptables mode spreads a service.
    let rules = format!(
        "table ip lbtest {{ chain pre {{ type nat hook prerouting priority dstnat; \
         ip daddr {vip} tcp dport 80 dnat to numgen inc mod 2 map {{ 0 : {s1}, 1 : {s2} }}:9003; }}; }}"
    );
    net.exec(R, &["nft", &rules]);
    let out = Outputs::start(&lvs_config(
        &net,
        "[supervision]\nstart_check_interval = 1\n",
        "auto",
    ));
    let agent = &out.agent;
    agent.wait_running(WAIT, "lvs_link");
    let (a, b) = (net.ip(1, 2), net.ip(1, 3));
    let (mut a_c, r1) = net.peer(C, &["clients", &a, &vip, "80", "4", "tcp"]);
    let (mut b_c, r2) = net.peer(C, &["clients", &b, &vip, "80", "1", "tcp"]);
    assert_eq!([r1, r2], ["ready", "ready"]);
    // What the backends saw: one line per accepted connection (peer, local address, port).
    let mut expect: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    for _ in 0..5 {
        let l = backend.line();
        let w: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(w[0], "conn", "{l}");
        *expect
            .entry(key(&[w[1], &vip, "80", w[1], w[2], w[3], "6"]))
            .or_default() += 1.0;
    }
    assert_eq!(
        expect.len(),
        3,
        "a's 4 flows over both backends, b's on one: {expect:?}"
    );
    let ours = [vip.clone()];
    agent.wait_for(WAIT, "lvs_link rows as the backends saw them", |s| {
        rows(s, "lvs_link", "virtual_ip", &ours, &LVS_KEYS) == expect
    });
    out.check("lvs_link", &LVS_KEYS, &vip, &expect);
    // Going down: a's flows close (conntrack moves them to TIME_WAIT/CLOSE: not live).
    a_c.close();
    expect.retain(|k, _| k[0] == b);
    agent.wait_for(WAIT, "a's lvs rows gone", |s| {
        rows(s, "lvs_link", "virtual_ip", &ours, &LVS_KEYS) == expect
    });
    b_c.close();
    agent.wait_for(WAIT, "no lvs rows left", |s| {
        rows(s, "lvs_link", "virtual_ip", &ours, &LVS_KEYS).is_empty()
    });
}

#[test]
fn dnsmasq_link_counts_answered_clients() {
    if !can_run()
        || !require(
            have("dnsmasq", &["--version"]),
            "dnsmasq (apt-get install dnsmasq-base)",
        )
    {
        return;
    }
    let net = Net::new();
    let dns = net.ip(1, 1);
    // conntrack tracks a namespace once a rule there uses it (as on any Docker/Kubernetes
    // node); a short UDP timeout lets the rows go down within the test.
    net.exec(R, &["nft", "table inet lbtrack { chain in { type filter hook input priority 0; ct state established,related accept; }; }"]);
    net.exec(
        R,
        &["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=12"],
    );
    let dnsmasq = net.spawn(
        R,
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={dns}"),
            "--address=/lb.test/10.9.9.9",
            "--pid-file=",
            "--log-facility=-",
        ],
    );
    let dnsmasq_pid = dnsmasq.0.id();
    let out = Outputs::start(
        "[supervision]\nstart_check_interval = 1\n\
         [[probes]]\nname = \"dnsmasq_link\"\nswitch = \"auto\"\ninterval = 1\n",
    );
    let agent = &out.agent;
    agent.wait_running(WAIT, "dnsmasq_link");
    let (a, b) = (net.ip(1, 2), net.ip(1, 3));
    // A datagram dnsmasq drops unanswered (shorter than a DNS header), from a third client:
    // its conntrack entry never sees a reply and must not count.
    let garbage = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{}', 0))\ns.sendto(b'xyz', ('{dns}', 53))\n",
        net.ip(1, 4)
    );
    net.exec(C, &["python3", "-c", &garbage]);
    let (_q, answer) = net.peer(C, &["dns", &a, &dns, "www.lb.test", "3"]);
    assert_eq!(answer, "answered 10.9.9.9");
    let (_q, answer) = net.peer(C, &["dns", &b, &dns, "www.lb.test", "1"]);
    assert_eq!(answer, "answered 10.9.9.9");
    // `ip netns exec` execs dnsmasq: the child's pid is dnsmasq's.
    let pid = dnsmasq_pid.to_string();
    let keys = ["client_ip", "virtual_ip", "family", "pid", "process_comm"];
    let ours = [dns.clone()];
    let expect = BTreeMap::from([
        (key(&[&a, &dns, "2", &pid, "dnsmasq"]), 3.0),
        (key(&[&b, &dns, "2", &pid, "dnsmasq"]), 1.0),
    ]);
    agent.wait_for(WAIT, "dnsmasq_link rows of both clients", |s| {
        rows(s, "dnsmasq_link", "virtual_ip", &ours, &keys) == expect
    });
    // Up: two more queries from b.
    let (_q, answer) = net.peer(C, &["dns", &b, &dns, "www.lb.test", "2"]);
    assert_eq!(answer, "answered 10.9.9.9");
    agent.wait_for(WAIT, "b's count up to 3", |s| {
        rows(s, "dnsmasq_link", "virtual_ip", &ours, &keys)
            .get(&key(&[&b, &dns, "2", &pid, "dnsmasq"]))
            == Some(&3.0)
    });
    // Kafka keeps the rows of the first intervals: checked now, after the timed step above.
    out.check("dnsmasq_link", &keys, &dns, &expect);
    // Down: the entries time out (12 s) and the rows vanish.
    agent.wait_for(WAIT, "dnsmasq rows gone after the UDP timeout", |s| {
        rows(s, "dnsmasq_link", "virtual_ip", &ours, &keys).is_empty()
    });
    drop(dnsmasq);
}

/// Conntrack entries of [`lvs_link_snapshot_cost`].
const FLOWS: u32 = 20_000;

/// CPU the agent spends on `lvs_link` snapshots of a 20 000-entry conntrack table (UDP flows
/// through the DNAT rule, kept by a long UDP timeout), against the same agent idle: the cost
/// per interval on a busy node. A measurement, not a check (release agent, quiet machine):
/// `cargo test --release -p gopher --test lb_links -- --ignored --nocapture lvs_link_snapshot_cost`.
#[test]
#[ignore = "measurement (quiet machine): see the doc comment"]
fn lvs_link_snapshot_cost() {
    if !can_run() {
        return;
    }
    let net = Net::new();
    let (srv, vip) = (net.ip(2, 2), net.ip(3, 100));
    net.exec(
        R,
        &[
            "sysctl",
            "-qw",
            "net.netfilter.nf_conntrack_udp_timeout=600",
        ],
    );
    net.exec(
        R,
        &["sysctl", "-qw", "net.netfilter.nf_conntrack_max=262144"],
    );
    let rules = format!(
        "table ip lbcost {{ chain pre {{ type nat hook prerouting priority dstnat; \
         ip daddr {vip} udp dport 5000 dnat to {srv}:5000; }}; }}"
    );
    net.exec(R, &["nft", &rules]);
    // No port-unreachable answers (they would end the flows): the backend drops silently.
    net.exec(
        S,
        &["nft", "table ip lbdrop { chain in { type filter hook input priority 0; udp dport 5000 drop; }; }"],
    );
    let agent = lvs_agent(&net, "[imdb]\nmax_records_num = 100000\n", "on");
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", agent.pid())).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // utime and stime (fields 14 and 15), clock ticks.
        f[11] + f[12]
    };
    let secs = 20;
    let idle0 = cpu();
    std::thread::sleep(Duration::from_secs(secs));
    let idle = cpu() - idle0;
    // Distinct source ports (bind to port 0 would reuse some: equal tuples are one entry).
    let script = format!(
        "import socket\nfor i in range({FLOWS}):\n s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n \
         s.bind(('{}', 20000 + i))\n s.sendto(b'x', ('{vip}', 5000))\n s.close()\n",
        net.ip(1, 2)
    );
    net.exec(C, &["python3", "-c", &script]);
    let ours = [vip.clone()];
    let counted = |s: &[Sample]| {
        rows(s, "lvs_link", "virtual_ip", &ours, &LVS_KEYS)
            .values()
            .sum::<f64>()
    };
    let seen = std::cell::Cell::new(0.0);
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        agent.wait_for(Duration::from_mins(1), "every flow counted", |s| {
            seen.set(counted(s));
            seen.get() == f64::from(FLOWS)
        })
    }));
    assert!(ok.is_ok(), "counted {} of {FLOWS} flows", seen.get());
    let busy0 = cpu();
    std::thread::sleep(Duration::from_secs(secs));
    let busy = cpu() - busy0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let per = |ticks: u64| ticks as f64 / hz * 1000.0 / secs as f64;
    let snapshot = per(busy) - per(idle);
    println!(
        "lvs_link, 1 s interval: agent CPU {:.1} ms/s idle, {:.1} ms/s with {FLOWS} DNAT entries \
         (≈ {snapshot:.1} ms per snapshot of {FLOWS} entries, {:.2} µs per entry)",
        per(idle),
        per(busy),
        snapshot * 1000.0 / f64::from(FLOWS)
    );
}
