//! `gopher ctl`, the command-line client, as people and scripts use it: tables and JSON.

use super::*;

fn ctl(port: u16, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gopher"))
        .arg("ctl")
        .arg("--addr")
        .arg(format!("http://127.0.0.1:{port}"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_command_for_people_and_scripts() {
    let agent = Agent::start(
        "[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\ninterval = 1\n[[probes]]\nname = \"system_cpu\"\nswitch = \"off\"\n",
    );
    let port = agent.control_port;
    let out = ctl(port, &["--output", "json", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["system_cpu", "system_meminfo"]);
    assert_eq!(list[1]["switch"], "on");
    assert_eq!(list[0]["state"], "stopped");

    let out = ctl(
        port,
        &[
            "-o",
            "json",
            "set",
            "system_cpu",
            "--switch",
            "on",
            "--interval",
            "2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p[0]["state"], "running");
    assert_eq!(p[0]["interval_seconds"], 2);
    assert_eq!(p[0]["overridden"], true);

    let out = ctl(port, &["get", "system_cpu"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.contains("system_cpu") && text.contains("running"),
        "{text}"
    );

    let out = ctl(port, &["get", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    let out = ctl(port, &["set", "system_cpu", "--interval", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("interval_seconds"));

    // watch prints each change as a JSON line.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_gopher"))
        .args([
            "ctl",
            "--addr",
            &format!("http://127.0.0.1:{port}"),
            "-o",
            "json",
            "watch",
            "--no-initial",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        ctl(port, &["set", "system_cpu", "--switch", "off"])
            .status
            .success()
    );
    let mut stdout = std::io::BufReader::new(watch.stdout.take().unwrap());
    let line = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            if std::io::BufRead::read_line(&mut stdout, &mut l).unwrap() == 0 {
                break lines;
            }
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            let done = v["name"] == "system_cpu" && v["state"] == "stopped" && v["switch"] == "off";
            lines.push(v);
            if done {
                break lines;
            }
        }
    });
    let lines = tokio::time::timeout(WAIT, line).await.unwrap().unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        lines
            .iter()
            .any(|v| v["name"] == "system_cpu" && v["state"] == "stopped" && v["switch"] == "off"),
        "{lines:?}"
    );
}
