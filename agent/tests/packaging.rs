//! The packages and the fleet wiring, for real: the .deb is built with cargo-deb from the release
//! binary, installed with dpkg on this machine, its config validated by the installed agent, and
//! purged; the .rpm is built with cargo-generate-rpm and read back with rpm; the systemd unit
//! passes `systemd-analyze verify`; the Ansible role installs and configures the agent on
//! localhost; and the .deb installs beside Debian's own `gopher` package (a Gopher-protocol
//! client, downloaded from the Debian mirror) with no path in common (`debian.rs`).
//!
//! dpkg changes the host, so these tests guard it: they refuse (fail, or skip outside CI) to run
//! where a `gopher-agent` package is installed that they did not install themselves (a marker file
//! records theirs), and every install is purged by a guard, also when an assertion fails.
//! Nothing is enabled or started: the unit is enabled by the package's maintainer scripts only
//! as symlinks (no systemd runs here; the scripts skip systemctl then), and purge removes them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
// The crate root names its submodules from tests/: this one lives beside it in packaging/.
#[path = "packaging/ansible.rs"]
mod ansible;
#[path = "packaging/debian.rs"]
mod debian;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Mutex,
};

use common::{have, is_root, output_text, require};

/// dpkg's database is one per host: the tests that install take turns.
static DPKG: Mutex<()> = Mutex::new(());

/// Written before our install, removed after our purge: a `gopher-agent` package found installed with
/// this marker present is a leftover of an interrupted run, which may be purged.
const MARKER: &str = "/var/lib/gopher-packaging-test";

/// Every path the package installs (files; their directories are checked via the purge).
const PACKAGE_FILES: [&str; 13] = [
    "/usr/bin/gopher-agent",
    "/etc/gopher-agent/probes.toml",
    "/usr/lib/systemd/system/gopher-agent.service",
    "/usr/share/gopher-agent/extend_probes/nginx_probe.py",
    "/usr/share/gopher-agent/extend_probes/nginx.meta.toml",
    "/usr/share/gopher-agent/extend_probes/redis_probe.py",
    "/usr/share/gopher-agent/extend_probes/redis.meta.toml",
    "/usr/share/gopher-agent/extend_probes/haproxy_probe.py",
    "/usr/share/gopher-agent/extend_probes/haproxy.meta.toml",
    "/usr/share/doc/gopher-agent/README.md",
    "/usr/share/doc/gopher-agent/config.md",
    "/usr/share/doc/gopher-agent/copyright",
    // Created by deb-systemd-helper in postinst (enable), removed on purge.
    "/etc/systemd/system/multi-user.target.wants/gopher-agent.service",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The release binary the packages take (`scripts/setup.sh` builds it), in cargo's target dir.
fn release_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    let bin = target.join("release/gopher");
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/setup.sh (cargo build --release)",
        bin.display()
    );
    bin
}

/// Builds the .deb into `out` from the release binary, as packaging/README.md says to.
fn build_deb(out: &Path) -> PathBuf {
    let bin = release_binary();
    ok(Command::new("cargo")
        .current_dir(workspace())
        .args(["deb", "-p", "gopher", "--no-build", "--fast", "--output"])
        .arg(out));
    let deb = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("cargo deb wrote no .deb");
    // The package carries the binary cargo built (stripped by cargo-deb: same GNU build id).
    let unpacked = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(unpacked.path()));
    assert_eq!(
        build_id(&unpacked.path().join("usr/bin/gopher-agent")),
        build_id(&bin)
    );
    deb
}

fn build_id(elf: &Path) -> String {
    let notes = ok(Command::new("readelf").arg("-n").arg(elf));
    notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build id in {}", elf.display()))
        .to_owned()
}

/// The .deb's package name (agent/Cargo.toml: not `gopher`, which is Debian's Gopher client).
const PACKAGE: &str = "gopher-agent";

fn installed() -> bool {
    run(Command::new("dpkg-query").args(["-W", "-f=${Status}", PACKAGE]))
        .stdout
        .starts_with(b"install ok installed")
}

/// Purges the test's install when dropped, so that a failed assertion leaves the host clean.
struct Installed;

