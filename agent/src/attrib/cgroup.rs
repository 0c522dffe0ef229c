//! Which container (and pod) a cgroup path names: the one place that knows how container
//! runtimes and the kubelet lay out their cgroups.
//!
//! Every runtime puts a container's processes in a cgroup whose last component carries the
//! 64-hex container id, under a parent that says who made it. Both cgroup drivers are covered:
//! - systemd driver: `…/docker-<id>.scope`, `…/cri-containerd-<id>.scope`, `…/crio-<id>.scope`,
//!   `…/libpod-<id>.scope` (podman, also rootless under `user@<uid>.service`),
//!   `…/nerdctl-<id>.scope`; pods in `kubepods[-<qos>]-pod<uid with _>.slice`;
//! - cgroupfs driver: `/docker/<id>`, `/libpod_parent/libpod-<id>`, `/kubepods/<qos>/pod<uid>/<id>`
//!   or `…/crio-<id>`, containerd's `/<namespace>/<id>`.
//!
//! Components below the container's own cgroup (podman's `container` with a private cgroup
//! namespace, a container's own sub-cgroups) are skipped: the id is the innermost one found.
//! Runtime monitors (`libpod-conmon-<id>`, `crio-conmon-<id>`) are host processes, not the
//! container. Cgroup v1 and v2 give the same paths; [`from_proc_cgroup`] picks the line to read.

/// Who made a container's cgroup; where its state files are looked for first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
    /// A bare id (the cgroupfs driver under `kubepods`, or containerd's own namespaces): any
    /// runtime's state may hold it.
    Unknown,
}

/// A container named by a cgroup path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CgroupRef {
    pub runtime: Runtime,
    /// The full 64-hex id.
    pub id: String,
    /// The kubelet's pod uid (dashes, as the API shows it), when the path is under a pod.
    pub pod_uid: Option<String>,
}

/// Scope prefixes of the systemd driver (and podman's cgroupfs one), with their runtime.
const PREFIXES: &[(&str, Runtime)] = &[
    ("docker-", Runtime::Docker),
    ("cri-containerd-", Runtime::Containerd),
    ("crio-", Runtime::Crio),
    ("libpod-", Runtime::Podman),
    ("nerdctl-", Runtime::Containerd),
];

/// The container in a `/proc/<pid>/cgroup` file, if any: the unified (v2) line first, then the
/// v1 hierarchies (a hybrid host may keep containers in v1 only).
pub fn from_proc_cgroup(text: &str) -> Option<(String, CgroupRef)> {
    let mut paths: Vec<&str> = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" {
            paths.insert(0, path);
        } else {
            paths.push(path);
        }
    }
    paths
        .into_iter()
        .find_map(|p| parse(p).map(|r| (p.to_owned(), r)))
}

/// The container a cgroup path names, if it names one.
pub fn parse(path: &str) -> Option<CgroupRef> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    // The innermost component that is a container's own cgroup.
    let (at, runtime, id) = parts.iter().enumerate().rev().find_map(|(i, c)| {
        let parent = i.checked_sub(1).and_then(|p| parts.get(p)).copied();
        container_component(c, parent).map(|(r, id)| (i, r, id.to_owned()))
    })?;
    let pod_uid = parts[..at].iter().rev().find_map(|c| pod_uid(c));
    Some(CgroupRef {
        runtime,
        id,
        pod_uid,
    })
}

/// `component` as a container's cgroup: its runtime and id. `parent` tells a bare id's runtime
/// (`/docker/<id>` is docker's cgroupfs layout).
fn container_component<'a>(component: &'a str, parent: Option<&str>) -> Option<(Runtime, &'a str)> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    if name.contains("-conmon-") || name.starts_with("conmon") {
        return None;
    }
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix) {
            return is_id(id).then_some((*runtime, id));
        }
    }
    if !is_id(name) {
        return None;
    }
    let runtime = match parent {
        Some("docker") => Runtime::Docker,
        _ => Runtime::Unknown,
    };
    Some((runtime, name))
}

