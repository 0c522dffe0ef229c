//! Standalone: the probe scripts against real services (each read checked against the
//! test's own read of the service), and their lifecycle: target restarts, SIGTERM, a closed
//! stdout.

use super::*;

#[test]
fn nginx_probe_matches_stub_status() {
    if !require(have("nginx"), "nginx (apt-get install nginx)") {
        return;
    }
    let meta = meta_of("nginx.meta.toml");
    let nginx = start_nginx();
    let port = nginx.port;
    for _ in 0..5 {
        assert!(http_get(port, "/").unwrap().ends_with("ok\n"));
    }
    let url = format!("http://127.0.0.1:{port}/nginx_status");
    // Independent read, the probe's read, independent read: one request and one connection
    // each, one at a time, so the probe's numbers sit exactly between the test's.
    let before = stub_status(port);
    let lines = probe_once("nginx_probe.py", &["--url", &url]);
    let after = stub_status(port);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let row = parse_row(&lines[0], &meta);
    assert_eq!(row["server"], format!("127.0.0.1:{port}"));
    assert_eq!(num(&row, "up"), 1.0);
    let fields = [
        "active_connections",
        "accepts",
        "handled",
        "requests",
        "reading",
        "writing",
        "waiting",
    ];
    for (i, f) in fields.iter().enumerate() {
        let (b, p, a) = (before[i], num(&row, f), after[i]);
        if meta.fields[meta.field_index(f).unwrap()].ty == FieldType::Counter {
            assert_eq!(
                (b + 1.0, p + 1.0),
                (p, a),
                "{f}: before {b}, probe {p}, after {a}"
            );
        } else {
            // Each read sees only its own connection, busy writing the page.
            assert_eq!((b, p), (p, a), "{f}");
        }
    }
    assert_eq!(
        before[3], 7.0,
        "5 requests, this read and nginx's own count"
    );

    // The redis probe pointed at nginx: not RESP, so up = 0, and the probe carries on.
    let lines = probe_once("redis_probe.py", &["--addr", &format!("127.0.0.1:{port}")]);
    assert_eq!(
        num(&parse_row(&lines[0], &meta_of("redis.meta.toml")), "up"),
        0.0
    );

    // A page that is not stub_status and a port nobody listens on: up = 0, no values.
    let lines = probe_once(
        "nginx_probe.py",
        &[
            "--url",
            &format!("http://127.0.0.1:{port}/elsewhere"),
            "--url",
            &format!("http://127.0.0.1:{}/nginx_status", free_port()),
        ],
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        let row = parse_row(l, &meta);
        assert_eq!(num(&row, "up"), 0.0, "{l}");
        assert!(
            fields.iter().all(|f| row[*f].is_empty()),
            "down target, values left: {l}"
        );
    }
}