impl Installed {
    /// None (after `require`) when this host cannot host the test.
    fn prepare() -> Option<()> {
        if !require(is_root(), "root (dpkg installs the package)")
            || !require(
                have("dpkg", &["--version"]) && have("cargo", &["deb", "--version"]),
                "dpkg and cargo-deb (scripts/test-deps.sh installs cargo-deb)",
            )
        {
            return None;
        }
        if installed() || Path::new("/etc/gopher-agent").exists() {
            if Path::new(MARKER).exists() {
                purge();
            } else {
                require(
                    false,
                    "a host without a gopher-agent package or /etc/gopher-agent of its own (not touching it)",
                );
                return None;
            }
        }
        Some(())
    }

    fn mark() -> Self {
        std::fs::write(MARKER, "installed by agent/tests/packaging.rs\n").unwrap();
        Installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        purge();
    }
}

fn purge() {
    let out = run(Command::new("dpkg").args(["--purge", PACKAGE]));
    assert!(out.status.success(), "dpkg --purge: {}", output_text(&out));
    let _ = std::fs::remove_file("/var/cache/gopher-agent.deb");
    let _ = std::fs::remove_file(MARKER);
}

/// `/usr/bin/gopher-agent --check-config FILE` of the installed agent.
fn check_config(file: &str) -> String {
    ok(Command::new("/usr/bin/gopher-agent").args(["--check-config", file]))
}

#[test]
fn packaged_config_is_the_default_with_installed_paths() {
    // packaging/probes.toml is what /etc/gopher-agent/probes.toml becomes; it must not drift from the
    // documented default: the only difference allowed is where the extension probes live.
    let repo = std::fs::read_to_string(workspace().join("probes.toml")).unwrap();
    let packaged = std::fs::read_to_string(workspace().join("packaging/probes.toml")).unwrap();
    let expected: String = repo
        .lines()
        .map(|l| {
            if l == "probe_user = \"nobody\"" {
                // The package creates a user of its own for its probes.
                "probe_user = \"gopher-probe\"".to_owned()
            } else if l == "state_file = \"\"" {
                // The package keeps runtime changes in its StateDirectory.
                "state_file = \"/var/lib/gopher-agent/state.toml\"".to_owned()
            } else if l.starts_with("command = ") || l.starts_with("meta = ") {
                l.replace(
                    "\"packaging/extend_probes/",
                    "\"/usr/share/gopher-agent/extend_probes/",
                )
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    assert_eq!(packaged, expected);
    assert_eq!(
        packaged
            .matches("/usr/share/gopher-agent/extend_probes/")
            .count(),
        6
    );
}

/// The unit as shipped, with its absolute program paths pointed at this build (verify wants
/// them to exist), checked by systemd's own verifier. Returns what it said.
fn analyze_verify(unit_text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("gopher-agent.service");
    std::fs::write(&unit, unit_text).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    (out.status.success(), output_text(&out))
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    if !require(
        have("systemd-analyze", &["--version"]),
        "systemd-analyze (Debian package systemd)",
    ) {
        return;
    }
    let shipped =
        std::fs::read_to_string(workspace().join("packaging/systemd/gopher-agent.service"))
            .unwrap();
    let unit = shipped.replace("/usr/bin/gopher-agent", env!("CARGO_BIN_EXE_gopher"));
    let (success, said) = analyze_verify(&unit);
    assert!(
        success && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
    // The verifier does complain: a misspelt setting and a relative program path.
    let (_, said) = analyze_verify(&unit.replace("ProtectSystem=strict", "ProtectSytem=strict"));
    assert!(said.contains("ProtectSytem"), "{said}");
    let (success, said) = analyze_verify(&unit.replace(
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_gopher")),
        "ExecStart=gopher-not-there",
    ));
    assert!(!success, "{said}");

    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
    ] {
        assert!(shipped.lines().any(|l| l == line), "missing {line}");
    }
    assert!(shipped.lines().any(|l| l.starts_with("WatchdogSec=")));
    let caps = shipped
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap();
    let mut caps: Vec<_> = caps.split_whitespace().collect();
    caps.sort_unstable();
    assert_eq!(
        caps,
        [
            "CAP_BPF",
            "CAP_DAC_READ_SEARCH",
            "CAP_KILL",
            "CAP_NET_ADMIN",
            "CAP_PERFMON",
            "CAP_SETGID",
            "CAP_SETPCAP",
            "CAP_SETUID",
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE",
        ]
    );

    // systemd's own exposure score (0 = locked down, 10 = unprotected): the hardening holds.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gopher-agent.service");
    std::fs::write(&path, &unit).unwrap();
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path));
    let said = output_text(&out);
    let score: f64 = said
        .lines()
        .find_map(|l| l.split("exposure level for gopher-agent.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{said}"));
    assert!(score <= 4.0, "exposure {score} > 4.0:\n{said}");
}

/// Modes (issue 13): the config may hold secrets, so it is not world-readable; the probes'
/// user exists, unprivileged, and the config runs the shipped probes as that user; the
/// installed agent creates its control token 0600.
fn installed_modes_user_and_token() {
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o7777
    };
    assert_eq!(mode("/etc/gopher-agent/probes.toml"), 0o640);
    assert_eq!(mode("/usr/bin/gopher-agent"), 0o755);
    let probe_user = ok(Command::new("getent").args(["passwd", "gopher-probe"]));
    let uid: u32 = probe_user.split(':').nth(2).unwrap().parse().unwrap();
    assert!(uid > 0 && uid < 1000, "a system user: {probe_user}");
    assert!(
        std::fs::read_to_string("/etc/gopher-agent/probes.toml")
            .unwrap()
            .contains("\nprobe_user = \"gopher-probe\"\n")
    );
    // The control token: created 0600 by the installed agent's first start (a throwaway
    // state directory, so the real one is left alone).
    let state = tempfile::tempdir().unwrap();
    let token = state.path().join("control.token");
    let cfg = state.path().join("gopher.toml");
    std::fs::write(
        &cfg,
        format!(
            "[web_server]\nbind_addr = \"127.0.0.1\"\nport = {}\n[control]\nlisten = \"127.0.0.1:{}\"\ntoken_file = \"{}\"\n",
            common::free_port(),
            common::free_port(),
            token.display()
        ),
    )
    .unwrap();
    let mut agent = Command::new("/usr/bin/gopher-agent")
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !token.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(mode(token.to_str().unwrap()), 0o600);
}

