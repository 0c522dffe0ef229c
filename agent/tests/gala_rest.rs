//! gala-gopher's REST probe API (`[rest_api]`) driven with gala-gopher's own request bodies
//! (`curl -X PUT http://host:9999/tcp -d json='{…}'`): switches checked with bpftool (the
//! tcp probe's eBPF programs held by this agent's pid), as `control.rs` checks gRPC toggles;
//! bad bodies get gala-gopher's status codes; the control channel's bearer token applies; with
//! `tls_cert`/`tls_key`/`tls_client_ca` it is HTTPS with client certificates (curl as client).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, free_port, is_root, require};

/// `curl` with `args`, returning (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

const DEFAULT_TOKEN_FILE: &str = "/var/lib/gopher-agent/control.token";

fn curl_with(auth: &str, args: &[&str]) -> (u16, String) {
    let mut all = vec!["-H", auth];
    all.extend_from_slice(args);
    curl(&all)
}

fn attached_by(agent: &Agent) -> usize {
    common::gopher_programs_attached_by(Some(agent.pid()))
}

fn wait_attached(agent: &Agent, what: &str, ok: impl Fn(usize) -> bool) {
    let start = Instant::now();
    while !ok(attached_by(agent)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: {}",
            attached_by(agent)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const TCP: &str = "[[probes]]\nname = \"tcp\"\nswitch = \"on\"\ninterval = 1\n";

#[test]
fn rest_api_switches_probes_with_gala_gophers_bodies() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let rest = free_port();
    let agent = Agent::start(&format!(
        "[rest_api]\nswitch = \"on\"\nlisten = \"127.0.0.1:{rest}\"\n{TCP}"
    ));
    agent.wait_running(Duration::from_secs(30), "tcp");
    wait_attached(&agent, "tcp probe attached at start", |n| n > 0);
    let url = format!("http://127.0.0.1:{rest}/tcp");
    // The control channel's default token (created 0600 at the agent's first start): root, as
    // this test, reads it; the REST API takes the same bearer token as gRPC.
    let token = std::fs::read_to_string(DEFAULT_TOKEN_FILE).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());

    // gala-gopher's stop: form-style json=.
    let (code, body) = curl_with(
        &auth,
        &["-X", "PUT", &url, "-d", r#"json={"state":"stopped"}"#],
    );
    assert_eq!((code, body.as_str()), (200, "New config takes effect"));
    wait_attached(&agent, "detached after stopped", |n| n == 0);
    let (code, body) = curl_with(&auth, &[&url]);
    assert_eq!(code, 200);
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["state"], "stopped", "{shown}");
    assert_eq!(shown["probe"], "tcp");

    // gala-gopher's full body: its tcp params are not gopher's: refused, nothing changes.
    let full = r#"json={"cmd":{"probe":["tcp_abnormal","tcp_rtt"]},"snoopers":{"proc_name":[{"comm":"nginx","cmdline":"","debugging_dir":""}]},"params":{"report_period":60,"sample_period":5000},"state":"running"}"#;
    let (code, body) = curl_with(&auth, &["-X", "PUT", &url, "-d", full]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("report_period"), "{body}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(attached_by(&agent), 0, "a refused PUT changed nothing");

    // Its running body with cmd/snoopers: switched on, the ignored keys named.
    let running =
        r#"json={"cmd":{"probe":["tcp_abnormal"]},"snoopers":{"proc_id":[1]},"state":"running"}"#;
    let (code, body) = curl_with(&auth, &["-X", "PUT", &url, "-d", running]);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("New config takes effect (ignored: "),
        "{body}"
    );
    assert!(body.contains("cmd") && body.contains("snoopers"), "{body}");
    wait_attached(&agent, "attached after running", |n| n > 0);

    // Plain JSON too, with gopher's own params for the probe.
    let (code, body) = curl_with(
        &auth,
        &[
            "-X",
            "PUT",
            &url,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"state":"running","params":{"max_links":5000}}"#,
        ],
    );
    assert_eq!(code, 200, "{body}");
    let (_, body) = curl_with(&auth, &[&url]);
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["params"]["max_links"], 5000, "{shown}");
    assert_eq!(shown["state"], "running");

    // Bad requests, with gala-gopher's codes and a message saying why.
    let bad = |data: &str| curl_with(&auth, &["-X", "PUT", &url, "-d", data]);
    let (code, body) = bad("state=running");
    assert_eq!(code, 400);
    assert!(body.contains("json="), "{body}");
    let (code, body) = bad("json={\"state\":");
    assert_eq!(code, 400);
    assert!(body.contains("not valid JSON"), "{body}");
    let (code, body) = bad(r#"json={"state":"paused"}"#);
    assert_eq!(code, 400);
    assert!(
        body.contains("running") && body.contains("stopped"),
        "{body}"
    );
    let (code, _) = curl_with(&auth, &[&format!("http://127.0.0.1:{rest}/no_such_probe")]);
    assert_eq!(code, 404);
    let (code, _) = curl_with(
        &auth,
        &[
            "-X",
            "PUT",
            &format!("http://127.0.0.1:{rest}/no_such_probe"),
            "-d",
            r#"json={"state":"running"}"#,
        ],
    );
    assert_eq!(code, 404);
    let (code, _) = curl_with(&auth, &["-X", "DELETE", &url]);
    assert_eq!(code, 405);
    assert!(attached_by(&agent) > 0, "bad requests changed nothing");
}

