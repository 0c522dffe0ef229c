//! Start checks: one that hangs is timed out, counted and blocks no other probe; `auto` probes
//! start when their check passes and stop, whole process group, when it fails.

use super::*;

#[test]
fn a_hanging_start_check_times_out_is_counted_and_blocks_nobody() {
    let s = Scripts::new();
    let pids = s.path("check-pids");
    let probe = s.sh(
        "p.sh",
        "while :; do printf '|ext_demo|a|1|x|y|1|1|\\n'; sleep 0.3; done",
    );
    let other = s.sh(
        "q.sh",
        "while :; do printf '|ext_demo|b|1|x|y|2|1|\\n'; sleep 0.3; done",
    );
    let hang = format!(
        "switch = \"auto\"\ncheck_type = \"count\"\nstart_check = \"echo $$ >> {}; sleep 100\"",
        pids.display()
    );
    let agent = Agent::start(&format!(
        "{SUPERVISION}{}{}",
        s.probe("hangs", &probe, &hang),
        s.probe(
            "present",
            &other,
            "switch = \"auto\"\nstart_check = \"echo 1\""
        )
    ));
    let samples = agent.wait_for(WAIT, "three timeouts and the other probe running", |x| {
        value(
            x,
            "gopher_start_check_failures_total",
            &[("probe", "hangs"), ("reason", "timeout")],
        )
        .is_some_and(|v| v >= 3.0)
            && value(x, "gala_gopher_ext_demo_requests_total", &[("host", "b")]).is_some()
    });
    assert!(state_is(&samples, "hangs", "stopped"));
    assert!(state_is(&samples, "present", "running"));
    assert!(
        value(
            &samples,
            "gala_gopher_ext_demo_requests_total",
            &[("host", "a")]
        )
        .is_none()
    );
    assert_eq!(
        value(
            &samples,
            "gopher_start_check_failures_total",
            &[("probe", "present"), ("reason", "timeout")]
        ),
        Some(0.0)
    );
    // Every timed-out check was killed with its whole group (the sleep included); at most the
    // one running right now is alive.
    let listed: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(listed.len() >= 3, "{listed:?}");
    let alive = listed.iter().filter(|&&pgid| group_alive(pgid)).count();
    assert!(alive <= 1, "{alive} check groups alive of {listed:?}");
}

/// A live (non-zombie) process whose process group is `pgid`.
fn group_alive(pgid: u32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read_to_string(e.path().join("stat")).is_ok_and(|stat| {
            let Some(i) = stat.rfind(')') else {
                return false;
            };
            let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
            f.len() > 2 && f[0] != "Z" && f[0] != "X" && f[2] == pgid.to_string()
        })
    })
}

#[test]
fn auto_probes_follow_their_start_checks_and_stop_with_their_whole_group() {
    let s = Scripts::new();
    let script = |name: &str, host: &str| {
        s.sh(
            name,
            &format!(
                "sleep 1000 &\necho $! > {dir}/{host}.child\necho $$ > {dir}/{host}.pid\n\
                 while :; do printf '|ext_demo|{host}|1|x|y|1|1|\\n'; sleep 0.3; done",
                dir = s.dir.path().display()
            ),
        )
    };
    let count_probe = script("count.sh", "cnt");
    let exit_probe = script("exit.sh", "ext");
    let flag_count = s.path("flag-count");
    let flag_exit = s.path("flag-exit");
    let agent = Agent::start(&format!(
        "{SUPERVISION}{}{}",
        s.probe(
            "by_count",
            &count_probe,
            &format!(
                "switch = \"auto\"\ncheck_type = \"count\"\nstart_check = \"test -e {} && echo 1 || echo 0\"",
                flag_count.display()
            )
        ),
        s.probe(
            "by_exit",
            &exit_probe,
            &format!(
                "switch = \"auto\"\ncheck_type = \"exit\"\nstart_check = \"test -e {}\"",
                flag_exit.display()
            )
        ),
    ));
    // Absent: both stopped, checks answering (no failures), no rows.
    std::thread::sleep(Duration::from_millis(2500));
    let samples = agent.scrape().unwrap();
    for p in ["by_count", "by_exit"] {
        assert!(state_is(&samples, p, "stopped"), "{p}");
        for reason in ["timeout", "spawn", "bad_output", "killed"] {
            assert_eq!(
                value(
                    &samples,
                    "gopher_start_check_failures_total",
                    &[("probe", p), ("reason", reason)]
                ),
                Some(0.0),
                "{p} {reason}"
            );
        }
    }
    assert!(!s.path("cnt.pid").exists() && !s.path("ext.pid").exists());

    for (probe, host, flag) in [
        ("by_count", "cnt", &flag_count),
        ("by_exit", "ext", &flag_exit),
    ] {
        std::fs::write(flag, "").unwrap();
        agent.wait_for(WAIT, &format!("{probe} started with rows"), |x| {
            state_is(x, probe, "running")
                && value(x, "gala_gopher_ext_demo_requests_total", &[("host", host)]).is_some()
        });
        let pid = read_pid(&s.path(&format!("{host}.pid")));
        let child = read_pid(&s.path(&format!("{host}.child")));
        assert!(!gone(pid) && !gone(child));
        std::fs::remove_file(flag).unwrap();
        agent.wait_for(WAIT, &format!("{probe} stopped"), |x| {
            state_is(x, probe, "stopped")
        });
        // The whole process group went: the probe's shell and the sleep it started.
        wait_until("probe processes gone", Duration::from_secs(5), || {
            gone(pid) && gone(child)
        });
        assert!(!group_alive(pid));
    }
    // Present again: started again (a fresh process).
    let old = read_pid(&s.path("cnt.pid"));
    std::fs::remove_file(s.path("cnt.pid")).unwrap();
    std::fs::write(&flag_count, "").unwrap();
    agent.wait_for(WAIT, "by_count started again", |x| {
        state_is(x, "by_count", "running")
    });
    assert_ne!(read_pid(&s.path("cnt.pid")), old);
}
