//! `dnsmasq_link`: the clients dnsmasq answers, one row per (client, DNS address, family,
//! dnsmasq process) with `link_count` live conntrack entries.
//!
//! Debian's dnsmasq is stripped (no `send_from` to attach a uprobe to), so the probe reads what
//! the kernel keeps: for every running dnsmasq, its listening sockets (its `/proc/<pid>/fd`
//! socket inodes matched in `/proc/<pid>/net/{udp,tcp}{,6}`) and the conntrack table of its
//! network namespace. An entry whose reply comes from one of those addresses and ports (a
//! wildcard listener: from any local address of the namespace) is a query dnsmasq answered: the
//! client is the entry's original source, `virtual_ip` the address the client asked (a service
//! address when DNAT sits in front). Our dnsmasq's own upstream queries are not counted (their
//! replies come from the upstream server).
//!
//! Only entries that saw a reply count (`IPS_SEEN_REPLY`): a datagram dnsmasq dropped without
//! answering is no client it serves.
//!
//! Not exact when conntrack does not track dnsmasq's namespace: the kernel tracks a namespace
//! only once some rule there uses conntrack or NAT (every Docker or Kubernetes node does;
//! a bare host with no firewall does not), and a UDP query stays "live" for conntrack's UDP
//! timeout after its answer (`net.netfilter.nf_conntrack_udp_timeout`, 30 s by default; an
//! ASSURED flow, one source port reused for several queries, `_stream`, 120 s): docs/config.md.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::Path,
};

use super::{Snapshot, SnapshotError, conntrack, count_rows_with, haproxy::pids_named, ip_text};
use crate::imdb::{FieldType, TableMeta, Value};

pub const TABLE: &str = "dnsmasq_link";

#[derive(Debug, Default)]
pub struct Dnsmasq {
    /// One conntrack socket per namespace (by inode) that holds a dnsmasq.
    sockets: HashMap<u64, OwnedFd>,
}

impl Clone for Dnsmasq {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// A socket dnsmasq listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub proto: u8,
    pub ip: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    client: IpAddr,
    virtual_ip: IpAddr,
    pid: u32,
}

impl Snapshot for Dnsmasq {
    fn meta(&self) -> TableMeta {
        super::table(
            TABLE,
            "Clients answered by dnsmasq (conntrack entries of its listening addresses)",
            &[
                ("client_ip", FieldType::Key, "Client address"),
                (
                    "virtual_ip",
                    FieldType::Key,
                    "DNS server address the client asked",
                ),
                ("family", FieldType::Key, "Address family: 2 IPv4, 10 IPv6"),
                (
                    "link_count",
                    FieldType::Gauge,
                    "Live conntrack entries (queries within conntrack's timeout)",
                ),
                ("pid", FieldType::Key, "dnsmasq process id"),
                ("process_comm", FieldType::Label, "dnsmasq process name"),
            ],
        )
    }

