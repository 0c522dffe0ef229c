//! A container's name, image and pod from what the node itself holds: the container runtimes'
//! state files and the kubelet's pod log directories. No runtime CLI, no API server.
//!
//! - docker: `/var/lib/docker/containers/<id>/config.v2.json` (`Name`, `Config.Image`, and the
//!   `io.kubernetes.*` labels the kubelet's dockershim/cri-dockerd sets);
//! - containerd: `/run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/config.json`,
//!   the OCI spec whose `io.kubernetes.cri.*` annotations name the container, image and pod;
//! - podman and CRI-O (both on containers/storage): `containers.json` under
//!   `/var/lib/containers/storage/overlay-containers/`, whose per-container `metadata` holds the
//!   image name and, for CRI-O, the pod's name, uid and namespace;
//! - kubelet: `/var/log/pods/<namespace>_<pod>_<uid>/`, the pod's namespace and name by uid when
//!   the runtime's state does not say them.
//!
//! Every file is read as JSON with serde_json into just the fields we use; a file that is
//! missing or unreadable leaves those fields empty (the caller retries later).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::cgroup::Runtime;

/// What a runtime's state says about a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub image: String,
    pub pod: String,
    pub pod_namespace: String,
    pub pod_uid: String,
}

impl Found {
    /// Whether the runtime's state had this container at all.
    pub fn is_known(&self) -> bool {
        !self.name.is_empty() || !self.image.is_empty()
    }
}

/// Where the state files are: `/` on a node; a scratch directory laid out like one in tests, or
/// the host's root mounted into the agent's pod (`/host`).
#[derive(Debug, Clone)]
pub struct Roots {
    pub root: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
        }
    }
}

impl Roots {
    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The container `id` in the state of `runtime` first, then of the others.
    pub fn find(&self, runtime: Runtime, id: &str) -> Found {
        let order: &[Runtime] = match runtime {
            Runtime::Docker => &[Runtime::Docker, Runtime::Containerd],
            Runtime::Containerd | Runtime::Unknown => {
                &[Runtime::Containerd, Runtime::Docker, Runtime::Crio]
            }
            Runtime::Crio | Runtime::Podman => &[Runtime::Podman],
        };
        order
            .iter()
            .map(|r| match r {
                Runtime::Docker => self.docker(id),
                Runtime::Containerd => self.containerd(id),
                _ => self.storage(id),
            })
            .find(Found::is_known)
            .unwrap_or_default()
    }

    fn docker(&self, id: &str) -> Found {
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase", default)]
        struct Config {
            image: String,
            labels: HashMap<String, String>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase", default)]
        struct State {
            name: String,
            config: Config,
        }
        let Some(s): Option<State> =
            read_json(&self.at(&format!("var/lib/docker/containers/{id}/config.v2.json")))
        else {
            return Found::default();
        };
        let label = |k: &str| s.config.labels.get(k).cloned().unwrap_or_default();
        let k8s_name = label("io.kubernetes.container.name");
        Found {
            name: if k8s_name.is_empty() {
                s.name.trim_start_matches('/').to_owned()
            } else {
                k8s_name
            },
            image: s.config.image.clone(),
            pod: label("io.kubernetes.pod.name"),
            pod_namespace: label("io.kubernetes.pod.namespace"),
            pod_uid: label("io.kubernetes.pod.uid"),
        }
    }

    fn containerd(&self, id: &str) -> Found {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Spec {
            annotations: HashMap<String, String>,
        }
        let base = self.at("run/containerd/io.containerd.runtime.v2.task");
        let Ok(namespaces) = fs::read_dir(&base) else {
            return Found::default();
        };
        for ns in namespaces.flatten() {
            let Some(spec): Option<Spec> = read_json(&ns.path().join(id).join("config.json"))
            else {
                continue;
            };
            let a = |k: &str| spec.annotations.get(k).cloned().unwrap_or_default();
            let mut found = Found {
                name: a("io.kubernetes.cri.container-name"),
                image: a("io.kubernetes.cri.image-name"),
                pod: a("io.kubernetes.cri.sandbox-name"),
                pod_namespace: a("io.kubernetes.cri.sandbox-namespace"),
                pod_uid: a("io.kubernetes.cri.sandbox-uid"),
            };
            if found.name.is_empty() {
                // nerdctl and plain containerd clients.
                found.name = a("nerdctl/name");
            }
            if found.name.is_empty() {
                // Known to containerd, unnamed: the namespace at least says who runs it.
                found.name = ns.file_name().to_string_lossy().into_owned();
            }
            return found;
        }
        Found::default()
    }

    /// podman and CRI-O: containers/storage's list of containers.
    fn storage(&self, id: &str) -> Found {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Entry {
            id: String,
            names: Vec<String>,
            metadata: String,
        }
        #[derive(Deserialize, Default)]
        #[serde(default, rename_all = "kebab-case")]
        struct Meta {
            image_name: String,
            name: String,
            metadata_name: String,
            pod_name: String,
            namespace: String,
            uid: String,
        }
        for dir in ["var/lib/containers/storage", "run/containers/storage"] {
            let Some(list): Option<Vec<Entry>> =
                read_json(&self.at(dir).join("overlay-containers/containers.json"))
            else {
                continue;
            };
            let Some(e) = list.into_iter().find(|e| e.id == id) else {
                continue;
            };
            let m: Meta = serde_json::from_str(&e.metadata).unwrap_or_default();
            let name = [
                m.metadata_name,
                m.name,
                e.names.into_iter().next().unwrap_or_default(),
            ]
            .into_iter()
            .find(|n| !n.is_empty())
            .unwrap_or_default();
            return Found {
                name,
                image: m.image_name,
                pod: m.pod_name,
                pod_namespace: m.namespace,
                pod_uid: m.uid,
            };
        }
        Found::default()
    }

    /// The kubelet's pod log directories: uid → (namespace, pod name).
    pub fn kubelet_pods(&self) -> HashMap<String, (String, String)> {
        let Ok(dir) = fs::read_dir(self.at("var/log/pods")) else {
            return HashMap::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                // <namespace>_<pod>_<uid>: namespaces and pod names are DNS labels (no `_`).
                let mut parts = name.splitn(3, '_');
                let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
                Some((uid.to_owned(), (ns.to_owned(), pod.to_owned())))
            })
            .collect()
    }
}

