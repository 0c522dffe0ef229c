//! `haproxy_link`: haproxy's live streams from its runtime API (`show sess all` on a stats
//! socket), one row per (client, frontend address, server, mode).
//!
//! `show sess all` prints, for every stream, the client's address (`source=`), the address the
//! client connected to (frontend `addr=`, the real destination even on a wildcard bind), the
//! backend's mode and the server connection's destination (server `addr=`). Its layout has been
//! the same since haproxy 1.5 (checked against 2.6 here); a stream without a server connection
//! (an HTTP keep-alive client between two requests, a stream still queued) has no backend link
//! and is not counted. The stats socket is found in the `global` section (`stats socket`) of the
//! configuration files each running haproxy was started with (`-f`), read through
//! `/proc/<pid>/root` so that containerised haproxies are found too; `stats_sockets` overrides
//! the discovery. No stats socket anywhere is the probe's one failure reason.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Snapshot, SnapshotError, count_rows, ip_text};
use crate::imdb::{FieldType, TableMeta, Value};

pub const TABLE: &str = "haproxy_link";
/// How long one socket may take to connect, answer or stall.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest `show sess all` answer read (about 1.5 KiB per stream: ~40 k streams).
const MAX_ANSWER: u64 = 64 << 20;

#[derive(Debug, Clone, Default)]
pub struct Haproxy {
    /// Configured sockets; empty: found from the running haproxies' configurations.
    configured: Vec<String>,
}

/// One stream's link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    pub client: IpAddr,
    pub virtual_addr: SocketAddr,
    pub server: SocketAddr,
    /// The backend's mode: `tcp` or `http`.
    pub mode: String,
}

impl Haproxy {
    pub fn new(configured: Vec<String>) -> Self {
        Self { configured }
    }
}

impl Snapshot for Haproxy {
    fn meta(&self) -> TableMeta {
        super::table(
            TABLE,
            "Live haproxy streams per client, frontend address and server (show sess)",
            &[
                ("client_ip", FieldType::Key, "Client address"),
                (
                    "virtual_ip",
                    FieldType::Key,
                    "Address the client connected to (frontend)",
                ),
                (
                    "virtual_port",
                    FieldType::Key,
                    "Port the client connected to",
                ),
                ("server_ip", FieldType::Key, "Backend server address"),
                ("server_port", FieldType::Key, "Backend server port"),
                (
                    "protocol",
                    FieldType::Key,
                    "Backend mode as haproxy numbers it: 0 tcp, 1 http",
                ),
                ("mode", FieldType::Label, "Backend mode: tcp or http"),
                (
                    "link_count",
                    FieldType::Gauge,
                    "Live streams with a server connection",
                ),
            ],
        )
    }

    fn take(&mut self, warnings: &mut Vec<String>) -> Result<Vec<Vec<Value>>, SnapshotError> {
        let sockets = if self.configured.is_empty() {
            discover(warnings)?
        } else {
            self.configured.clone()
        };
        let mut links = Vec::new();
        let mut answered = 0;
        for socket in &sockets {
            match query(socket) {
                Ok(text) => {
                    answered += 1;
                    links.extend(parse_sessions(&text));
                }
                Err(e) => warnings.push(format!("haproxy stats socket {socket}: {e}")),
            }
        }
        if answered == 0 && !sockets.is_empty() {
            return Err(SnapshotError::Transient(format!(
                "no haproxy stats socket answered ({})",
                sockets.join(", ")
            )));
        }
        Ok(count_rows(links, |l| {
            vec![
                Value::from(ip_text(l.client)),
                Value::from(ip_text(l.virtual_addr.ip())),
                Value::from(l.virtual_addr.port()),
                Value::from(ip_text(l.server.ip())),
                Value::from(l.server.port()),
                Value::from(u64::from(l.mode != "tcp")),
                Value::from(l.mode.as_str()),
            ]
        }))
    }
}

/// The stats sockets of every running haproxy, as paths the agent can open. No haproxy
/// running: none (the start check stops the probe soon). Haproxies but no stats socket in
/// their configuration: the probe cannot work, [`SnapshotError::Unusable`].
fn discover(warnings: &mut Vec<String>) -> Result<Vec<String>, SnapshotError> {
    discover_in(&pids_named("haproxy"), warnings)
}

