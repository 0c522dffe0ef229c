//! Rows on Kafka field by field, as the probes produced them: an extension probe's, tcp_link's
//! against real traffic, nginx_statistic's of a real nginx, and zstd-compressed ones.

use super::*;

/// An extension probe's rows arrive as flat JSON records, every value a string, exactly as
/// printed; empty values are sent as empty strings.
#[test]
fn extension_rows_arrive_field_by_field() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    let probe = ExtProbe::new(
        "while :; do\n  printf '|ext_demo|h1|80|web|n|42|1.5|\\n'\n  \
         printf '|ext_demo|h2||||7||\\n'\n  sleep 1\ndone",
    );
    let since = now_ms();
    let agent = Agent::start(&agent_config(&broker.addr(), &probe.config()));
    let consumer = Consumer::start(&broker, &[ROWS]);
    let got = consumer.wait_for(WAIT, "rows of h1 and h2", |m| {
        let r = rows(m, "ext_demo");
        ["h1", "h2"]
            .iter()
            .all(|h| r.iter().any(|x| x.get("host") == Some(&Value::from(*h))))
    });
    let expect: [(&str, [&str; 6]); 2] = [
        ("h1", ["h1", "80", "web", "n", "42", "1.5"]),
        ("h2", ["h2", "", "", "", "7", ""]),
    ];
    let r = rows(&got, "ext_demo");
    for (host, values) in expect {
        for row in r.iter().filter(|x| field(x, "host") == host) {
            check_envelope(row, "ext_demo", since);
            let keys: Vec<&str> = row.keys().map(String::as_str).collect();
            let mut want: Vec<&str> = ["timestamp", "hostname", "machine_id", "table_name"]
                .into_iter()
                .chain(EXT_FIELDS)
                .collect();
            want.sort_unstable();
            assert_eq!(keys, want, "{row:?}");
            for (name, value) in EXT_FIELDS.iter().zip(values) {
                assert_eq!(field(row, name), value, "{name} of {row:?}");
            }
        }
    }
    // Every message is a row of this table (no probe other than demo runs).
    assert!(got.iter().all(|m| m.json()["table_name"] == "ext_demo"));
    let c = counts(&agent.scrape().unwrap());
    assert!(c.delivered >= 2.0 && c.dropped_other == 0.0, "{c:?}");
}