#[test]
fn deb_installs_validates_and_purges_cleanly() {
    let _turn = DPKG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if Installed::prepare().is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(out.path());

    let info = ok(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(info.contains("Package: gopher-agent\n"), "{info}");
    // librdkafka's TLS links the system OpenSSL: $auto must have found it.
    assert!(info.contains("libssl3"), "{info}");
    let ctrl = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(ctrl.path()));
    assert_eq!(
        std::fs::read_to_string(ctrl.path().join("conffiles")).unwrap(),
        "/etc/gopher-agent/probes.toml\n"
    );

    let guard = Installed::mark();
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(installed());
    for f in PACKAGE_FILES {
        assert!(Path::new(f).symlink_metadata().is_ok(), "{f} not installed");
    }
    let listed = ok(Command::new("dpkg").args(["-L", PACKAGE]));
    for f in &PACKAGE_FILES[..PACKAGE_FILES.len() - 1] {
        assert!(
            listed.lines().any(|l| l == *f),
            "dpkg -L lacks {f}:\n{listed}"
        );
    }

    installed_modes_user_and_token();

    // The installed agent vouches for the installed config, meta files included: the paths in
    // /etc/gopher-agent/probes.toml resolve on the installed system.
    assert_eq!(
        check_config("/etc/gopher-agent/probes.toml"),
        "/etc/gopher-agent/probes.toml: OK\n"
    );
    let version = ok(Command::new("/usr/bin/gopher-agent").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("gopher {}", env!("CARGO_PKG_VERSION"))
    );
    for probe in ["nginx", "redis", "haproxy"] {
        let help = ok(Command::new(format!(
            "/usr/share/gopher-agent/extend_probes/{probe}_probe.py"
        ))
        .arg("--help"));
        assert!(help.contains("--interval"), "{probe}: {help}");
    }
    // The unit as installed, with the installed binary.
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "/usr/lib/systemd/system/gopher-agent.service"]));
    assert!(
        out.status.success() && output_text(&out).trim().is_empty(),
        "{}",
        output_text(&out)
    );

    // A local edit to the conffile survives `remove` and goes with `purge`.
    let edited =
        std::fs::read_to_string("/etc/gopher-agent/probes.toml").unwrap() + "# local edit\n";
    std::fs::write("/etc/gopher-agent/probes.toml", &edited).unwrap();
    ok(Command::new("dpkg").args(["--remove", PACKAGE]));
    assert!(!Path::new("/usr/bin/gopher-agent").exists());
    assert_eq!(
        std::fs::read_to_string("/etc/gopher-agent/probes.toml").unwrap(),
        edited
    );
    drop(guard);
    assert!(!installed());
    for f in PACKAGE_FILES.iter().chain(&[
        "/etc/gopher-agent",
        "/usr/share/gopher-agent",
        "/usr/share/doc/gopher-agent",
    ]) {
        assert!(
            Path::new(f).symlink_metadata().is_err(),
            "{f} left after purge"
        );
    }
    // deb-systemd-helper's records of the enablement went with the purge too.
    for dir in [
        "/var/lib/systemd/deb-systemd-helper-enabled",
        "/var/lib/systemd/deb-systemd-helper-masked",
    ]
    .into_iter()
    .filter(|d| Path::new(d).exists())
    {
        let left = ok(Command::new("find").args([dir, "-name", "*gopher*"]));
        assert!(left.is_empty(), "left in {dir}: {left}");
    }
    let state = run(Command::new("dpkg-query").args(["-W", PACKAGE]));
    assert!(
        !state.status.success(),
        "dpkg still knows {PACKAGE}: {}",
        output_text(&state)
    );
}

