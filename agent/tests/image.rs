//! The agent's container image and the Kubernetes base, for real and without a cluster:
//! - the kustomize base (packaging/kubernetes) renders with `kubectl kustomize`, alone and
//!   through an overlay that moves the image to a registry, into objects that pass strict
//!   Kubernetes schema validation and are exactly daemonset.yaml's and service.yaml's (no drift);
//! - the DaemonSet names the image scripts/build-image.sh builds;
//! - that script builds the image (mmdebstrap + the .deb + packaging/container/Containerfile,
//!   buildah), and podman runs it the way the DaemonSet says, read from daemonset.yaml: host
//!   network and PID namespaces, its capabilities and nothing more, its mounts, a read-only root,
//!   its command and the ConfigMap's config. The agent inside must answer /healthz and serve
//!   /metrics with the tcp_link row of this test's own host traffic (the host's pid included).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    Sample, free_port, have, http_get, is_root,
    kube::{
        have_kubernetes_validate, kubernetes_validate, packaging, yaml_documents, yaml_documents_of,
    },
    output_text,
    podman::{Container, have_podman_and_buildah, podman, run},
    require, scrape_url,
    tcp::row,
};
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have_kustomize() -> bool {
    have("kubectl", &["kustomize", "--help"])
}

/// `kubectl kustomize DIR`, which must succeed.
fn kustomize(dir: &Path) -> String {
    run(Command::new("kubectl").arg("kustomize").arg(dir))
}

/// The objects' (kind, name) and contents, in a stable order.
fn by_kind_and_name(docs: Vec<Value>) -> Vec<(String, String, Value)> {
    let mut out: Vec<_> = docs
        .into_iter()
        .map(|d| {
            let kind = d["kind"].as_str().unwrap().to_owned();
            let name = d["metadata"]["name"].as_str().unwrap().to_owned();
            (kind, name, d)
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

fn daemonset(docs: &[Value]) -> &Value {
    docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap()
}

/// What scripts/build-image.sh names its image by default.
fn default_image_name() -> String {
    run(Command::new(workspace().join("scripts/build-image.sh")).arg("--print-tag"))
}

#[test]
fn kustomize_base_renders_the_manifests_validated_and_names_the_built_image() {
    if !require(
        have_kustomize() && have_kubernetes_validate(),
        "kubectl with kustomize and kubernetes-validate (scripts/test-deps.sh)",
    ) {
        return;
    }
    let base = packaging("kubernetes");
    let dir = tempfile::tempdir().unwrap();
    let rendered = kustomize(&base);
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let (ok, said) = kubernetes_validate(&file);
    assert!(ok, "{said}");
    // Namespace, ConfigMap, ServiceAccount, DaemonSet, Service.
    assert_eq!(said.matches(" passed for resource ").count(), 5, "{said}");

    // One source: the base's objects are the plain manifests', unchanged.
    let mut plain = yaml_documents(&base.join("daemonset.yaml"));
    plain.extend(yaml_documents(&base.join("service.yaml")));
    let docs = yaml_documents_of(&rendered);
    assert_eq!(by_kind_and_name(docs.clone()), by_kind_and_name(plain));

    // The Service finds the DaemonSet's pods and names their port.
    let ds = daemonset(&docs);
    let svc = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "selector {k}");
    }
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        svc["spec"]["ports"][0]["targetPort"],
        container["ports"][0]["name"]
    );
    assert_eq!(svc["spec"]["clusterIP"], "None");
    // The pod runs under its own account, with no API token.
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "gopher");
    assert_eq!(pod["automountServiceAccountToken"], false);

    // The image the DaemonSet runs is the one scripts/build-image.sh builds (name and version).
    let built = default_image_name();
    assert_eq!(container["image"], built.as_str());
    assert!(
        built.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "{built}"
    );

    // An overlay (as kustomization.yaml shows) moves the image to a registry.
    let overlay = dir.path().join("overlay");
    std::fs::create_dir(&overlay).unwrap();
    // kustomize wants a relative path to a local base; `bases:` (deprecated, `resources:` in
    // newer kustomize) is what Debian's kubectl 1.20 (kustomize 2.0) also reads.
    let up = overlay.components().count() - 1;
    let relative = format!(
        "{}{}",
        "../".repeat(up),
        base.canonicalize()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_start_matches('/')
    );
    let (name, _) = built.rsplit_once(':').unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "bases:\n  - {relative}\nimages:\n  - name: {name}\n    newName: registry.example.com/gopher-agent\n    newTag: 9.9.9\n"
        ),
    )
    .unwrap();
    let rendered = kustomize(&overlay);
    std::fs::write(&file, &rendered).unwrap();
    let (ok, said) = kubernetes_validate(&file);
    assert!(ok, "{said}");
    let docs = yaml_documents_of(&rendered);
    assert_eq!(
        daemonset(&docs)["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/gopher-agent:9.9.9"
    );
}

