//! The Kubernetes manifests as the tools read them: YAML documents as JSON (PyYAML), and strict
//! schema validation (kubernetes-validate, whose wheel carries the schemas: offline). Shared by
//! the manifest checks (monitoring.rs) and the kustomize base and image tests (image.rs).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use super::output_text;

/// A file under the repository's packaging/.
pub fn packaging(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(path)
}

/// Every document of YAML text as JSON (PyYAML: installed with kubernetes-validate).
pub fn yaml_documents_of(text: &str) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every document of a YAML file as JSON.
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    yaml_documents_of(&std::fs::read_to_string(path).unwrap())
}

/// Whether kubernetes-validate can run here (scripts/test-deps.sh pip-installs it).
pub fn have_kubernetes_validate() -> bool {
    super::have("python3", &["-m", "kubernetes_validate", "--version"])
}

/// Strict validation of every document of a file: (passed, what it said).
pub fn kubernetes_validate(path: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .arg(path)
        .output()
        .unwrap();
    (out.status.success(), output_text(&out))
}
