//! Changes beyond one process and one call: runtime changes kept in the state file across a
//! restart until reset, and SIGHUP reloading probes.toml (a bad file refused, counted).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_changes_survive_a_restart_until_reset() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.toml");
    let config = |port: u16| {
        format!(
            "[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\ninterval = 1\n[[probes]]\nname = \"system_vmstat\"\nswitch = \"on\"\ninterval = 1\n[control]\nlisten = \"127.0.0.1:{port}\"\nstate_file = \"{}\"\n",
            state.display()
        )
    };
    let port = free_port();
    let agent = Agent::start(&config(port));
    let mut c = client(port).await;
    c.set_probe(switch("system_meminfo", pb::Switch::Off))
        .await
        .unwrap();
    c.set_probe(SetProbeRequest {
        interval_seconds: Some(7),
        ..set("system_vmstat")
    })
    .await
    .unwrap();
    drop(c);
    drop(agent);
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains("[probes.system_meminfo]"), "{saved}");

    let port = free_port();
    let agent = Agent::start(&config(port));
    let mut c = client(port).await;
    let m = get(&mut c, "system_meminfo").await;
    assert_eq!(
        (m.switch, m.state),
        (pb::Switch::Off as i32, pb::RunState::Stopped as i32)
    );
    assert!(m.overridden);
    let v = get(&mut c, "system_vmstat").await;
    assert_eq!((v.interval_seconds, v.overridden), (7, true));
    let back = c
        .reset_probe(pb::ResetProbeRequest {
            name: "system_meminfo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.state, pb::RunState::Running as i32);
    assert!(!back.overridden);
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(!saved.contains("system_meminfo"), "{saved}");
    assert!(saved.contains("system_vmstat"), "{saved}");
    agent.wait_for(WAIT, "meminfo rows again", |s| {
        s.iter()
            .any(|x| x.name.starts_with("gala_gopher_system_meminfo_"))
    });
}

fn reloads(agent: &Agent, result: &str) -> f64 {
    agent
        .scrape()
        .unwrap()
        .iter()
        .find(|s| s.name == "gopher_config_reloads_total" && s.label("result") == result)
        .map_or(0.0, |s| s.value)
}

/// Until the agent counted one reload with `result`.
async fn wait_reloads(agent: &Agent, result: &str) {
    let began = Instant::now();
    while reloads(agent, result) < 1.0 {
        assert!(began.elapsed() < WAIT, "no reload counted as {result}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn names(c: &mut Ctl) -> Vec<String> {
    c.list_probes(pb::ListProbesRequest {})
        .await
        .unwrap()
        .into_inner()
        .probes
        .into_iter()
        .map(|p| p.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_follows_the_file_and_refuses_a_bad_one() {
    let scripts = tempfile::tempdir().unwrap();
    let demo = demo_probe(scripts.path());
    let v1 = format!(
        "[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\ninterval = 1\n[[probes]]\nname = \"system_cpu\"\nswitch = \"on\"\ninterval = 1\n{demo}"
    );
    let agent = Agent::start(&v1);
    let mut c = client(agent.control_port).await;
    let began = Instant::now();
    let old_pid = loop {
        if let Some(pid) = get(&mut c, "demo").await.pid {
            break pid;
        }
        assert!(began.elapsed() < WAIT, "demo never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A runtime change, to see that it stays on top of the new file.
    c.set_probe(SetProbeRequest {
        interval_seconds: Some(3),
        ..set("system_cpu")
    })
    .await
    .unwrap();
    let mut stream = c
        .watch_probes(pb::WatchProbesRequest { initial: false })
        .await
        .unwrap()
        .into_inner();

    // meminfo removed, vmstat added, cpu switched off in the file, demo's param changed.
    let v2 = format!(
        "[[probes]]\nname = \"system_cpu\"\nswitch = \"off\"\ninterval = 2\n[[probes]]\nname = \"system_vmstat\"\nswitch = \"on\"\ninterval = 1\n{}",
        demo.replace("param = \"first\"", "param = \"second\"")
    );
    agent.reload(&v2);
    wait_reloads(&agent, "ok").await;
    assert_eq!(names(&mut c).await, ["demo", "system_cpu", "system_vmstat"]);
    let e = status_of(
        c.get_probe(pb::GetProbeRequest {
            name: "system_meminfo".into(),
        })
        .await,
    );
    assert_eq!(e.code(), Code::NotFound);
    let cpu = get(&mut c, "system_cpu").await;
    assert_eq!(
        (cpu.switch, cpu.state, cpu.interval_seconds, cpu.overridden),
        (
            pb::Switch::Off as i32,
            pb::RunState::Stopped as i32,
            3,
            true
        ),
        "switch follows the file, the runtime interval stays"
    );
    let vmstat = get(&mut c, "system_vmstat").await;
    assert_eq!(vmstat.state, pb::RunState::Running as i32);
    let demo_now = get(&mut c, "demo").await;
    let new_pid = demo_now.pid.expect("demo restarted");
    assert_ne!(new_pid, old_pid);
    assert!(!pid_alive(old_pid));
    agent.wait_for(WAIT, "rows with the reloaded param", |s| {
        s.iter()
            .any(|x| x.name == "gala_gopher_ctl_demo_n_total" && x.label("name") == "second")
    });
    agent.wait_for(WAIT, "rows of the added probe", |s| {
        s.iter()
            .any(|x| x.name.starts_with("gala_gopher_system_vmstat_"))
    });
    // The removal was streamed.
    let began = Instant::now();
    loop {
        let e = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if e.removed && e.probe.as_ref().unwrap().name == "system_meminfo" {
            break;
        }
        assert!(began.elapsed() < WAIT);
    }

    // A file with an error is refused as a whole: nothing changes.
    agent.reload("[[probes]]\nname = \"bogus\"\nswitch = \"on\"\n");
    wait_reloads(&agent, "error").await;
    assert_eq!(names(&mut c).await, ["demo", "system_cpu", "system_vmstat"]);
    assert_eq!(get(&mut c, "demo").await.pid, Some(new_pid));
    assert_eq!(reloads(&agent, "ok"), 1.0);
}
