//! The control channel end to end: a real tonic client against the running agent. Switching the
//! TCP probe off must detach its programs (checked with bpftool, independently of the agent) and
//! stop its rows; an extension probe switched off must have its process gone; watch streams each
//! change; validation errors carry the right codes. By topic beside it in control/: who may call
//! (`auth`: token, TLS/mTLS), what outlives a process (`lifecycle`: state file across restarts,
//! SIGHUP reload), and `gopher ctl` (`ctl`).
#![allow(
    clippy::too_many_lines,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::unnecessary_wraps,
    clippy::float_cmp
)]

mod common;
// The crate root names its submodules from tests/: these live beside it in control/ (by topic;
// one test binary, so one link).
#[path = "control/auth.rs"]
mod auth;
#[path = "control/ctl.rs"]
mod ctl;
#[path = "control/lifecycle.rs"]
mod lifecycle;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{Agent, free_port, is_root, require};
use gopher::control::grpc::pb::{
    self, ParamValue, Params, SetProbeRequest, param_value::Value,
    probe_control_client::ProbeControlClient,
};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const WAIT: Duration = Duration::from_secs(20);

/// Sends the agent's default token (`/var/lib/gopher-agent/control.token`, created by the agent at
/// its first start and readable by root, as the tests are) unless the request carries its own
/// `authorization`: the control channel refuses calls without a token by default.
#[derive(Clone)]
struct DefaultToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl DefaultToken {
    fn read() -> Self {
        let token = std::fs::read_to_string(gopher::config::DEFAULT_TOKEN_FILE).ok();
        Self(token.and_then(|t| format!("Bearer {}", t.trim()).parse().ok()))
    }
}

impl tonic::service::Interceptor for DefaultToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, tonic::Status> {
        if let Some(v) = &self.0
            && !req.metadata().contains_key("authorization")
        {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Ctl =
    ProbeControlClient<tonic::service::interceptor::InterceptedService<Channel, DefaultToken>>;

async fn client(port: u16) -> Ctl {
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ProbeControlClient::with_interceptor(ch, DefaultToken::read())
}

async fn get(c: &mut Ctl, name: &str) -> pb::Probe {
    c.get_probe(pb::GetProbeRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

fn set(name: &str) -> SetProbeRequest {
    SetProbeRequest {
        name: name.into(),
        ..SetProbeRequest::default()
    }
}

fn switch(name: &str, s: pb::Switch) -> SetProbeRequest {
    SetProbeRequest {
        switch: Some(s as i32),
        ..set(name)
    }
}

fn params(kv: &[(&str, Value)]) -> Option<Params> {
    Some(Params {
        values: kv
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    ParamValue {
                        value: Some(v.clone()),
                    },
                )
            })
            .collect(),
    })
}

/// Held by this test's agent: other agents may run on a shared machine.
fn attached_by(agent: &Agent) -> usize {
    common::gopher_programs_attached_by(Some(agent.pid()))
}

/// One loopback connection carrying `n` bytes each way; returns the server port.
fn traffic(n: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&vec![7u8; n]).unwrap();
    let mut back = vec![0u8; n];
    c.read_exact(&mut back).unwrap();
    server.join().unwrap();
    // Kept open a while so that a running probe sees it live too.
    std::thread::sleep(Duration::from_millis(1500));
    port
}

fn has_link(agent: &Agent, port: u16) -> bool {
    agent.scrape().unwrap().iter().any(|s| {
        s.name.starts_with("gala_gopher_tcp_link_") && s.label("server_port") == port.to_string()
    })
}