#[test]
fn rest_api_takes_the_control_channels_token() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let (rest, control) = (free_port(), free_port());
    let agent = Agent::start(&format!(
        "[control]\nlisten = \"127.0.0.1:{control}\"\ntoken_file = \"{}\"\n\
         [rest_api]\nswitch = \"on\"\nlisten = \"127.0.0.1:{rest}\"\n{TCP}",
        token.display()
    ));
    agent.wait_running(Duration::from_secs(30), "tcp");
    let url = format!("http://127.0.0.1:{rest}/tcp");
    let stop = r#"json={"state":"stopped"}"#;
    let (code, body) = curl(&["-X", "PUT", &url, "-d", stop]);
    assert_eq!(code, 401, "{body}");
    let (code, _) = curl(&[
        "-X",
        "PUT",
        &url,
        "-H",
        "Authorization: Bearer wrong",
        "-d",
        stop,
    ]);
    assert_eq!(code, 401);
    assert!(attached_by(&agent) > 0, "refused calls changed nothing");
    let (code, body) = curl(&[
        "-X",
        "PUT",
        &url,
        "-H",
        "Authorization: Bearer s3cret",
        "-d",
        stop,
    ]);
    assert_eq!(code, 200, "{body}");
    wait_attached(&agent, "detached with the token", |n| n == 0);
}

#[test]
fn an_open_rest_listener_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probes.toml");
    std::fs::write(
        &path,
        "[control]\ntoken_file = \"\"\n[rest_api]\nswitch = \"on\"\nlisten = \"0.0.0.0:9999\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gopher"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("rest_api.listen") && said.contains("token_file"),
        "{said}"
    );
}

#[test]
fn rest_api_over_tls_with_client_certificates() {
    if !require(is_root(), "root (eBPF)") {
        return;
    }
    let pki = common::pki::pki();
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| common::pki::write(dir.path(), name, text);
    let (ca, cert, key) = (
        w("ca.pem", &pki.ca),
        w("server.crt", &pki.server.0),
        w("server.key", &pki.server.1),
    );
    let (client, client_key) = (
        w("client.crt", &pki.client.0),
        w("client.key", &pki.client.1),
    );
    let (rogue, rogue_key) = (w("rogue.crt", &pki.rogue.0), w("rogue.key", &pki.rogue.1));
    let token = w("token", "s3cret\n");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (rest, control) = (free_port(), free_port());
    let agent = Agent::start(&format!(
        "[control]\nlisten = \"127.0.0.1:{control}\"\ntoken_file = \"{token}\"\n\
         [rest_api]\nswitch = \"on\"\nlisten = \"127.0.0.1:{rest}\"\n\
         tls_cert = \"{cert}\"\ntls_key = \"{key}\"\ntls_client_ca = \"{ca}\"\n{TCP}"
    ));
    agent.wait_running(Duration::from_secs(30), "tcp");
    wait_attached(&agent, "tcp probe attached at start", |n| n > 0);
    let url = format!("https://localhost:{rest}/tcp");
    let resolve = format!("localhost:{rest}:127.0.0.1");
    let tls = |id: Option<(&str, &str)>, more: &[&str]| {
        let mut args = vec!["--resolve", resolve.as_str(), "--cacert", ca.as_str()];
        if let Some((c, k)) = id {
            args.extend(["--cert", c, "--key", k]);
        }
        args.extend_from_slice(more);
        curl(&args)
    };
    let me = Some((client.as_str(), client_key.as_str()));
    let auth = "Authorization: Bearer s3cret";
    // gala-gopher's body over TLS, with a trusted client certificate and the token.
    let stop = r#"json={"state":"stopped"}"#;
    let (code, body) = tls(me, &["-H", auth, "-X", "PUT", &url, "-d", stop]);
    assert_eq!((code, body.as_str()), (200, "New config takes effect"));
    wait_attached(&agent, "detached over TLS", |n| n == 0);
    let (code, body) = tls(me, &["-H", auth, &url]);
    assert_eq!(code, 200, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["state"], "stopped", "{shown}");
    // TLS does not replace the token.
    let (code, _) = tls(
        me,
        &["-X", "PUT", &url, "-d", r#"json={"state":"running"}"#],
    );
    assert_eq!(code, 401);
    // No client certificate, one from another CA, plain HTTP: no answer at all.
    let rogue_id = Some((rogue.as_str(), rogue_key.as_str()));
    for id in [None, rogue_id] {
        let (code, body) = tls(id, &["-H", auth, &url]);
        assert_eq!(code, 0, "{id:?}: {body}");
    }
    let (code, _) = curl(&["-H", auth, &format!("http://127.0.0.1:{rest}/tcp")]);
    assert_ne!(code, 200);
    assert_eq!(attached_by(&agent), 0, "refused calls changed nothing");
    // Refused handshakes are counted.
    agent.wait_for(Duration::from_secs(10), "TLS refusals counted", |s| {
        s.iter().any(|x| {
            x.name == "gopher_control_requests_total"
                && x.label("method") == "rest_tls"
                && x.label("code") == "tls_handshake"
                && x.value >= 2.0
        })
    });
}
