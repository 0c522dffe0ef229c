//! `gopher check`: the preflight. What the agent needs from the host, checked before it is
//! needed, one clear line per problem: privileges and kernel features for the tcp probe's eBPF
//! (capabilities, kernel version, cgroup2, BTF), the ports it serves, the Kafka brokers when
//! Kafka is on, and the extension probes' commands. The same checks (but the ports, which the
//! agent's own bind reports) are logged as warnings at start, from a thread of their own so that
//! a slow broker never delays the start.

use std::{
    io::ErrorKind,
    net::{TcpListener, TcpStream, ToSocketAddrs as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::config::{Config, OnOff, Switch};

/// The kernel the tcp probe needs (`bpf_get_netns_cookie` in sock_ops programs).
const MIN_KERNEL: (u32, u32) = (5, 15);
/// How long a Kafka broker gets to accept a TCP connection.
const BROKER_TIMEOUT: Duration = Duration::from_secs(2);
/// Capabilities the tcp probe uses (bit, name, what for), as the systemd unit grants them.
const CAPS: [(u32, &str, &str); 6] = [
    (39, "CAP_BPF", "load eBPF programs and maps"),
    (38, "CAP_PERFMON", "verifier rights of tracing programs"),
    (12, "CAP_NET_ADMIN", "attach cgroup socket programs"),
    (21, "CAP_SYS_ADMIN", "enter network namespaces"),
    (19, "CAP_SYS_PTRACE", "name other users' socket owners"),
    (
        2,
        "CAP_DAC_READ_SEARCH",
        "read /proc/<pid>/fd of other users",
    ),
];

/// What `check` looks at; `ports`: whether to try binding the served ports.
pub struct Checks<'a> {
    pub cfg: &'a Config,
    /// The config file's directory: relative extension probe commands start there.
    pub base: Option<&'a Path>,
    pub ports: bool,
}

/// Every problem found, one line each (empty: ready).
pub fn problems(c: &Checks<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if c.cfg
        .probes
        .iter()
        .any(|p| p.name == "tcp" && p.switch != Switch::Off)
    {
        ebpf(&mut out);
    }
    if c.ports {
        ports(c.cfg, &mut out);
    }
    if c.cfg.kafka.switch == OnOff::On {
        kafka(&c.cfg.kafka.kafka_broker, &mut out);
    }
    for (i, e) in c.cfg.extend_probes.iter().enumerate() {
        if e.switch != Switch::Off
            && let Err(why) = command_runs(&e.command, c.base)
        {
            out.push(format!("extend_probes[{i}] {}: {why}", e.name));
        }
    }
    out
}

fn ebpf(out: &mut Vec<String>) {
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| cap_eff(&s))
        .unwrap_or(0);
    let missing: Vec<String> = CAPS
        .iter()
        .filter(|(bit, ..)| eff & (1 << bit) == 0)
        .map(|(_, name, why)| format!("{name} ({why})"))
        .collect();
    if !missing.is_empty() {
        out.push(format!(
            "privileges: the tcp probe needs {}: run as root or with the systemd unit's capabilities",
            missing.join(", ")
        ));
    }
    match kernel_version() {
        Some(v) if v < MIN_KERNEL => out.push(format!(
            "kernel: {}.{} is older than {}.{}, which the tcp probe needs",
            v.0, v.1, MIN_KERNEL.0, MIN_KERNEL.1
        )),
        Some(_) => {}
        None => out.push("kernel: cannot read the kernel version (uname)".to_owned()),
    }
    if let Err(e) = crate::probes::tcp::cgroup2_root() {
        out.push(format!(
            "cgroup2: {e:#}: the tcp probe attaches to the cgroup v2 root (mount it, e.g. on /sys/fs/cgroup)"
        ));
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        out.push(
            "BTF: /sys/kernel/btf/vmlinux is missing: the tcp probe falls back from its eBPF \
             socket iterator to sock_diag (kernel built without CONFIG_DEBUG_INFO_BTF)"
                .to_owned(),
        );
    }
}

/// `CapEff` of a `/proc/<pid>/status`.
fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: uname fills the zeroed struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::uname(&raw mut u) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates release.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    parse_release(&release.to_string_lossy())
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(['.', '-', '+']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn ports(cfg: &Config, out: &mut Vec<String>) {
    let web = format!("{}:{}", cfg.web_server.bind_addr, cfg.web_server.port);
    if let Err(e) = TcpListener::bind(web.as_str()) {
        out.push(format!("port: web_server {web} cannot be bound: {e}"));
    }
    if cfg.control.switch == OnOff::On
        && let Err(e) = TcpListener::bind(cfg.control.listen)
    {
        out.push(format!(
            "port: control.listen {} cannot be bound: {e}",
            cfg.control.listen
        ));
    }
}

fn kafka(brokers: &str, out: &mut Vec<String>) {
    for broker in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let addrs = match broker.to_socket_addrs() {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => {
                out.push(format!("kafka: broker {broker} does not resolve: {e}"));
                continue;
            }
        };
        let mut last = None;
        let reached = addrs
            .iter()
            .any(|a| match TcpStream::connect_timeout(a, BROKER_TIMEOUT) {
                Ok(_) => true,
                Err(e) => {
                    last = Some(e);
                    false
                }
            });
        if !reached {
            let why = last.map_or_else(|| "no address".to_owned(), |e| e.to_string());
            out.push(format!("kafka: broker {broker} unreachable: {why}"));
        }
    }
}

/// Whether an extension probe's program (the command's first word, run by `sh -c`) exists and
/// is executable: a path (relative ones from `base`), else a name looked up in `PATH`.
fn command_runs(command: &str, base: Option<&Path>) -> Result<(), String> {
    let Some(program) = command.split_whitespace().next() else {
        return Err("empty command".to_owned());
    };
    let candidates: Vec<PathBuf> = if program.contains('/') {
        let p = Path::new(program);
        vec![match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p.to_owned(),
        }]
    } else {
        std::env::var_os("PATH")
            .map(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(program))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found = None;
    for c in &candidates {
        match std::fs::metadata(c) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            // There but not runnable (a directory, no x bit, unreadable).
            Ok(_) | Err(_) => found = Some(c),
        }
    }
    Err(match found {
        Some(p) => format!("command {} is not an executable file", p.display()),
        None if program.contains('/') => format!(
            "command {} not found",
            candidates
                .first()
                .map_or_else(String::new, |p| p.display().to_string())
        ),
        None => format!("command {program} not found in PATH"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_release_and_commands() {
        assert_eq!(
            cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x01ff_ffff_ffff)
        );
        assert_eq!(parse_release("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0+"), Some((5, 4)));
        assert!(command_runs("sh -c true", None).is_ok());
        let err = command_runs("./nope.py --x", Some(Path::new("/nonexistent"))).unwrap_err();
        assert_eq!(err, "command /nonexistent/./nope.py not found");
        assert_eq!(
            command_runs("no-such-program-x1", None).unwrap_err(),
            "command no-such-program-x1 not found in PATH"
        );
        let plain = tempfile::NamedTempFile::new().unwrap();
        std::fs::set_permissions(plain.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let name = plain.path().display().to_string();
        assert_eq!(
            command_runs(&name, None).unwrap_err(),
            format!("command {name} is not an executable file")
        );
        std::fs::set_permissions(plain.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(command_runs(&name, None).is_ok());
    }
}