#[test]
fn redis_probe_matches_info() {
    if !require(
        have("redis-server"),
        "redis-server (apt-get install redis-server)",
    ) {
        return;
    }
    let meta = meta_of("redis.meta.toml");
    let redis = start_redis();
    let port = redis.port;
    let mut me = Redis::connect(port).unwrap();
    for k in ["k1", "k2", "k3"] {
        assert_eq!(me.cmd(&format!("SET {k} v")), "OK");
    }
    assert_eq!(me.cmd("SET k4 v EX 1000"), "OK");
    assert_eq!(me.cmd("GET k1"), "v");
    assert_eq!(me.cmd("GET k2"), "v");
    write!(me.0.get_mut(), "GET missing\r\n").unwrap();
    let mut nil = String::new();
    me.0.read_line(&mut nil).unwrap();
    assert_eq!(nil, "$-1\r\n");

    let before = me.info();
    let lines = probe_once("redis_probe.py", &["--addr", &format!("127.0.0.1:{port}")]);
    let after = me.info();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let row = parse_row(&lines[0], &meta);
    let f = |k: &str| -> f64 { before[k].parse().unwrap() };
    let g = |k: &str| -> f64 { after[k].parse().unwrap() };

    assert_eq!(row["server"], format!("127.0.0.1:{port}"));
    assert_eq!(row["version"], before["redis_version"]);
    assert_eq!(row["role"], "master");
    assert_eq!(num(&row, "up"), 1.0);
    // What the test did, exactly.
    assert_eq!(num(&row, "keys"), 4.0);
    assert_eq!(num(&row, "expires"), 1.0);
    assert_eq!(num(&row, "keyspace_hits"), 2.0);
    assert_eq!(num(&row, "keyspace_misses"), 1.0);
    // The probe's one INFO on one new connection, between the test's two INFOs.
    let tcp = num(&row, "total_commands_processed");
    assert_eq!(
        (f("total_commands_processed") + 1.0, tcp + 1.0),
        (tcp, g("total_commands_processed"))
    );
    assert_eq!(
        num(&row, "total_connections_received"),
        f("total_connections_received") + 1.0
    );
    assert_eq!(
        num(&row, "total_connections_received"),
        g("total_connections_received")
    );
    assert_eq!(num(&row, "connected_clients"), f("connected_clients") + 1.0);
    for k in [
        "maxmemory",
        "connected_slaves",
        "blocked_clients",
        "rejected_connections",
        "evicted_keys",
        "expired_keys",
    ] {
        assert_eq!(num(&row, k), f(k), "{k}");
    }
    // Every field named after an INFO field: counters between the two reads, gauges numbers.
    for field in &meta.fields {
        let name = field.name.as_str();
        if !before.contains_key(name) || ["keys", "expires"].contains(&name) {
            continue;
        }
        match field.ty {
            FieldType::Counter => {
                let v = num(&row, name);
                assert!(
                    f(name) <= v && v <= g(name),
                    "{name}: {} <= {v} <= {}",
                    f(name),
                    g(name)
                );
            }
            FieldType::Gauge => assert!(num(&row, name) >= 0.0, "{name}"),
            _ => {}
        }
    }
    assert!(num(&row, "used_memory") > 0.0);
    assert!(f("uptime_in_seconds") <= num(&row, "uptime_in_seconds"));

    // The nginx probe pointed at redis: not HTTP, so up = 0, and the probe carries on.
    let lines = probe_once(
        "nginx_probe.py",
        &["--url", &format!("http://127.0.0.1:{port}/nginx_status")],
    );
    assert_eq!(
        num(&parse_row(&lines[0], &meta_of("nginx.meta.toml")), "up"),
        0.0
    );
}