/// tcp_link rows from a real loopback link with known byte counts, both ends.
#[test]
fn tcp_link_rows_match_real_traffic() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    let since = now_ms();
    let agent = Agent::start(&agent_config(
        &broker.addr(),
        "[[probes]]\nname = \"tcp\"\nswitch = \"on\"\ninterval = 1\n\
         params = { srtt_histogram = \"all\" }\n",
    ));
    agent.wait_for(WAIT, "tcp probe running", |s| {
        s.iter().any(|x| {
            x.name == "gopher_probe_state"
                && x.label("probe") == "tcp"
                && x.label("state") == "running"
                && x.value == 1.0
        })
    });
    let consumer = Consumer::start(&broker, &[ROWS]);

    let (c2s, s2c) = (5000usize, 3000usize);
    let mut server = Peer::spawn(
        &[],
        &[
            "server",
            "127.0.0.1",
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
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(&vec![b'x'; c2s]).unwrap();
    let mut buf = vec![0u8; s2c];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(server.line(), "done");
    let me = std::process::id().to_string();
    let (spid, scomm) = (server.pid().to_string(), server.comm());
    let my_comm = std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_owned();
    let port_s = port.to_string();
    let find = |m: &[Msg], role: &str, tx: usize, rx: usize, links: &str| {
        rows(m, "tcp_link").into_iter().rev().find(|x| {
            x.get("server_port") == Some(&Value::from(port_s.as_str()))
                && x.get("role") == Some(&Value::from(role))
                && x.get("tx_bytes") == Some(&Value::from(tx.to_string()))
                && x.get("rx_bytes") == Some(&Value::from(rx.to_string()))
                && x.get("link_count") == Some(&Value::from(links))
        })
    };
    let got = consumer.wait_for(WAIT, "both ends of the live link", |m| {
        find(m, "1", c2s, s2c, "1").is_some() && find(m, "0", s2c, c2s, "1").is_some()
    });
    let tcp_fields = [
        "tgid",
        "role",
        "client_ip",
        "server_ip",
        "server_port",
        "protocol",
        "netns",
        "process_name",
        "link_count",
        "rx_bytes",
        "tx_bytes",
        "packets_in",
        "packets_out",
        "retran_packets",
        "lost_packets",
        "rtt",
        "start_time",
        "send_rsts",
        "receive_rsts",
        "srtt",
        // Container and pod labels (empty here: both ends are host processes).
        "container_id",
        "container_name",
        "container_image",
        "pod_id",
        "pod",
        "pod_namespace",
    ];
    let netns = std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string();
    let netns = netns
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .to_owned();
    for (role, tgid, comm, tx, rx) in [
        ("1", me.as_str(), my_comm.as_str(), c2s, s2c),
        ("0", spid.as_str(), scomm.as_str(), s2c, c2s),
    ] {
        let row = find(&got, role, tx, rx, "1").unwrap();
        check_envelope(&row, "tcp_link", since);
        let mut want: Vec<&str> = ["timestamp", "hostname", "machine_id", "table_name"]
            .into_iter()
            .chain(tcp_fields)
            .collect();
        want.sort_unstable();
        assert_eq!(
            row.keys().map(String::as_str).collect::<Vec<_>>(),
            want,
            "{row:?}"
        );
        assert_eq!(field(&row, "tgid"), tgid, "{row:?}");
        assert_eq!(field(&row, "process_name"), comm, "{row:?}");
        for label in &tcp_fields[tcp_fields.len() - 6..] {
            assert_eq!(field(&row, label), "", "{label} of a host process: {row:?}");
        }
        assert_eq!(field(&row, "client_ip"), "127.0.0.1");
        assert_eq!(field(&row, "server_ip"), "127.0.0.1");
        assert_eq!(field(&row, "protocol"), "2");
        assert_eq!(field(&row, "netns"), netns);
        for counter in ["packets_in", "packets_out"] {
            let n: u64 = field(&row, counter).parse().unwrap();
            assert!(n >= 1, "{counter} of {row:?}");
        }
        for number in ["retran_packets", "lost_packets", "rtt"] {
            field(&row, number).parse::<f64>().unwrap();
        }
        assert_eq!(
            (field(&row, "send_rsts"), field(&row, "receive_rsts")),
            ("0", "0")
        );
        // The histogram's text form: cumulative `le=count` pairs, `+Inf=` the open connections
        // (a one-connection link carries it with `srtt_histogram = "all"` only).
        let srtt = field(&row, "srtt");
        assert!(
            srtt.starts_with("50=") && srtt.contains(" +Inf=1 sum="),
            "srtt {srtt:?}"
        );
        // When the link's counters started: after the agent did (this link is newer).
        let start: i64 = field(&row, "start_time").parse().unwrap();
        assert!(
            start >= since - 1000 && start <= now_ms(),
            "start_time {start} of {row:?}"
        );
    }

    // Closed: the last record of each end says link_count 0 with the same bytes, and equals
    // what /metrics shows for the link.
    drop(client);
    server.close();
    let got = consumer.wait_for(WAIT, "both ends closed", |m| {
        find(m, "1", c2s, s2c, "0").is_some() && find(m, "0", s2c, c2s, "0").is_some()
    });
    let samples = agent.scrape().unwrap();
    for role in ["0", "1"] {
        let row = rows(&got, "tcp_link")
            .into_iter()
            .rev()
            .find(|x| {
                x.get("server_port") == Some(&Value::from(port_s.as_str()))
                    && x.get("role") == Some(&Value::from(role))
            })
            .unwrap();
        for metric in [
            "rx_bytes",
            "tx_bytes",
            "packets_in",
            "packets_out",
            "link_count",
        ] {
            let sample = samples
                .iter()
                .find(|s| {
                    s.name
                        .strip_prefix("gala_gopher_tcp_link_")
                        .is_some_and(|n| n.trim_end_matches("_total") == metric)
                        && s.label("server_port") == port_s
                        && s.label("role") == role
                        && s.label("tgid") == field(&row, "tgid")
                })
                .unwrap_or_else(|| panic!("no {metric} on /metrics for role {role}"));
            assert_eq!(
                field(&row, metric).parse::<f64>().unwrap(),
                sample.value,
                "{metric} of role {role}: Kafka {row:?} vs /metrics"
            );
        }
    }
}

/// `compression_codec = "zstd"`: rows are produced zstd-compressed and the consumer reads them.
#[test]
fn zstd_compressed_rows_arrive() {
    let Some(bin) = kafka_available() else { return };
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    let (probe, agent) = counting_agent(&broker, "compression_codec = \"zstd\"", 1, false);
    let consumer = Consumer::start(&broker, &[ROWS, META_TOPIC]);
    let c = first_rows_settled(&agent, &probe, &consumer);
    assert!(c.delivered >= 3.0 && c.failed == 0.0, "{c:?}");
    for row in rows(&consumer.messages(), "ext_demo") {
        check_envelope(&row, "ext_demo", 0);
    }
}

/// nginx_statistic rows of a real nginx (HTTP and stream proxy, see `common::nginx`) arrive
/// with gala-gopher's envelope and exactly the fields gala-spider reads, every value a string.
#[test]
fn nginx_statistic_rows_arrive_field_by_field() {
    let Some(bin) = kafka_available() else { return };
    // Held to the end: the nginx, its backends and the lock against the other nginx tests.
    let Some(setup) = common::nginx::setup() else {
        return;
    };
    let (hb, sb, http, stream) = (&setup.hb, &setup.sb, setup.http, setup.stream);
    let mut broker = Broker::new(bin, free_port());
    broker.start();
    let since = now_ms();
    let agent = Agent::start(&agent_config(
        &broker.addr(),
        "[[probes]]\nname = \"nginx_link\"\nswitch = \"on\"\ninterval = 1\n",
    ));
    common::nginx::traced(&agent);
    let (a, b) = (
        std::net::Ipv4Addr::new(127, 1, 0, 4),
        std::net::Ipv4Addr::new(127, 1, 0, 5),
    );
    let _held = [
        common::nginx::http_session(a, http),
        common::nginx::http_session(a, http),
        common::nginx::stream_session(b, stream),
    ];
    common::nginx::wait_held(hb, sb, (2, 1));
    let want = [
        [
            "127.1.0.4",
            "127.0.0.1",
            &http.to_string(),
            "127.0.0.1",
            &hb.port.to_string(),
            "1",
            "2",
        ],
        [
            "127.1.0.5",
            "127.0.0.1",
            &stream.to_string(),
            "127.0.0.1",
            &sb.port.to_string(),
            "0",
            "1",
        ],
    ];
    let fields = common::nginx::FIELDS;
    let ours = |m: &[Msg]| -> Vec<BTreeMap<String, Value>> {
        rows(m, "nginx_statistic")
            .into_iter()
            .filter(|r| {
                want.iter()
                    .any(|w| r.get("virtual_port") == Some(&Value::from(w[2])))
            })
            .collect()
    };
    let got = Consumer::start(&broker, &[ROWS]).wait_for(WAIT, "both nginx rows", |m| {
        let r = ours(m);
        want.iter().all(|w| {
            r.iter().any(|x| {
                fields
                    .iter()
                    .zip(w)
                    .all(|(f, v)| x.get(*f) == Some(&Value::from(*v)))
            })
        })
    });
    for row in ours(&got) {
        check_envelope(&row, "nginx_statistic", since);
        let mut keys: Vec<&str> = row.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expect: Vec<&str> = ["timestamp", "hostname", "machine_id", "table_name"]
            .into_iter()
            .chain(fields)
            .collect();
        expect.sort_unstable();
        assert_eq!(keys, expect, "{row:?}");
    }
}