/// The release binary the packages (and so the image) take, in cargo's target dir.
fn release_binary() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from)
        .join("release/gopher")
}

/// Removes the test's image however the test ends.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

/// Kubernetes quantities as podman's sizes: "16Mi" -> "16m".
fn size(quantity: &str) -> String {
    quantity
        .replace("Mi", "m")
        .replace("Gi", "g")
        .replace("Ki", "k")
}

/// `podman run` arguments that do what the DaemonSet's pod spec says, for `config_dir` as the
/// ConfigMap's volume: the test reads them from daemonset.yaml, so the manifest is what runs.
fn podman_args_of(ds: &Value, config_dir: &Path) -> Vec<String> {
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let mut args: Vec<String> = Vec::new();
    let mut push = |a: &[&str]| args.extend(a.iter().map(|s| (*s).to_owned()));
    if pod["hostNetwork"] == true {
        push(&["--network", "host"]);
    }
    if pod["hostPID"] == true {
        push(&["--pid", "host"]);
    }
    let sc = &c["securityContext"];
    assert_eq!(
        sc["privileged"], false,
        "the test runs what the manifest says"
    );
    push(&["--user", &sc["runAsUser"].to_string()]);
    if sc["allowPrivilegeEscalation"] == false {
        push(&["--security-opt", "no-new-privileges"]);
    }
    if sc["readOnlyRootFilesystem"] == true {
        // Only the manifest's own writable mounts (podman would add tmpfs on /tmp, /run).
        push(&["--read-only", "--read-only-tmpfs=false"]);
    }
    for cap in sc["capabilities"]["drop"].as_array().unwrap() {
        push(&["--cap-drop", cap.as_str().unwrap()]);
    }
    for cap in sc["capabilities"]["add"].as_array().unwrap() {
        push(&["--cap-add", &format!("CAP_{}", cap.as_str().unwrap())]);
    }
    if sc["seccompProfile"]["type"] == "Unconfined" {
        push(&["--security-opt", "seccomp=unconfined"]);
    }
    if sc["appArmorProfile"]["type"] == "Unconfined" {
        push(&["--security-opt", "apparmor=unconfined"]);
    }
    if let Some(memory) = c["resources"]["limits"]["memory"].as_str() {
        push(&["--memory", &size(memory)]);
    }
    let volumes = pod["volumes"].as_array().unwrap();
    for m in c["volumeMounts"].as_array().unwrap() {
        let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
        let target = m["mountPath"].as_str().unwrap();
        let ro = m["readOnly"] == true;
        if let Some(path) = v["hostPath"]["path"].as_str() {
            if v["hostPath"]["type"] == "DirectoryOrCreate" {
                // As the kubelet does.
                std::fs::create_dir_all(path).unwrap();
            }
            let mut opts = vec![if ro { "ro" } else { "rw" }];
            if m["mountPropagation"] == "HostToContainer" {
                opts.push("rslave");
            }
            push(&["-v", &format!("{path}:{target}:{}", opts.join(","))]);
        } else if v["configMap"].is_object() {
            push(&[
                "-v",
                &format!(
                    "{}:{target}:{}",
                    config_dir.display(),
                    if ro { "ro" } else { "rw" }
                ),
            ]);
        } else if v["emptyDir"].is_object() {
            let limit = v["emptyDir"]["sizeLimit"].as_str().map(size).unwrap();
            push(&["--tmpfs", &format!("{target}:rw,size={limit}")]);
        } else {
            panic!("a volume kind this test does not know: {v}");
        }
    }
    let command: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    push(&["--entrypoint", &serde_json::to_string(&command).unwrap()]);
    args
}

