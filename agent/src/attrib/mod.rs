//! Which container and pod a process runs in, for the `container_*` and `pod*` labels of every
//! table keyed by a process (gala-gopher's names: `container_id`, `container_name`,
//! `container_image`, `pod_id`, `pod`, `pod_namespace`; empty for host processes).
//!
//! gala-gopher asks `docker`/`isula`/`crictl` for this; a CLI per lookup is slow, needs the
//! runtime's socket and fails on nodes with another runtime. Here a process's cgroup path names
//! its container and pod ([`cgroup`]), and the node's own state files name the rest
//! ([`runtime`]): nothing but reads of /proc and of small JSON files.
//!
//! Cost follows the work: a pid is looked at once per [`PID_TTL_MS`] however many rows carry
//! it; a container's state files are read once (again every [`RETRY_MS`] only while they do
//! not say everything yet, as when a container is still starting); both caches are bounded.
//! A pid reused by another process within the TTL keeps its old labels that long.

pub mod cgroup;
pub mod runtime;

use std::{collections::HashMap, fs, path::PathBuf, sync::Arc};

use runtime::Roots;

/// The label names, in the order [`Container::values`] gives them.
pub const LABELS: [&str; 6] = [
    "container_id",
    "container_name",
    "container_image",
    "pod_id",
    "pod",
    "pod_namespace",
];

/// How long a pid's container is trusted before its cgroup is read again.
pub const PID_TTL_MS: u64 = 10_000;
/// How soon a container whose state files did not say everything is looked up again.
pub const RETRY_MS: u64 = 5_000;
/// Pids remembered at most (past it the cache starts over: only lookups are lost).
const MAX_PIDS: usize = 65_536;
/// Containers (cgroups) remembered at most.
const MAX_CGROUPS: usize = 4_096;
/// Short container id length, as `docker ps` and gala-gopher show it.
const SHORT_ID: usize = 12;

/// A container's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    pub pod_id: String,
    pub pod: String,
    pub pod_namespace: String,
}

impl Container {
    /// The values of [`LABELS`], in order.
    pub fn values(&self) -> [&str; 6] {
        [
            &self.id,
            &self.name,
            &self.image,
            &self.pod_id,
            &self.pod,
            &self.pod_namespace,
        ]
    }
}

#[derive(Debug)]
struct PidEntry {
    container: Option<Arc<Container>>,
    checked: u64,
}

#[derive(Debug)]
struct CgroupEntry {
    container: Arc<Container>,
    complete: bool,
    checked: u64,
}

/// Pid → container lookups with their caches. One per ingest task.
#[derive(Debug)]
pub struct Attributor {
    roots: Roots,
    proc: PathBuf,
    pids: HashMap<u32, PidEntry>,
    cgroups: HashMap<String, CgroupEntry>,
    /// The kubelet's pods by uid, and when they were listed.
    pods: HashMap<String, (String, String)>,
    pods_listed: Option<u64>,
    /// State-file lookups done (each container once, plus retries): for the tests and telemetry.
    lookups: u64,
}

impl Default for Attributor {
    fn default() -> Self {
        Self::new(Roots::default(), PathBuf::from("/proc"))
    }
}

impl Attributor {
    pub fn new(roots: Roots, proc: PathBuf) -> Self {
        Self {
            roots,
            proc,
            pids: HashMap::new(),
            cgroups: HashMap::new(),
            pods: HashMap::new(),
            pods_listed: None,
            lookups: 0,
        }
    }

    /// State-file lookups so far.
    pub fn lookups(&self) -> u64 {
        self.lookups
    }

    /// The container of process `pid`; `None` for a host process (or one gone already).
    pub fn of_pid(&mut self, pid: u32, now_ms: u64) -> Option<Arc<Container>> {
        if let Some(e) = self.pids.get(&pid)
            && now_ms.saturating_sub(e.checked) < PID_TTL_MS
        {
            return e.container.clone();
        }
        let text = fs::read_to_string(self.proc.join(pid.to_string()).join("cgroup")).ok();
        let container = text
            .as_deref()
            .and_then(cgroup::from_proc_cgroup)
            .map(|(path, r)| self.of_cgroup(path, &r, now_ms));
        if self.pids.len() >= MAX_PIDS {
            self.pids.clear();
        }
        self.pids.insert(
            pid,
            PidEntry {
                container: container.clone(),
                checked: now_ms,
            },
        );
        container
    }