    fn take(&mut self, warnings: &mut Vec<String>) -> Result<Vec<Vec<Value>>, SnapshotError> {
        // Namespace inode → (pid, its listening sockets).
        let mut by_ns: HashMap<u64, Vec<(u32, Vec<Listen>)>> = HashMap::new();
        for pid in pids_named("dnsmasq") {
            let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            match listening(pid) {
                Ok(l) if !l.is_empty() => by_ns.entry(ns.ino()).or_default().push((pid, l)),
                Ok(_) => {}
                Err(e) => warnings.push(format!("dnsmasq {pid}: reading its sockets: {e}")),
            }
        }
        self.sockets.retain(|ns, _| by_ns.contains_key(ns));
        let mut keys = Vec::new();
        for (ns, procs) in &by_ns {
            let Some(&(pid, _)) = procs.first() else {
                continue;
            };
            let path = format!("/proc/{pid}/ns/net");
            let locals = match conntrack::in_netns(Path::new(&path), local_addresses) {
                Ok(l) => l,
                Err(e) => {
                    warnings.push(format!("dnsmasq {pid}: addresses of its namespace: {e}"));
                    continue;
                }
            };
            if !self.sockets.contains_key(ns) {
                match conntrack::open_in(Path::new(&path)) {
                    Ok(fd) => {
                        self.sockets.insert(*ns, fd);
                    }
                    Err(e) => {
                        warnings.push(format!("dnsmasq {pid}: conntrack socket: {e}"));
                        continue;
                    }
                }
            }
            let Some(fd) = self.sockets.get(ns) else {
                continue;
            };
            let result = conntrack::dump(fd, |e| {
                // Answered queries only: a datagram dnsmasq dropped (malformed, refused by
                // its own rules) leaves an entry that never saw a reply.
                if !e.live() || e.status & conntrack::IPS_SEEN_REPLY == 0 {
                    return;
                }
                let answered_by = procs.iter().find(|(_, listens)| {
                    listens.iter().any(|l| {
                        l.proto == e.proto
                            && l.port == e.reply.sport
                            && (l.ip == e.reply.src
                                || (l.ip.is_unspecified()
                                    && (l.ip.is_ipv6() || e.reply.src.is_ipv4())
                                    && locals.contains(&e.reply.src)))
                    })
                });
                if let Some((pid, _)) = answered_by {
                    keys.push(Key {
                        client: e.orig.src,
                        virtual_ip: e.orig.dst,
                        pid: *pid,
                    });
                }
            });
            if let Err(e) = result {
                self.sockets.remove(ns);
                warnings.push(format!("dnsmasq {pid}: conntrack dump: {e}"));
            }
        }
        let comms: HashMap<u32, String> = by_ns
            .values()
            .flatten()
            .map(|(pid, _)| (*pid, comm(*pid)))
            .collect();
        Ok(count_rows_with(keys, |k, n| {
            vec![
                Value::from(ip_text(k.client)),
                Value::from(ip_text(k.virtual_ip)),
                Value::from(if k.client.to_canonical().is_ipv4() {
                    2u8
                } else {
                    10
                }),
                Value::from(n),
                Value::from(k.pid),
                Value::from(comms.get(&k.pid).cloned().unwrap_or_default()),
            ]
        }))
    }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

/// The sockets `pid` listens on: UDP sockets bound to a port, TCP sockets in LISTEN.
fn listening(pid: u32) -> std::io::Result<Vec<Listen>> {
    let mut inodes = HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(link) = std::fs::read_link(e?.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        if let Some(n) = link
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
        {
            inodes.extend(n.parse::<u64>().ok());
        }
    }
    let mut out = Vec::new();
    for (file, proto, listen_only) in [
        ("udp", 17, false),
        ("udp6", 17, false),
        ("tcp", 6, true),
        ("tcp6", 6, true),
    ] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        out.extend(
            parse_proc_net(&text, listen_only)
                .filter(|(_, _, inode)| inodes.contains(inode))
                .map(|(ip, port, _)| Listen { proto, ip, port }),
        );
    }
    Ok(out)
}

/// (local address, port, inode) of the lines of /proc/net/{udp,tcp}{,6}; with `listen_only`,
/// TCP LISTEN (0A) sockets only.
pub(crate) fn parse_proc_net(
    text: &str,
    listen_only: bool,
) -> impl Iterator<Item = (IpAddr, u16, u64)> + '_ {
    text.lines().skip(1).filter_map(move |line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
        if listen_only && *state != "0A" {
            return None;
        }
        let (addr, port) = local.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some((hex_ip(addr)?, port, inode.parse().ok()?))
    })
}

/// An address as /proc/net prints it: the kernel's 32-bit words in host order, in hex.
fn hex_ip(s: &str) -> Option<IpAddr> {
    let word = |i: usize| u32::from_str_radix(s.get(i * 8..i * 8 + 8)?, 16).ok();
    match s.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?.to_ne_bytes()))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// The addresses of the calling thread's namespace (run inside it by [`conntrack::in_netns`]).
fn local_addresses() -> std::io::Result<HashSet<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = HashSet::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: family AF_INET: the sockaddr is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.insert(IpAddr::V4(Ipv4Addr::from(
                    sin.sin_addr.s_addr.to_ne_bytes(),
                )));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6: the sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.insert(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_lines() {
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                   \x20 0: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n";
        let v: Vec<_> = parse_proc_net(udp, false).collect();
        assert_eq!(v, [(IpAddr::from([127, 0, 0, 1]), 53, 4242)]);
        assert_eq!(
            parse_proc_net(udp, true).count(),
            0,
            "UDP state 07 is not LISTEN"
        );
        let v6 = "h\n 0: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 0A 0 0 0 0 0 77\n";
        let v: Vec<_> = parse_proc_net(v6, true).collect();
        assert_eq!(v, [(IpAddr::V6(Ipv6Addr::LOCALHOST), 53, 77)]);
    }

    #[test]
    fn own_namespace_addresses_include_loopback() {
        let a = local_addresses().unwrap();
        assert!(a.contains(&IpAddr::from([127, 0, 0, 1])), "{a:?}");
    }
}