/// The ConfigMap's config with this test's ports (the host's network is shared with other
/// tests and agents) and the tcp probe on this test's server port only.
fn test_config(configmap: &str, web: u16, control: u16, server: u16) -> String {
    let tcp = "name = \"tcp\"\nswitch = \"on\"\ninterval = 5\n";
    assert!(configmap.contains(tcp) && configmap.contains("port = 8888\n"));
    assert!(!configmap.contains("[control]"));
    configmap
        .replace(
            tcp,
            &format!("{tcp}[probes.params]\ninclude_ports = [{server}]\n"),
        )
        .replace("port = 8888\n", &format!("port = {web}\n"))
        + &format!("\n[control]\nlisten = \"127.0.0.1:{control}\"\n")
}

/// The capability numbers (capability.h) of the DaemonSet's names.
fn cap_mask(names: &[Value]) -> u64 {
    names
        .iter()
        .map(|n| match n.as_str().unwrap() {
            "DAC_READ_SEARCH" => 2,
            "KILL" => 5,
            "SETGID" => 6,
            "SETUID" => 7,
            "SETPCAP" => 8,
            "NET_ADMIN" => 12,
            "SYS_PTRACE" => 19,
            "SYS_ADMIN" => 21,
            "PERFMON" => 38,
            "BPF" => 39,
            other => panic!("add {other} to cap_mask"),
        })
        .fold(0, |m, bit| m | (1u64 << bit))
}

/// Builds the image with scripts/build-image.sh under `tag` (removed when the guard drops).
fn build_image(tag: &str) -> Image {
    let image = Image(tag.to_owned());
    let out = Command::new(workspace().join("scripts/build-image.sh"))
        .args(["--tag", tag])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-image.sh: {}",
        output_text(&out)
    );
    let version = run(podman().args([
        "image",
        "inspect",
        "-f",
        "{{index .Labels \"org.opencontainers.image.version\"}}",
        tag,
    ]));
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    image
}

/// Starts `tag` as container `name` the way the DaemonSet `ds` runs its pod.
fn start_as(ds: &Value, tag: &str, config_dir: &Path, name: &str) -> Container {
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let mut cmd = podman();
    cmd.args(["run", "-d", "--name", name])
        // Within the hard limits of hosts that cap them (this VM: 20,000 files).
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .args(podman_args_of(ds, config_dir))
        .arg(tag)
        .args(
            c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap()),
        );
    run(&mut cmd);
    Container(name.to_owned())
}

/// The agent in container `name` runs as root with exactly the capabilities of the DaemonSet's
/// container `c`, from the image's package.
fn assert_daemonset_privileges(name: &str, c: &Value) {
    let pid = run(podman().args(["inspect", "-f", "{{.State.Pid}}", name]));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap()
    };
    let caps = cap_mask(
        c["securityContext"]["capabilities"]["add"]
            .as_array()
            .unwrap(),
    );
    assert_eq!(field("CapBnd:"), caps, "{status}");
    assert!(status.contains("\nUid:\t0\t"), "{status}");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, Path::new("/usr/bin/gopher-agent"));
}