#[test]
fn haproxy_probe_matches_show_stat() {
    if !require(have("haproxy"), "haproxy (apt-get install haproxy)") {
        return;
    }
    let meta = meta_of("haproxy.meta.toml");
    let hp = start_haproxy();
    for _ in 0..4 {
        assert!(http_get(hp.svc.port, "/").unwrap().ends_with("ok"));
    }
    let before = show_stat(&hp.sock).unwrap();
    let lines = probe_once("haproxy_probe.py", &["--socket", &hp.sock]);
    let after = show_stat(&hp.sock).unwrap();
    assert_eq!(
        lines.len(),
        before.len(),
        "one row per statistics line: {lines:?}"
    );
    let types = BTreeMap::from([("0", "frontend"), ("1", "backend"), ("2", "server")]);
    let mut seen = BTreeMap::new();
    for (line, (b, a)) in lines.iter().zip(before.iter().zip(&after)) {
        let row = parse_row(line, &meta);
        assert_eq!(row["instance"], format!("unix:{}", hp.sock));
        assert_eq!(
            (row["proxy"].as_str(), row["server"].as_str()),
            (b["pxname"].as_str(), b["svname"].as_str())
        );
        assert_eq!(row["type"], types[b["type"].as_str()], "{line}");
        assert_eq!(row["status"], b["status"], "{line}");
        for field in &meta.fields {
            let Some(col) = documented_column(&field.description) else {
                continue;
            };
            let (bv, av, v) = (&b[col], &a[col], &row[&field.name]);
            match field.ty {
                FieldType::Counter if !bv.is_empty() => {
                    let (bn, an, vn): (f64, f64, f64) =
                        (bv.parse().unwrap(), av.parse().unwrap(), v.parse().unwrap());
                    assert!(
                        bn <= vn && vn <= an,
                        "{line}: {} ({col}): {bn} <= {vn} <= {an}",
                        field.name
                    );
                }
                FieldType::Counter | FieldType::Gauge if bv == av => {
                    assert_eq!(v, bv, "{line}: {} ({col})", field.name);
                }
                _ => {}
            }
        }
        seen.insert(format!("{}/{}", row["proxy"], row["server"]), row);
    }
    // What the test did, exactly: 4 requests through fe_test to be_app/s1.
    for k in ["fe_test/FRONTEND", "be_app/s1", "be_app/BACKEND"] {
        let r = &seen[k];
        assert_eq!(num(r, "sessions"), 4.0, "{k}");
        assert_eq!(num(r, "http_responses_2xx"), 4.0, "{k}");
        assert_eq!(num(r, "up"), 1.0, "{k}");
    }
    assert_eq!(seen["fe_test/FRONTEND"]["status"], "OPEN");
    assert_eq!(seen["be_app/s1"]["status"], "UP");
    let dead = &seen["be_dead/d1"];
    assert_eq!((dead["status"].as_str(), num(dead, "up")), ("DOWN", 0.0));
    assert!(num(dead, "check_failures") >= 1.0);
    assert_eq!(num(&seen["be_dead/BACKEND"], "up"), 0.0);
    assert!(
        seen["fe_test/FRONTEND"]["weight"].is_empty(),
        "n/a stays empty"
    );

    // The same statistics from the stats page (--url …;csv): same lines, same counts.
    let url = format!("http://127.0.0.1:{}/stats;csv", hp.stats);
    let lines = probe_once("haproxy_probe.py", &["--url", &url]);
    let by_url: BTreeMap<String, Row> = lines
        .iter()
        .map(|l| parse_row(l, &meta))
        .map(|r| (format!("{}/{}", r["proxy"], r["server"]), r))
        .collect();
    assert_eq!(
        by_url.keys().collect::<Vec<_>>(),
        seen.keys().collect::<Vec<_>>()
    );
    let r = &by_url["be_app/s1"];
    assert_eq!(r["instance"], format!("127.0.0.1:{}", hp.stats));
    assert_eq!((num(r, "sessions"), num(r, "up")), (4.0, 1.0));
    assert_eq!(by_url["be_dead/d1"]["status"], "DOWN");

    // A socket nobody listens on: nothing printed, the reason on stderr, exit 0.
    let lines = probe_once(
        "haproxy_probe.py",
        &[
            "--socket",
            &format!("{}/none.sock", hp.svc.dir.path().display()),
        ],
    );
    assert!(lines.is_empty(), "{lines:?}");
}

#[test]
fn redis_probe_survives_a_restart_and_exits_on_sigterm() {
    if !require(
        have("redis-server"),
        "redis-server (apt-get install redis-server)",
    ) {
        return;
    }
    let meta = meta_of("redis.meta.toml");
    let mut redis = start_redis();
    let port = redis.port;
    let probe = Running::spawn(
        "redis_probe.py",
        &["--addr", &format!("127.0.0.1:{port}"), "--interval", "0.2"],
    );
    let up = |want: f64| {
        let meta = &meta;
        move |l: &str| num(&parse_row(l, meta), "up") == want
    };
    let first = parse_row(&probe.line(), &meta);
    assert_eq!(num(&first, "up"), 1.0);

    redis.stop();
    let down = parse_row(&probe.until("up = 0", up(0.0)), &meta);
    assert!(
        down.iter()
            .all(|(k, v)| ["server", "up"].contains(&k.as_str()) || v.is_empty()),
        "a down server leaves no stale values: {down:?}"
    );
    let dir = std::mem::replace(&mut redis.dir, tempfile::tempdir().unwrap());
    let _redis = start_redis_in(dir, port);
    let again = parse_row(&probe.until("up = 1 again", up(1.0)), &meta);
    assert!(
        num(&again, "total_commands_processed") < num(&first, "total_commands_processed") + 50.0
    );
    assert_eq!(again["role"], "master");

    let (status, stderr) = probe.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM ends the probe cleanly: {status:?}\n{stderr}"
    );
    assert!(
        stderr.contains("cannot read") && stderr.contains("readable again"),
        "{stderr}"
    );
    assert!(!stderr.contains("Traceback"), "{stderr}");
}