/// A container id: 64 lowercase hex digits (docker, containerd, CRI-O and podman all use them).
fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The pod uid in a kubelet cgroup component: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid with underscores>.slice` (systemd).
fn pod_uid(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let uid = if let Some(rest) = name.strip_prefix("pod") {
        rest
    } else if name.starts_with("kubepods") {
        &name[name.rfind("-pod")? + 4..]
    } else {
        return None;
    };
    let uid = uid.replace('_', "-");
    let ok = uid.len() >= 32 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
    const UID: &str = "1c6f9a2e-7b3d-4e5f-8a9b-0c1d2e3f4a5b";

    fn of(path: &str) -> Option<(Runtime, String, Option<String>)> {
        parse(path).map(|r| (r.runtime, r.id, r.pod_uid))
    }

    #[test]
    fn kubelet_containerd_and_crio_layouts() {
        let uid_ = UID.replace('-', "_");
        let cases = [
            // containerd, systemd driver (kubeadm default since 1.22).
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                Runtime::Containerd,
            ),
            // Guaranteed QoS has no QoS slice.
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                Runtime::Containerd,
            ),
            // CRI-O, systemd driver.
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"
                ),
                Runtime::Crio,
            ),
            // cgroupfs driver: a bare id (containerd or docker) or crio-<id>.
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                Runtime::Unknown,
            ),
            (format!("/kubepods/pod{UID}/{ID}"), Runtime::Unknown),
            (
                format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
                Runtime::Crio,
            ),
        ];
        for (path, runtime) in cases {
            assert_eq!(
                of(&path),
                Some((runtime, ID.to_owned(), Some(UID.to_owned()))),
                "{path}"
            );
        }
    }

    #[test]
    fn docker_podman_and_nerdctl_layouts() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker),
            (format!("/docker/{ID}"), Runtime::Docker),
            (format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman),
            // podman with a private cgroup namespace puts the processes one level down.
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Runtime::Podman,
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                Runtime::Podman,
            ),
            (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman),
            (
                format!("/system.slice/nerdctl-{ID}.scope"),
                Runtime::Containerd,
            ),
            (format!("/default/{ID}"), Runtime::Unknown),
        ];
        for (path, runtime) in cases {
            assert_eq!(of(&path), Some((runtime, ID.to_owned(), None)), "{path}");
        }
    }

    #[test]
    fn host_processes_and_monitors_are_not_containers() {
        for path in [
            "/",
            "/system.slice/nginx.service",
            "/user.slice/user-0.slice/session-3.scope",
            "/init.scope",
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            &format!("/kubepods.slice/kubepods-besteffort.slice/crio-conmon-{ID}.scope"),
            // Not 64 hex digits.
            "/docker/3f1b2c4d5e6f",
            "/system.slice/docker-notanid.scope",
        ] {
            assert_eq!(of(path), None, "{path}");
        }
    }

    #[test]
    fn proc_cgroup_prefers_unified_then_any_v1_hierarchy() {
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            from_proc_cgroup(&v2).map(|(_, r)| r.runtime),
            Some(Runtime::Docker)
        );
        // Hybrid host: v2 at the root, the container in the v1 hierarchies.
        let hybrid = format!(
            "12:pids:/libpod_parent/libpod-{ID}\n4:memory:/libpod_parent/libpod-{ID}\n1:name=systemd:/libpod_parent/libpod-{ID}\n0::/\n"
        );
        let (path, r) = from_proc_cgroup(&hybrid).expect("a container");
        assert_eq!(
            (path.as_str(), r.id.as_str()),
            (&*format!("/libpod_parent/libpod-{ID}"), ID)
        );
        assert_eq!(from_proc_cgroup("0::/\n1:name=systemd:/init.scope\n"), None);
        assert_eq!(from_proc_cgroup("garbage"), None);
    }
}