#[test]
fn rpm_has_the_files_config_and_scripts() {
    if !require(
        have("rpm", &["--version"]) && have("cargo", &["generate-rpm", "--version"]),
        "rpm and cargo-generate-rpm (scripts/test-deps.sh installs both)",
    ) {
        return;
    }
    release_binary();
    let out = tempfile::tempdir().unwrap();
    let rpm = out.path().join("gopher-agent.rpm");
    ok(Command::new("cargo")
        .current_dir(workspace())
        .args(["generate-rpm", "-p", "agent", "-o"])
        .arg(&rpm));
    let query = |flag: &str| ok(Command::new("rpm").args(["-qp", flag]).arg(&rpm));
    let files: Vec<String> = query("-l").lines().map(str::to_owned).collect();
    for f in &PACKAGE_FILES[..PACKAGE_FILES.len() - 2] {
        assert!(files.iter().any(|l| l == f), "rpm lacks {f}: {files:?}");
    }
    assert_eq!(query("-c").trim(), "/etc/gopher-agent/probes.toml");
    let scripts = query("--scripts");
    assert!(
        scripts.contains("systemctl --no-reload disable --now gopher-agent.service"),
        "{scripts}"
    );
    // The probes' user is created before the files land; the config is not world-readable.
    assert!(
        scripts.contains("useradd -r") && scripts.contains("gopher-probe"),
        "{scripts}"
    );
    let modes = query("--qf=[%{FILEMODES:perms} %{FILENAMES}\n]");
    assert!(
        modes
            .lines()
            .any(|l| l == "-rw-r----- /etc/gopher-agent/probes.toml"),
        "{modes}"
    );
    let requires = query("--requires");
    assert!(requires.contains("procps-ng"), "{requires}");
    assert!(requires.contains("libssl.so.3"), "{requires}");
    let info = query("-i");
    assert!(info.contains("Name        : gopher-agent\n"), "{info}");
    assert!(
        info.contains(&format!("Version     : {}", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    // The packaged config is byte for byte the one the .deb ships.
    let extract = tempfile::tempdir().unwrap();
    ok(Command::new("sh")
        .current_dir(extract.path())
        .arg("-c")
        .arg(format!(
            "rpm2cpio '{}' | cpio -idm --quiet ./etc/gopher-agent/probes.toml",
            rpm.display()
        )));
    assert_eq!(
        std::fs::read(extract.path().join("etc/gopher-agent/probes.toml")).unwrap(),
        std::fs::read(workspace().join("packaging/probes.toml")).unwrap()
    );
}