/// Scrapes `url` until `pred` holds (a minute at most; then fails with the last scrape and the
/// container's log).
fn wait_for(
    url: &str,
    what: &str,
    logs: &dyn Fn() -> String,
    pred: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let last = scrape_url(url);
        if let Ok(s) = &last
            && pred(s)
        {
            return last.unwrap();
        }
        assert!(Instant::now() < deadline, "no {what}: {last:?}\n{}", logs());
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_image_runs_as_the_daemonset_says_and_serves_host_links() {
    if !require(is_root(), "root (buildah, podman, eBPF)")
        || !require(
            have_podman_and_buildah()
                && have("mmdebstrap", &["--version"])
                && have("cargo", &["deb", "--version"]),
            "podman, buildah, mmdebstrap and cargo-deb (scripts/test-deps.sh)",
        )
        || !require(
            release_binary().exists(),
            "the release binary (scripts/setup.sh: cargo build --release)",
        )
        || !require(
            have_kubernetes_validate(),
            "PyYAML (with kubernetes-validate)",
        )
    {
        return;
    }
    let t0 = Instant::now();
    let tag = format!("localhost/gopher-agent-test:{}", std::process::id());
    let _image = build_image(&tag);
    eprintln!("image built in {:?}", t0.elapsed());

    let docs = yaml_documents(&packaging("kubernetes/daemonset.yaml"));
    let ds = daemonset(&docs);
    let configmap = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["probes.toml"].as_str())
        .unwrap();
    let (web, control) = (free_port(), free_port());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap().port();
    let config_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        config_dir.path().join("probes.toml"),
        test_config(configmap, web, control, server),
    )
    .unwrap();

    let name = format!("gopher-image-{}", std::process::id());
    let _container = start_as(ds, &tag, config_dir.path(), &name);
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let logs = || {
        output_text(
            &Command::new("podman")
                .args(["logs", &name])
                .output()
                .unwrap(),
        )
    };

    // Ready as the readinessProbe sees it.
    let probe = &c["readinessProbe"]["httpGet"];
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        match http_get(web, probe["path"].as_str().unwrap()) {
            Some((200, _)) => break,
            other => assert!(
                Instant::now() < deadline,
                "never ready: {other:?}\n{}",
                logs()
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("ready after {:?}", t0.elapsed());
    assert_daemonset_privileges(&name, c);

    // Host traffic of this test: its row, with this (host) process as the server's peer.
    // /healthz answers before the probes start: a link opened before the tcp probe attached
    // would count from its first reading, not from zero.
    let url = format!("http://127.0.0.1:{web}/metrics");
    wait_for(&url, "the tcp probe running", &logs, |s| {
        s.iter().any(|x| {
            x.name == "gopher_probe_state"
                && x.label("probe") == "tcp"
                && x.label("state") == "running"
                && x.value == 1.0
        })
    });
    let mut client = TcpStream::connect(("127.0.0.1", server)).unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    client.write_all(b"hello from the host\n").unwrap();
    let mut got = [0u8; 20];
    accepted.read_exact(&mut got).unwrap();
    let want = [
        ("role", "0".to_owned()),
        ("server_port", server.to_string()),
        ("tgid", std::process::id().to_string()),
    ];
    let samples = wait_for(&url, "this test's tcp_link row", &logs, |s| {
        row(s, &want).is_some_and(|r| r["rx_bytes"] == 20.0)
    });
    eprintln!("row after {:?}", t0.elapsed());
    let info = samples
        .iter()
        .find(|s| s.name == "gopher_build_info")
        .unwrap();
    assert_eq!(info.label("version"), env!("CARGO_PKG_VERSION"));

    // `kubectl exec … -- gopher-agent ctl list`, as the manifest says: the token on the state
    // mount, the address from the config.
    let listed = run(podman().args(["exec", &name, "/usr/bin/gopher-agent", "ctl", "list"]));
    assert!(listed.contains("tcp"), "{listed}");
}
