//! Containers for the tests, with Debian's podman and buildah and no image registry: commands
//! that must succeed, podman on a runtime that works on this host, and a guard that removes a
//! container however the test ends. Shared by containers.rs (an image from scratch) and image.rs
//! (the agent's own image).

use std::process::Command;

use super::{have, output_text};

/// Runs `cmd`, which must succeed; its trimmed stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `podman`, on runc where installed: crun refuses hybrid cgroup hosts (v1 controllers + v2),
/// runc runs on both.
pub fn podman() -> Command {
    let mut podman = Command::new("podman");
    if have("runc", &["--version"]) {
        podman.args(["--runtime", "runc"]);
    }
    podman
}

/// Whether podman and buildah are installed.
pub fn have_podman_and_buildah() -> bool {
    have("podman", &["--version"]) && have("buildah", &["--version"])
}

/// Removes the container (by name or id) when the test ends, however it ends.
pub struct Container(pub String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.0])
            .output();
    }
}
