//! The .deb beside Debian's own `gopher` package (the University of Minnesota Gopher-protocol
//! client: /usr/bin/gopher, /etc/gopher/, /usr/share/doc/gopher/). That package is downloaded
//! from the Debian mirror with `apt-get download`, so its real, current file list is compared
//! with ours, and both are installed with dpkg, which refuses any file two packages share.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use super::{DPKG, Installed, PACKAGE, build_deb, check_config, ok, run};
use crate::common::{output_text, require};

/// Debian's package, as named in its archive.
const DEBIAN: &str = "gopher";

/// Written before we install Debian's package, removed after we purge it: it is found installed
/// without this marker only when the host's owner installed it (then we leave it alone).
const DEBIAN_MARKER: &str = "/var/lib/gopher-packaging-test-debian";

fn debian_installed() -> bool {
    run(Command::new("dpkg-query").args(["-W", "-f=${Status}", DEBIAN]))
        .stdout
        .starts_with(b"install ok installed")
}

/// `apt-get download gopher` into `dir`: the .deb's path, None when no mirror answers.
fn download_debian(dir: &Path) -> Option<PathBuf> {
    // As root, apt's download sandbox user (_apt) cannot write a private temp dir: say root.
    let out = run(Command::new("apt-get").current_dir(dir).args([
        "-o",
        "APT::Sandbox::User=root",
        "download",
        DEBIAN,
    ]));
    if !out.status.success() {
        eprintln!("apt-get download {DEBIAN}: {}", output_text(&out));
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
}

/// Every path a .deb holds, as `dpkg-deb -c` lists it: ("/usr/bin/gopher", is a directory).
fn contents(deb: &Path) -> BTreeSet<(String, bool)> {
    ok(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter_map(|l| {
            let dir = l.starts_with('d');
            // Mode owner size date time path [-> target]: the path is the sixth field.
            let path = l.split_whitespace().nth(5)?.trim_start_matches('.');
            let path = path.trim_end_matches('/');
            (!path.is_empty()).then(|| (path.to_owned(), dir))
        })
        .collect()
}

/// Purges Debian's package when dropped, if this test installed it.
struct DebianInstalled;

impl Drop for DebianInstalled {
    fn drop(&mut self) {
        if Path::new(DEBIAN_MARKER).exists() {
            let out = run(Command::new("dpkg").args(["--purge", DEBIAN]));
            assert!(out.status.success(), "dpkg --purge: {}", output_text(&out));
            let _ = std::fs::remove_file(DEBIAN_MARKER);
        }
    }
}

#[test]
fn deb_installs_beside_debians_gopher_package() {
    let _turn = DPKG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if Installed::prepare().is_none() {
        return;
    }
    if debian_installed() && !Path::new(DEBIAN_MARKER).exists() {
        // The host's own Gopher client: the side-by-side install is already the real case,
        // but purging it afterwards is not ours to do.
        require(
            false,
            "a host without Debian's gopher package of its own (not touching it)",
        );
        return;
    }
    let downloads = tempfile::tempdir().unwrap();
    let Some(theirs) = download_debian(downloads.path()) else {
        require(
            false,
            "Debian's gopher package (apt-get download gopher: a Debian mirror)",
        );
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let ours = build_deb(out.path());

    // Their real list still holds what made the old names collide (else this test proves
    // nothing): the client's command, its /etc directory and its doc directory.
    let their_paths = contents(&theirs);
    for (path, dir) in [
        ("/usr/bin/gopher", false),
        ("/etc/gopher", true),
        ("/usr/share/doc/gopher", true),
    ] {
        assert!(
            their_paths.contains(&(path.to_owned(), dir)),
            "Debian's gopher no longer ships {path}: {their_paths:?}"
        );
    }
    // What both packages name may only be directories both treat as shared (/usr/bin, /etc):
    // never a file, and never a directory of the package's own.
    let our_paths = contents(&ours);
    let their_dirs: BTreeSet<&str> = their_paths
        .iter()
        .filter(|(_, dir)| *dir)
        .map(|(p, _)| p.as_str())
        .collect();
    let shared: Vec<&(String, bool)> = our_paths
        .iter()
        .filter(|(p, _)| their_paths.iter().any(|(q, _)| q == p))
        .collect();
    for (path, dir) in &shared {
        assert!(
            *dir && their_dirs.contains(path.as_str()),
            "{path} is in both packages"
        );
        assert!(
            !path.contains("gopher"),
            "{path}: a directory of Debian's gopher holds ours"
        );
    }
    assert!(
        shared.iter().any(|(p, _)| p == "/usr/bin"),
        "no common directory found: is the listing read? {shared:?}"
    );

    // dpkg agrees: Debian's first, then ours (dpkg refuses to overwrite another package's file).
    std::fs::write(
        DEBIAN_MARKER,
        "installed by agent/tests/packaging/debian.rs\n",
    )
    .unwrap();
    let _debian_installed = DebianInstalled;
    ok(Command::new("dpkg").arg("-i").arg(&theirs));
    let ours_installed = Installed::mark();
    let said = run(Command::new("dpkg").arg("-i").arg(&ours));
    assert!(said.status.success(), "{}", output_text(&said));
    for (path, owner) in [
        ("/usr/bin/gopher", DEBIAN),
        ("/usr/bin/gopher-agent", PACKAGE),
        ("/etc/gopher-agent/probes.toml", PACKAGE),
    ] {
        let found = ok(Command::new("dpkg").args(["-S", path]));
        assert_eq!(found.trim(), format!("{owner}: {path}"));
    }
    // Both intact (checksums of every file as shipped), and nothing half-configured.
    for package in [DEBIAN, PACKAGE] {
        let out = run(Command::new("dpkg").args(["--verify", package]));
        assert!(
            out.status.success() && output_text(&out).trim().is_empty(),
            "dpkg --verify {package}: {}",
            output_text(&out)
        );
    }
    assert_eq!(ok(Command::new("dpkg").arg("--audit")).trim(), "");
    assert_eq!(
        check_config("/etc/gopher-agent/probes.toml"),
        "/etc/gopher-agent/probes.toml: OK\n"
    );

    // Purging ours leaves the Gopher client whole.
    drop(ours_installed);
    let out = run(Command::new("dpkg").args(["--verify", DEBIAN]));
    assert!(
        out.status.success() && output_text(&out).trim().is_empty(),
        "{}",
        output_text(&out)
    );
    assert!(Path::new("/usr/bin/gopher").is_file());
    assert!(!Path::new("/usr/bin/gopher-agent").exists());
}
