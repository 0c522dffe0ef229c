//! The control channel's gRPC reflection as the ecosystem's own clients use it: Python's
//! official client (grpcio-reflection) speaks `grpc.reflection.v1alpha` only, so the agent
//! serves v1alpha beside v1 (whose Rust client `agent/tests/control.rs` uses). The client lists
//! the services and resolves the control service's methods from the descriptors it is sent,
//! with the bearer token, and is refused without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{Agent, free_port, output_text, require, support};

fn python_has_grpc_reflection() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc_reflection.v1alpha"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python_grpcio_reflection_lists_the_services() {
    if !require(
        python_has_grpc_reflection(),
        "python3 with grpcio-reflection (scripts/test-deps.sh installs it)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "reflection-token\n").unwrap();
    let port = free_port();
    let agent = Agent::start(&format!(
        "[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\n[control]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
        token_file.display()
    ));
    let client = |token: Option<&str>| {
        let mut cmd = Command::new("python3");
        cmd.arg(support("reflection_client.py"))
            .arg(format!("127.0.0.1:{port}"));
        if let Some(t) = token {
            cmd.arg(t);
        }
        cmd.output().unwrap()
    };

    let out = client(Some("reflection-token"));
    assert!(out.status.success(), "{}", output_text(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services: Vec<&str> = answer["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for wanted in [
        "gopher.control.v1.ProbeControl",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(services.contains(&wanted), "{wanted} not in {services:?}");
    }
    let methods: Vec<&str> = answer["methods"]["gopher.control.v1.ProbeControl"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for wanted in ["ListProbes", "GetProbe", "SetProbe"] {
        assert!(methods.contains(&wanted), "{wanted} not in {methods:?}");
    }

    // The token guards reflection in this version too.
    let out = client(None);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("UNAUTHENTICATED"),
        "{}",
        output_text(&out)
    );
    drop(agent);
}