/// A JSON state file, read whole (they are small: one container's config, or the list of a
/// node's containers).
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const ID: &str = "3f1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";

    pub(in crate::attrib) fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("has a parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gopher-attrib-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn docker_state_with_and_without_kubernetes_labels() {
        let root = scratch("docker");
        write(
            &root,
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            r#"{"Name":"/web-1","Config":{"Image":"nginx:1.25","Labels":{}},"State":{"Running":true}}"#,
        );
        let roots = Roots { root: root.clone() };
        let f = roots.find(Runtime::Docker, ID);
        assert_eq!(
            (f.name.as_str(), f.image.as_str(), f.pod.as_str()),
            ("web-1", "nginx:1.25", "")
        );
        write(
            &root,
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            r#"{"Name":"/k8s_app_shop-7d9_prod_1c6f_0","Config":{"Image":"shop:2","Labels":{
               "io.kubernetes.container.name":"app","io.kubernetes.pod.name":"shop-7d9",
               "io.kubernetes.pod.namespace":"prod","io.kubernetes.pod.uid":"1c6f"}}}"#,
        );
        let f = roots.find(Runtime::Unknown, ID);
        assert_eq!(
            f,
            Found {
                name: "app".into(),
                image: "shop:2".into(),
                pod: "shop-7d9".into(),
                pod_namespace: "prod".into(),
                pod_uid: "1c6f".into(),
            }
        );
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn containerd_cri_annotations() {
        let root = scratch("containerd");
        write(
            &root,
            &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            r#"{"ociVersion":"1.1.0","annotations":{
              "io.kubernetes.cri.container-type":"container",
              "io.kubernetes.cri.container-name":"redis",
              "io.kubernetes.cri.image-name":"docker.io/library/redis:7",
              "io.kubernetes.cri.sandbox-name":"cache-0",
              "io.kubernetes.cri.sandbox-namespace":"data",
              "io.kubernetes.cri.sandbox-uid":"0f0e0d0c-0b0a-0908-0706-050403020100"}}"#,
        );
        let f = Roots { root: root.clone() }.find(Runtime::Containerd, ID);
        assert_eq!(
            (
                f.name.as_str(),
                f.image.as_str(),
                f.pod.as_str(),
                f.pod_namespace.as_str()
            ),
            ("redis", "docker.io/library/redis:7", "cache-0", "data")
        );
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn crio_and_podman_storage_metadata() {
        let root = scratch("storage");
        let crio_meta = r#"{\"pod-name\":\"api-5f\",\"pod-id\":\"aa\",\"image-name\":\"quay.io/x/api:3\",\"name\":\"k8s_api_api-5f_web_77_0\",\"metadata-name\":\"api\",\"uid\":\"77\",\"namespace\":\"web\"}"#;
        write(
            &root,
            "var/lib/containers/storage/overlay-containers/containers.json",
            &format!(
                r#"[{{"id":"{}","names":["other"],"metadata":"{{}}"}},
                   {{"id":"{ID}","names":["k8s_api"],"image":"ff","metadata":"{crio_meta}"}}]"#,
                "0".repeat(64)
            ),
        );
        let f = Roots { root: root.clone() }.find(Runtime::Crio, ID);
        assert_eq!(
            f,
            Found {
                name: "api".into(),
                image: "quay.io/x/api:3".into(),
                pod: "api-5f".into(),
                pod_namespace: "web".into(),
                pod_uid: "77".into(),
            }
        );
        assert!(
            !Roots { root: root.clone() }
                .find(Runtime::Podman, &"1".repeat(64))
                .is_known()
        );
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn kubelet_pod_directories_by_uid() {
        let root = scratch("kubelet");
        fs::create_dir_all(root.join(
            "var/log/pods/kube-system_coredns-5d78_0f0e0d0c-0b0a-0908-0706-050403020100/coredns",
        ))
        .expect("mkdir");
        let pods = Roots { root: root.clone() }.kubelet_pods();
        assert_eq!(
            pods.get("0f0e0d0c-0b0a-0908-0706-050403020100"),
            Some(&("kube-system".to_owned(), "coredns-5d78".to_owned()))
        );
        let _ = fs::remove_dir_all(root);
    }
}