    /// The container of a cgroup, from the cache or the state files.
    pub fn of_cgroup(
        &mut self,
        path: String,
        r: &cgroup::CgroupRef,
        now_ms: u64,
    ) -> Arc<Container> {
        if let Some(e) = self.cgroups.get(&path)
            && (e.complete || now_ms.saturating_sub(e.checked) < RETRY_MS)
        {
            return Arc::clone(&e.container);
        }
        self.lookups += 1;
        let found = self.roots.find(r.runtime, &r.id);
        let pod_id = if found.pod_uid.is_empty() {
            r.pod_uid.clone().unwrap_or_default()
        } else {
            found.pod_uid.clone()
        };
        let (mut pod, mut pod_namespace) = (found.pod.clone(), found.pod_namespace.clone());
        if !pod_id.is_empty()
            && pod.is_empty()
            && let Some((ns, name)) = self.kubelet_pod(&pod_id, now_ms)
        {
            pod = name;
            pod_namespace = ns;
        }
        let complete = found.is_known() && (pod_id.is_empty() || !pod.is_empty());
        let container = Arc::new(Container {
            id: r.id.chars().take(SHORT_ID).collect(),
            name: found.name,
            image: found.image,
            pod_id,
            pod,
            pod_namespace,
        });
        if self.cgroups.len() >= MAX_CGROUPS {
            self.cgroups.clear();
        }
        self.cgroups.insert(
            path,
            CgroupEntry {
                container: Arc::clone(&container),
                complete,
                checked: now_ms,
            },
        );
        container
    }

    /// A pod's namespace and name from the kubelet's directories, listed again when the uid is
    /// new to the last listing (at most every [`RETRY_MS`]).
    fn kubelet_pod(&mut self, uid: &str, now_ms: u64) -> Option<(String, String)> {
        let stale = self
            .pods_listed
            .is_none_or(|t| now_ms.saturating_sub(t) >= RETRY_MS);
        if !self.pods.contains_key(uid) && stale {
            self.pods = self.roots.kubelet_pods();
            self.pods_listed = Some(now_ms);
        }
        self.pods.get(uid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::runtime::tests::write;
    use super::*;

    const ID: &str = "3f1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
    const UID: &str = "1c6f9a2e-7b3d-4e5f-8a9b-0c1d2e3f4a5b";

    /// A node laid out as kubelet + containerd (systemd driver, cgroup v2) lays it out, with a
    /// fake /proc holding one container process (pid 100) and one host process (pid 200).
    fn node(name: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("gopher-attrib-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let uid_ = UID.replace('-', "_");
        write(
            &root,
            "proc/100/cgroup",
            &format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope\n"
            ),
        );
        write(&root, "proc/200/cgroup", "0::/system.slice/sshd.service\n");
        root
    }

    #[test]
    fn labels_fill_in_once_the_runtime_state_appears_and_are_cached() {
        let root = node("cache");
        let mut a = Attributor::new(Roots { root: root.clone() }, root.join("proc"));
        assert_eq!(a.of_pid(200, 0), None, "a host process has no container");
        assert_eq!(a.of_pid(999, 0), None, "a process gone has none either");
        // The container is starting: its cgroup exists, its state file not yet, the pod's log
        // directory neither. The id and pod uid come from the cgroup path alone.
        let c = a.of_pid(100, 0).expect("a container");
        assert_eq!(
            (c.id.as_str(), c.pod_id.as_str(), c.name.as_str()),
            (&ID[..12], UID, "")
        );
        write(
            &root,
            &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-name":"app",
               "io.kubernetes.cri.image-name":"registry.local/app:1"}}"#,
        );
        fs::create_dir_all(root.join(format!("var/log/pods/shop_app-6b8_{UID}"))).expect("mkdir");
        // Within the pid's TTL nothing is read again.
        assert_eq!(a.of_pid(100, PID_TTL_MS - 1).expect("cached").name, "");
        assert_eq!(a.lookups(), 1);
        let c = a.of_pid(100, PID_TTL_MS).expect("a container");
        assert_eq!(
            *c,
            Container {
                id: ID[..12].to_owned(),
                name: "app".into(),
                image: "registry.local/app:1".into(),
                pod_id: UID.into(),
                pod: "app-6b8".into(),
                pod_namespace: "shop".into(),
            }
        );
        // Complete now: later TTL expiries re-read the pid's cgroup, never the state files.
        for i in 2..5 {
            assert_eq!(a.of_pid(100, PID_TTL_MS * i).as_deref(), Some(&*c));
        }
        assert_eq!(a.lookups(), 2);
        let _ = fs::remove_dir_all(root);
    }
}