/// [`discover`] over the given haproxy pids. A haproxy whose configuration declares no stats
/// socket is a warning while others have one (its streams are not seen), the probe's failure
/// when none has.
fn discover_in(pids: &[u32], warnings: &mut Vec<String>) -> Result<Vec<String>, SnapshotError> {
    let mut sockets = BTreeSet::new();
    // Configuration file (as seen from the agent) → the sockets it declares; the master and
    // worker of one haproxy share their files, which are read once.
    let mut configs: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    let mut without = Vec::new();
    for &pid in pids {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|_| "/".into());
        let mut own = Vec::new();
        let mut files = Vec::new();
        for file in config_files(&args) {
            let file = if Path::new(&file).is_absolute() {
                file.into()
            } else {
                cwd.join(file)
            };
            let within = root.join(file.strip_prefix("/").unwrap_or(&file));
            files.push(file.display().to_string());
            if let Some(known) = configs.get(&within) {
                own.extend(known.iter().cloned());
                continue;
            }
            let text = match read_config(&within) {
                Ok(t) => t,
                Err(e) => {
                    warnings.push(format!("haproxy {pid}: reading {}: {e}", file.display()));
                    continue;
                }
            };
            let mut found = Vec::new();
            for s in stats_sockets(&text) {
                if s.starts_with('/') {
                    found.push(
                        root.join(s.trim_start_matches('/'))
                            .to_string_lossy()
                            .into_owned(),
                    );
                } else if s.parse::<SocketAddr>().is_ok() {
                    found.push(s);
                } else {
                    warnings.push(format!(
                        "haproxy {pid}: stats socket {s} is not readable by gopher (a unix path \
                         or ip:port is)"
                    ));
                }
            }
            own.extend(found.iter().cloned());
            configs.insert(within, found);
        }
        if own.is_empty() {
            without.push(format!("haproxy {pid} ({})", files.join(", ")));
        }
        sockets.extend(own);
    }
    let advice = "add `stats socket /run/haproxy/admin.sock mode 660 level admin` to the global \
                  section, or set probes[haproxy_link].params.stats_sockets";
    if sockets.is_empty() && !without.is_empty() {
        return Err(SnapshotError::Unusable(format!(
            "{} declares no stats socket: {advice}",
            without.join(", ")
        )));
    }
    for w in without {
        warnings.push(format!(
            "{w} declares no stats socket, its streams are not seen: {advice}"
        ));
    }
    Ok(sockets.into_iter().collect())
}

/// Pids whose comm is `name`.
pub(super) fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .collect()
}

/// The configuration files of a haproxy command line: every `-f <file|dir>`, and the files
/// after `--`.
pub(crate) fn config_files(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "-f" {
            out.extend(it.next().cloned());
        } else if a == "--" {
            out.extend(it.by_ref().filter(|a| !a.is_empty()).cloned());
        }
    }
    out
}

