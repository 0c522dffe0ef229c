//! Extension probes and start checks run as an unprivileged user with no capabilities (issue
//! 13): a real probe reports, from inside, its uid, its effective capabilities
//! (/proc/self/status CapEff) and no_new_privs; its auto start check passes only when it runs
//! as that user with no capabilities; an entry's own `user` wins over the default.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]

mod common;

use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use common::{Agent, is_root, require};

fn uid_of(user: &str) -> u32 {
    let out = std::process::Command::new("id")
        .args(["-u", user])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_probe_reports_its_user_and_no_capabilities_from_inside() {
    if !require(is_root(), "root (to start probes as another user)") {
        return;
    }
    let nobody = uid_of("nobody");
    let dir = tempfile::tempdir().unwrap();
    // The probe user must reach the script.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let meta = dir.path().join("identity.toml");
    std::fs::write(
        &meta,
        r#"
[[tables]]
name = "probe_identity"
fields = [
    { name = "name", type = "key" },
    { name = "uid", type = "gauge" },
    { name = "cap_eff", type = "gauge" },
    { name = "cap_bnd", type = "gauge" },
    { name = "no_new_privs", type = "gauge" },
]
"#,
    )
    .unwrap();
    let script = dir.path().join("identity.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         field() { sed -n \"s/^$1:[[:space:]]*//p\" /proc/$$/status; }\n\
         while :; do\n\
           echo \"|probe_identity|$1|$(id -u)|$(printf %d 0x$(field CapEff))|$(printf %d 0x$(field CapBnd))|$(field NoNewPrivs)|\"\n\
           sleep 0.3\n\
         done\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (script, meta) = (script.display(), meta.display());
    let agent = Agent::start(&format!(
        r#"
[supervision]
probe_user = "nobody"
start_check_interval = 1

[[extend_probes]]
name = "as_default"
command = "{script}"
param = "default"
meta = "{meta}"
switch = "auto"
check_type = "count"
# Present only when the check itself runs as nobody with no effective capabilities.
start_check = "[ \"$(id -u)\" = {nobody} ] && grep -c '^CapEff:[[:space:]]*0000000000000000$' /proc/self/status"

[[extend_probes]]
name = "as_root"
command = "{script}"
param = "root"
meta = "{meta}"
switch = "on"
user = ""
"#
    ));
    let samples = agent.wait_for(Duration::from_secs(30), "both identity rows", |s| {
        ["default", "root"].iter().all(|n| {
            s.iter()
                .any(|x| x.name == "gala_gopher_probe_identity_uid" && x.label("name") == *n)
        })
    });
    let value = |field: &str, name: &str| {
        samples
            .iter()
            .find(|x| {
                x.name == format!("gala_gopher_probe_identity_{field}") && x.label("name") == name
            })
            .map(|x| x.value)
            .unwrap()
    };
    assert_eq!(value("uid", "default"), f64::from(nobody));
    assert_eq!(value("cap_eff", "default"), 0.0);
    assert_eq!(value("cap_bnd", "default"), 0.0);
    assert_eq!(value("no_new_privs", "default"), 1.0);
    // `user = ""`: the agent's own user, capabilities and all.
    assert_eq!(value("uid", "root"), 0.0);
    assert!(value("cap_eff", "root") > 0.0);
}