/// When haproxy goes away, the rows it had keep coming with up = 0 and no stale values, so that
/// `up == 0` alerts fire instead of the series silently ageing out.
#[test]
fn haproxy_probe_reports_known_rows_down_when_haproxy_goes_away() {
    if !require(have("haproxy"), "haproxy (apt-get install haproxy)") {
        return;
    }
    let meta = meta_of("haproxy.meta.toml");
    let mut hp = start_haproxy();
    let probe = Running::spawn(
        "haproxy_probe.py",
        &["--socket", &hp.sock, "--interval", "0.2"],
    );
    let s1 = |want: f64| {
        let meta = &meta;
        move |l: &str| {
            let r = parse_row(l, meta);
            r["proxy"] == "be_app" && r["server"] == "s1" && num(&r, "up") == want
        }
    };
    probe.until("be_app/s1 up = 1", s1(1.0));
    hp.svc.stop();
    let down = parse_row(&probe.until("be_app/s1 up = 0", s1(0.0)), &meta);
    assert!(
        down.iter().all(|(k, v)| {
            ["instance", "proxy", "server", "type", "up"].contains(&k.as_str()) || v.is_empty()
        }),
        "an unreachable haproxy leaves no stale values: {down:?}"
    );
}

/// Without any service: each probe keeps running on refused connections, logs the reason once,
/// exits 0 on SIGTERM, and exits 0 without a traceback when its stdout is closed.
#[test]
fn probes_exit_cleanly_on_sigterm_and_closed_stdout() {
    let nowhere = format!("127.0.0.1:{}", free_port());
    let cases: [(&str, Vec<String>); 3] = [
        (
            "nginx_probe.py",
            vec!["--url".into(), format!("http://{nowhere}/nginx_status")],
        ),
        ("redis_probe.py", vec!["--addr".into(), nowhere.clone()]),
        (
            "haproxy_probe.py",
            vec!["--socket".into(), "/nonexistent/gopher-test.sock".into()],
        ),
    ];
    for (script, args) in &cases {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--interval", "0.1"]);
        let probe = Running::spawn(script, &args);
        probe.wait_stderr("cannot read");
        if *script != "haproxy_probe.py" {
            assert!(
                probe.line().starts_with('|'),
                "{script} prints rows for a down target"
            );
        }
        std::thread::sleep(Duration::from_millis(500)); // a few more failing rounds
        let (status, stderr) = probe.terminate();
        assert_eq!(status.code(), Some(0), "{script}: {status:?}\n{stderr}");
        assert_eq!(
            stderr.matches("cannot read").count(),
            1,
            "{script} logs a failure once per change: {stderr}"
        );
        assert!(!stderr.contains("Traceback"), "{script}: {stderr}");
    }
    // Closed stdout: the next write fails with EPIPE and the probe exits 0, quietly.
    for (script, args) in &cases[..2] {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--interval", "0.1"]);
        let mut child = Command::new(shipped(script))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert!(first.starts_with('|'), "{first:?}");
        drop(out);
        let status = wait_exit(&mut child, Duration::from_secs(5));
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(status.code(), Some(0), "{script}: {status:?}\n{stderr}");
        assert!(!stderr.contains("Traceback"), "{script}: {stderr}");
    }
}