/// A file's text, or a directory's `*.cfg` files in name order (haproxy's `-f <dir>`).
fn read_config(path: &Path) -> std::io::Result<String> {
    if !path.is_dir() {
        return std::fs::read_to_string(path);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cfg"))
        .collect();
    files.sort();
    let mut text = String::new();
    for f in files {
        text.push_str(&std::fs::read_to_string(f)?);
        text.push('\n');
    }
    Ok(text)
}

/// The addresses of `stats socket` lines in `global` sections (`unix@` and `ipv4@`/`ipv6@`
/// prefixes removed).
pub(crate) fn stats_sockets(config: &str) -> Vec<String> {
    let mut global = false;
    let mut out = Vec::new();
    for line in config.lines() {
        let words: Vec<&str> = line
            .split('#')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let Some(first) = words.first() else { continue };
        if !line.starts_with([' ', '\t']) {
            global = *first == "global";
            continue;
        }
        if global && words.len() >= 3 && words[0] == "stats" && words[1] == "socket" {
            let addr = words[2];
            let addr = ["unix@", "ipv4@", "ipv6@"]
                .iter()
                .find_map(|p| addr.strip_prefix(p))
                .unwrap_or(addr);
            out.push(addr.to_owned());
        }
    }
    out
}

/// Sends `show sess all` and reads the whole answer.
fn query(socket: &str) -> std::io::Result<String> {
    let mut answer = Vec::new();
    if socket.starts_with('/') {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.write_all(b"show sess all\n")?;
        s.take(MAX_ANSWER).read_to_end(&mut answer)?;
    } else {
        let addr: SocketAddr = socket.parse().map_err(std::io::Error::other)?;
        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.write_all(b"show sess all\n")?;
        s.take(MAX_ANSWER).read_to_end(&mut answer)?;
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    // The CLI answers refusals in plain text ("Permission denied", "Unknown command").
    if !text.is_empty() && !text.starts_with("0x") && !text.trim().is_empty() {
        let first = text.lines().next().unwrap_or_default();
        return Err(std::io::Error::other(format!("refused show sess: {first}")));
    }
    Ok(text)
}

/// `ip:port` as haproxy prints it (IPv6 without brackets: the port follows the last colon).
fn sock_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.rsplit_once(':')?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
}

/// The value of `key=` up to the next blank or comma.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line
        .match_indices(key)
        .find(|(i, _)| *i == 0 || line.as_bytes()[i - 1] == b' ')?
        .0;
    let rest = &line[at + key.len()..];
    Some(rest.split([' ', ',']).next().unwrap_or(rest))
}

