//! End to end: a real container (an image built from scratch with buildah, run by podman), the
//! real agent, and the container labels on the container process's `tcp_link` row.
// Byte counts are compared exactly on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    Agent, have, is_root,
    podman::{Container, have_podman_and_buildah, podman, run},
    require,
    tcp::{CONFIG, expect_row, ready, row},
};

const IMAGE: &str = "localhost/gopher-test-echo:1";

/// An image holding only a static busybox, built without any registry.
fn build_image() {
    let dir = std::env::temp_dir().join(format!("gopher-ctr-image-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    let c = run(Command::new("buildah").args(["from", "scratch"]));
    run(Command::new("buildah")
        .args(["copy", &c])
        .arg(dir.join("bin"))
        .arg("/bin"));
    run(Command::new("buildah").args(["commit", "-q", &c, IMAGE]));
    run(Command::new("buildah").args(["rm", &c]));
    let _ = std::fs::remove_dir_all(dir);
}

/// A port below the ephemeral range (busy hosts have client connections on any ephemeral port,
/// and the container binds the wildcard address) that is free on every address.
fn listen_port() -> u16 {
    let start = 10_000 + u16::try_from(std::process::id() % 8_000).unwrap();
    (start..start + 2_000)
        .find(|p| std::net::TcpListener::bind(("::", *p)).is_ok())
        .expect("a free port")
}

/// A static busybox (a plain `busybox` is dynamically linked and useless in an empty image).
fn static_busybox() -> bool {
    // ldd fails on a static executable ("not a dynamic executable").
    Path::new("/bin/busybox").exists() && !have("ldd", &["/bin/busybox"])
}

#[test]
fn a_container_process_row_carries_its_container_labels() {
    if !require(is_root(), "root (eBPF, podman)")
        || !require(
            have_podman_and_buildah() && static_busybox(),
            "podman, buildah and a static busybox (busybox-static)",
        )
    {
        return;
    }
    build_image();
    let port = listen_port();
    let name = format!("gopher-ctr-{}", std::process::id());
    // Ulimits within the hard limits of hosts that cap them (this VM: 20,000 files).
    let id = run(podman().args([
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        IMAGE,
        "/bin/busybox",
        "nc",
        "-ll",
        "-p",
        &port.to_string(),
        "-e",
        "/bin/busybox",
        "cat",
    ]));
    let _container = Container(name.clone());
    assert_eq!(id.len(), 64, "podman prints the full id: {id}");

    let t0 = Instant::now();
    // Only this test's port: the host may hold many other links (the table cap then folds
    // the rest into aggregate rows).
    let agent = Agent::start(&format!(
        "{CONFIG}[probes.params]\ninclude_ports = [{port}]\n"
    ));
    assert!(ready(&agent), "tcp probe did not start");
    // The echo server in the container may take a moment to listen.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the container's listener: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the container never listened on {port}: {e}"),
        }
    };
    eprintln!("connected after {:?}", t0.elapsed());
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client.write_all(b"hello container\n").unwrap();
    let mut echo = [0u8; 16];
    client.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello container\n");

    let server = [
        ("role", "0".to_owned()),
        ("server_port", port.to_string()),
        ("client_ip", "127.0.0.1".to_owned()),
    ];
    expect_row(&agent, "the container's server row", &server, |r| {
        r["rx_bytes"] == 16.0 && r["link_count"] == 1.0
    });
    eprintln!("row after {:?}", t0.elapsed());
    let samples = agent.scrape().unwrap();
    let s = samples
        .iter()
        .find(|s| {
            s.name.starts_with("gala_gopher_tcp_link_")
                && server.iter().all(|(k, v)| s.label(k) == v)
        })
        .unwrap();
    assert_eq!(s.label("container_id"), &id[..12], "{s:?}");
    assert_eq!(s.label("container_name"), name, "{s:?}");
    assert_eq!(s.label("container_image"), IMAGE, "{s:?}");
    assert_eq!(s.label("pod"), "", "not in a pod: {s:?}");
    assert_eq!(s.label("process_name"), "busybox", "{s:?}");

    // The other end is this test, a host process: no container labels.
    let me = [
        ("role", "1".to_owned()),
        ("server_port", port.to_string()),
        ("tgid", std::process::id().to_string()),
    ];
    let r = row(&samples, &me);
    assert!(r.is_some(), "the client row is there too");
    let c = samples
        .iter()
        .find(|s| {
            s.name.starts_with("gala_gopher_tcp_link_") && me.iter().all(|(k, v)| s.label(k) == v)
        })
        .unwrap();
    assert_eq!(c.label("container_id"), "", "{c:?}");
}