/// An extension probe printing one `ctl_demo` row every 200 ms, and its meta file.
fn demo_probe(dir: &Path) -> String {
    std::fs::write(
        dir.join("demo.toml"),
        r#"
[[tables]]
name = "ctl_demo"
fields = [
    { name = "name", type = "key" },
    { name = "n", type = "counter" },
]
"#,
    )
    .unwrap();
    let script = dir.join("demo.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nn=0\nwhile :; do n=$((n+1)); echo \"|ctl_demo|$1|$n|\"; sleep 0.2; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        r#"
[[extend_probes]]
name = "demo"
command = "{}"
param = "first"
switch = "on"
remote_param = true
meta = "{}"
"#,
        script.display(),
        dir.join("demo.toml").display()
    )
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggles_apply_for_real_and_are_watched() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let scripts = tempfile::tempdir().unwrap();
    let config = format!(
        "[[probes]]\nname = \"tcp\"\nswitch = \"on\"\ninterval = 1\n{}",
        demo_probe(scripts.path())
    );
    let agent = Agent::start(&config);
    let mut c = client(agent.control_port).await;

    // Watch from the start; collected in the background.
    let mut stream = c
        .watch_probes(pb::WatchProbesRequest { initial: false })
        .await
        .unwrap()
        .into_inner();
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            let _ = ev_tx.send(e);
        }
    });

    // Wait for both to run.
    let began = Instant::now();
    loop {
        let list = c
            .list_probes(pb::ListProbesRequest {})
            .await
            .unwrap()
            .into_inner()
            .probes;
        let running = list
            .iter()
            .filter(|p| p.state == pb::RunState::Running as i32)
            .count();
        if running == 2 {
            break;
        }
        assert!(began.elapsed() < WAIT, "probes never ran: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The sock_ops program at least (the connect and release hooks only where it cannot record
    // owners).
    assert!(attached_by(&agent) >= 1, "tcp programs attached while on");
    let demo = get(&mut c, "demo").await;
    let pid = demo.pid.expect("a running extension probe has a pid");
    assert!(pid_alive(pid));
    assert_eq!(demo.kind, pb::ProbeKind::Extension as i32);
    assert_eq!(
        demo.command,
        scripts.path().join("demo.sh").display().to_string()
    );

    // TCP off: detached when the answer comes, and new traffic makes no row.
    let off = c
        .set_probe(switch("tcp", pb::Switch::Off))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.state, pb::RunState::Stopped as i32);
    assert_eq!(off.switch, pb::Switch::Off as i32);
    assert!(off.overridden);
    assert_eq!(
        attached_by(&agent),
        0,
        "programs still attached after switching tcp off"
    );
    let quiet_port = traffic(4000);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !has_link(&agent, quiet_port),
        "a link made while tcp was off appeared"
    );
    // Idempotent: the same change again changes nothing and succeeds.
    let again = c
        .set_probe(switch("tcp", pb::Switch::Off))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state, pb::RunState::Stopped as i32);

    // On again: attached when the answer comes, rows resume.
    let on = c
        .set_probe(switch("tcp", pb::Switch::On))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on.state, pb::RunState::Running as i32, "{on:?}");
    assert!(
        attached_by(&agent) >= 1,
        "programs not attached after switching tcp on"
    );
    let live_port = traffic(5000);
    let began = Instant::now();
    while !has_link(&agent, live_port) {
        assert!(began.elapsed() < WAIT, "no tcp_link row after switching on");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A new interval restarts the probe with it; params are validated by the probe itself.
    let tuned = c
        .set_probe(SetProbeRequest {
            interval_seconds: Some(2),
            params: params(&[("max_links", Value::IntValue(32768))]),
            ..set("tcp")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tuned.interval_seconds, 2);
    assert_eq!(tuned.state, pb::RunState::Running as i32);
    assert_eq!(
        tuned.params.unwrap().values["max_links"].value,
        Some(Value::IntValue(32768))
    );
    assert!(attached_by(&agent) >= 1);

    // Extension probe off: its process is gone when the answer comes. On: a new one.
    let off = c
        .set_probe(switch("demo", pb::Switch::Off))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.state, pb::RunState::Stopped as i32);
    assert_eq!(off.pid, None);
    assert!(!pid_alive(pid), "extension probe process {pid} still alive");
    let on = c
        .set_probe(SetProbeRequest {
            switch: Some(pb::Switch::On as i32),
            params: params(&[("param", Value::StringValue("second".into()))]),
            ..set("demo")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on.state, pb::RunState::Running as i32);
    let new_pid = on.pid.expect("pid after switching on");
    assert_ne!(new_pid, pid);
    assert!(pid_alive(new_pid));
    // The new param reached the command line: rows now come keyed "second".
    agent.wait_for(WAIT, "rows from the new param", |s| {
        s.iter()
            .any(|x| x.name == "gala_gopher_ctl_demo_n_total" && x.label("name") == "second")
    });
    assert!(get(&mut c, "demo").await.rows > 0);

    // Every change was streamed, in order.
    let mut seen = Vec::new();
    let want = [
        ("tcp", pb::RunState::Stopped),
        ("tcp", pb::RunState::Running),
        ("demo", pb::RunState::Stopped),
        ("demo", pb::RunState::Running),
    ];
    let began = Instant::now();
    let mut next = 0;
    while next < want.len() {
        let e = tokio::time::timeout(WAIT.saturating_sub(began.elapsed()), ev_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("watch stream missed {:?}; saw {seen:?}", want[next]))
            .unwrap();
        let p = e.probe.unwrap();
        seen.push((p.name.clone(), p.state, p.switch));
        if p.name == want[next].0 && p.state == want[next].1 as i32 {
            next += 1;
        }
    }
}

fn status_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Status {
    r.expect_err("expected an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_field_named() {
    let scripts = tempfile::tempdir().unwrap();
    // tcp stays off: validating its params needs no eBPF.
    let config = format!(
        "[[probes]]\nname = \"tcp\"\nswitch = \"off\"\n[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\ninterval = 1\n{}\n[[extend_probes]]\nname = \"locked\"\ncommand = \"sleep\"\nparam = \"600\"\nswitch = \"off\"\n",
        demo_probe(scripts.path())
    );
    let agent = Agent::start(&config);
    let mut c = client(agent.control_port).await;

    let e = status_of(
        c.get_probe(pb::GetProbeRequest {
            name: "nope".into(),
        })
        .await,
    );
    assert_eq!(e.code(), Code::NotFound);
    let e = status_of(c.set_probe(switch("nope", pb::Switch::On)).await);
    assert_eq!(e.code(), Code::NotFound);

    let cases: Vec<(SetProbeRequest, &str)> = vec![
        (
            SetProbeRequest {
                interval_seconds: Some(0),
                ..set("system_meminfo")
            },
            "interval_seconds",
        ),
        (
            SetProbeRequest {
                interval_seconds: Some(3601),
                ..set("system_meminfo")
            },
            "interval_seconds",
        ),
        (switch("system_meminfo", pb::Switch::Auto), "switch"),
        (switch("demo", pb::Switch::Auto), "switch"),
        (
            SetProbeRequest {
                switch: Some(42),
                ..set("tcp")
            },
            "switch",
        ),
        (
            SetProbeRequest {
                params: params(&[("max_links", Value::IntValue(5))]),
                ..set("tcp")
            },
            "params.max_links",
        ),
        (
            SetProbeRequest {
                params: params(&[("bogus", Value::BoolValue(true))]),
                ..set("tcp")
            },
            "params.bogus",
        ),
        (
            SetProbeRequest {
                params: params(&[("x", Value::IntValue(1))]),
                ..set("system_meminfo")
            },
            "params.x",
        ),
        (
            SetProbeRequest {
                interval_seconds: Some(5),
                ..set("demo")
            },
            "interval_seconds",
        ),
        // The command runs through a shell: nothing that could start another command.
        (
            SetProbeRequest {
                params: params(&[("param", Value::StringValue("x; touch /tmp/pwned".into()))]),
                ..set("demo")
            },
            "params.param",
        ),
        (
            SetProbeRequest {
                params: params(&[("param", Value::StringValue("$(id)".into()))]),
                ..set("demo")
            },
            "params.param",
        ),
        (
            SetProbeRequest {
                params: params(&[("command", Value::StringValue("/bin/sh".into()))]),
                ..set("demo")
            },
            "params.command",
        ),
        (
            SetProbeRequest {
                name: String::new(),
                ..SetProbeRequest::default()
            },
            "name",
        ),
        // Arguments can change what a program does: only where the operator opted in.
        (
            SetProbeRequest {
                params: params(&[("param", Value::StringValue("--config=/tmp/x".into()))]),
                ..set("locked")
            },
            "params.param",
        ),
    ];
    for (req, field) in cases {
        let what = format!("{req:?}");
        let e = status_of(c.set_probe(req).await);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}: ")),
            "{what}: message {:?} does not name {field}",
            e.message()
        );
        let details = tonic_types::StatusExt::get_error_details(&e);
        let bad = details.bad_request().expect("a BadRequest detail");
        assert_eq!(bad.field_violations[0].field, field, "{what}");
    }
    // Nothing was changed by the refused requests.
    let m = get(&mut c, "system_meminfo").await;
    assert_eq!((m.interval_seconds, m.overridden), (1, false));
    assert_eq!(m.state, pb::RunState::Running as i32);
    assert!(!Path::new("/tmp/pwned").exists());
    // Still serving, and still exporting.
    agent.wait_for(WAIT, "meminfo rows", |s| {
        s.iter()
            .any(|x| x.name.starts_with("gala_gopher_system_meminfo_"))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sets_settle_consistently() {
    let agent =
        Agent::start("[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\ninterval = 1\n");
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let port = agent.control_port;
        tasks.push(tokio::spawn(async move {
            let mut c = client(port).await;
            let s = if i % 2 == 0 {
                pb::Switch::Off
            } else {
                pb::Switch::On
            };
            c.set_probe(switch("system_meminfo", s))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    for t in tasks {
        let p = t.await.unwrap();
        // Each answer describes a settled probe: off and stopped, or on and running.
        let settled = (p.switch == pb::Switch::Off as i32
            && p.state == pb::RunState::Stopped as i32)
            || (p.switch == pb::Switch::On as i32 && p.state == pb::RunState::Running as i32);
        assert!(settled, "{p:?}");
    }
    let mut c = client(agent.control_port).await;
    let p = get(&mut c, "system_meminfo").await;
    let expect = if p.switch == pb::Switch::On as i32 {
        pb::RunState::Running
    } else {
        pb::RunState::Stopped
    };
    assert_eq!(p.state, expect as i32, "{p:?}");
}