/// The links of a `show sess all` answer: streams from an IP client with a server connection.
pub(crate) fn parse_sessions(text: &str) -> Vec<Link> {
    let mut out = Vec::new();
    let mut client = None;
    let mut front = None;
    let mut mode = None;
    let mut flush = |client: &mut Option<IpAddr>,
                     front: &mut Option<SocketAddr>,
                     mode: &mut Option<String>,
                     server: Option<SocketAddr>| {
        if let (Some(c), Some(f), Some(m), Some(s)) = (*client, *front, mode.clone(), server) {
            out.push(Link {
                client: c,
                virtual_addr: f,
                server: s,
                mode: m,
            });
        }
        *client = None;
        *front = None;
        *mode = None;
    };
    for line in text.lines() {
        if line.starts_with("0x") {
            client = field(line, "source=").and_then(sock_addr).map(|a| a.ip());
            front = None;
            mode = None;
            continue;
        }
        let t = line.trim_start();
        if t.starts_with("frontend=") {
            front = field(t, "addr=").and_then(sock_addr);
        } else if t.starts_with("backend=") {
            mode = field(t, "mode=").map(|m| m.trim_end_matches(')').to_owned());
        } else if t.starts_with("server=") {
            let server = field(t, "addr=").and_then(sock_addr);
            flush(&mut client, &mut front, &mut mode, server);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two streams (tcp, http) and the CLI's own, as haproxy 2.6.12 printed them.
    const SESS: &str = "\
0x56062193e530: [25/Nov/2026:22:02:31.095712] id=0 proto=tcpv4 source=10.9.0.2:44942
  flags=0x4a, conn_retries=0, conn_exp=<NEVER> conn_et=0x000 srv_conn=0x56062187a7f0, pend_pos=(nil) waiting=0 epoch=0
  frontend=ft (id=2 mode=tcp), listener=? (id=1) addr=10.9.0.1:47001
  backend=bt (id=3 mode=tcp) addr=10.8.0.1:41632
  server=s1 (id=1) addr=10.8.0.2:47002
  task=0x560621a5d5a0 (state=0x00 nice=0 calls=2 rate=2 exp=4s tmask=0x1 age=0s)
0x560621a5e0b0: [25/Nov/2026:22:02:31.096225] id=1 proto=tcpv6 source=fd00::2:51178
  frontend=fh (id=4 mode=http), listener=? (id=1) addr=fd00::1:47003
  backend=bh (id=5 mode=http) addr=10.8.0.1:41642
  server=h1 (id=1) addr=10.8.0.2:47002
0x560621a5eff0: [25/Nov/2026:22:02:31.596484] id=2 proto=unix_stream source=unix:1
  frontend=GLOBAL (id=0 mode=tcp), listener=? (id=1) addr=unix:1
  backend=<NONE> (id=-1 mode=-)
  server=<NONE> (id=-1)
0x560621a5f0b0: [25/Nov/2026:22:02:31.596484] id=3 proto=tcpv4 source=10.9.0.3:1000
  frontend=fh (id=4 mode=http), listener=? (id=1) addr=10.9.0.1:47003
  backend=bh (id=5 mode=http)
  server=<NONE> (id=-1)
";

    #[test]
    fn streams_with_a_server_connection_are_links() {
        let links = parse_sessions(SESS);
        assert_eq!(
            links,
            vec![
                Link {
                    client: "10.9.0.2".parse().unwrap(),
                    virtual_addr: "10.9.0.1:47001".parse().unwrap(),
                    server: "10.8.0.2:47002".parse().unwrap(),
                    mode: "tcp".into(),
                },
                Link {
                    client: "fd00::2".parse().unwrap(),
                    virtual_addr: "[fd00::1]:47003".parse().unwrap(),
                    server: "10.8.0.2:47002".parse().unwrap(),
                    mode: "http".into(),
                },
            ]
        );
        assert!(parse_sessions("").is_empty());
        assert!(parse_sessions("garbage\n  server=x addr=1.2.3.4:5\n").is_empty());
    }

    #[test]
    fn stats_sockets_of_global_sections_and_config_files_of_the_command_line() {
        let cfg = "global\n  log /dev/log local0\n  stats socket /run/haproxy/admin.sock mode 660 level admin # x\n\
                   \tstats socket ipv4@127.0.0.1:9999 level operator\n  stats timeout 30s\n\
                   defaults\n  stats socket /not/global\nfrontend f\n  bind :80\n";
        assert_eq!(
            stats_sockets(cfg),
            ["/run/haproxy/admin.sock", "127.0.0.1:9999"]
        );
        assert!(stats_sockets("global\n  # stats socket /x\n").is_empty());
        let args: Vec<String> = [
            "haproxy",
            "-Ws",
            "-f",
            "/etc/haproxy/haproxy.cfg",
            "-p",
            "/run/h.pid",
            "-f",
            "conf.d",
            "--",
            "a.cfg",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            config_files(&args),
            ["/etc/haproxy/haproxy.cfg", "conf.d", "a.cfg"]
        );
    }

    /// Real haproxy processes (one without a stats socket, one with) found through /proc.
    #[test]
    fn discovery_reads_running_haproxies_and_names_the_one_without_a_socket() {
        if std::process::Command::new("haproxy")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: no haproxy");
            assert!(
                std::env::var("GOPHER_STRICT_TESTS").is_err(),
                "haproxy needed"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let start = |name: &str, global: &str| {
            let cfg = dir.path().join(name);
            std::fs::write(
                &cfg,
                format!(
                    "global\n{global}defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 1s\n  \
                     timeout server 1s\nlisten l\n  bind 127.0.0.1:{}\n  server s 127.0.0.1:9\n",
                    port()
                ),
            )
            .unwrap();
            let child = std::process::Command::new("haproxy")
                .args(["-db", "-f"])
                .arg(&cfg)
                .spawn()
                .unwrap();
            (cfg, child)
        };
        let sock = dir.path().join("a.sock");
        let (bare_cfg, mut bare) = start("bare.cfg", "");
        let (_, mut with) = start(
            "with.cfg",
            &format!("  stats socket {} level admin\n", sock.display()),
        );
        std::thread::sleep(Duration::from_millis(300));
        let mut w = Vec::new();
        let err = discover_in(&[bare.id()], &mut w).unwrap_err();
        assert!(matches!(err, SnapshotError::Unusable(_)), "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("haproxy {}", bare.id())), "{text}");
        assert!(text.contains(bare_cfg.to_str().unwrap()), "{text}");
        assert!(text.contains("declares no stats socket"), "{text}");
        let found = discover_in(&[bare.id(), with.id()], &mut w).unwrap();
        assert_eq!(
            found,
            [format!("/proc/{}/root{}", with.id(), sock.display())]
        );
        assert!(
            w.iter().any(|m| m.contains("its streams are not seen")),
            "{w:?}"
        );
        let _ = bare.kill();
        let _ = with.kill();
        let _ = bare.wait();
        let _ = with.wait();
    }
}
