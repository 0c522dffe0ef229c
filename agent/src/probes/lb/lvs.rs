//! `lvs_link` (`ipvs_link` with `table = "ipvs_link"`): NAT load balancing as the conntrack
//! table records it, one row per (client, virtual address, local address, backend, protocol)
//! with `link_count` live entries.
//!
//! Every destination-NATed entry (`IPS_DST_NAT`: iptables/nftables DNAT as kube-proxy's iptables
//! mode and Docker's published ports install it, IPVS with `conntrack=1`) is a client's flow
//! through a virtual address to a backend: the original tuple gives client → virtual address,
//! the reply tuple backend → local address (the client again, or the SNAT/masquerade address
//! the backend sees, which is gala-gopher's `local_ip`). TCP entries past their close
//! (TIME_WAIT, CLOSE) and dying entries are not live and are not counted.
//!
//! Namespaces read: the agent's own (the host's, where kube-proxy and Docker put their rules),
//! plus every namespace file listed in `namespaces` (`/run/netns/<name>`, a pod's
//! `/proc/<pid>/ns/net`). ip_vs's own connection table (without conntrack) is not read: ip_vs
//! is not in every kernel, and gala-gopher read it with kprobes, which are not available.

use std::{net::IpAddr, os::fd::OwnedFd, path::PathBuf};

use super::{
    Snapshot, SnapshotError,
    conntrack::{self, Entry, IPS_DST_NAT},
    count_rows, ip_text,
};
use crate::imdb::{FieldType, TableMeta, Value};

pub const TABLE: &str = "lvs_link";

#[derive(Debug, Default)]
pub struct Lvs {
    table: String,
    namespaces: Vec<PathBuf>,
    /// Sockets opened so far: the agent's own (`None` path) and each listed namespace's.
    sockets: Vec<(Option<PathBuf>, Option<OwnedFd>)>,
}

impl Clone for Lvs {
    /// A clone opens its own sockets when it first dumps.
    fn clone(&self) -> Self {
        Self::new(self.table.clone(), self.namespaces.clone())
    }
}

/// One DNAT flow, as a row key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    pub client: IpAddr,
    pub virtual_ip: IpAddr,
    pub virtual_port: u16,
    pub local: IpAddr,
    pub server: IpAddr,
    pub server_port: u16,
    pub proto: u8,
}

impl Link {
    /// The entry's link, if it is a live destination-NATed flow.
    pub fn of(e: &Entry) -> Option<Self> {
        (e.status & IPS_DST_NAT != 0 && e.live()).then_some(Self {
            client: e.orig.src,
            virtual_ip: e.orig.dst,
            virtual_port: e.orig.dport,
            local: e.reply.dst,
            server: e.reply.src,
            server_port: e.reply.sport,
            proto: e.proto,
        })
    }
}

impl Lvs {
    pub fn new(table: String, namespaces: Vec<PathBuf>) -> Self {
        let mut sockets = vec![(None, None)];
        sockets.extend(namespaces.iter().map(|p| (Some(p.clone()), None)));
        Self {
            table,
            namespaces,
            sockets,
        }
    }
}

impl Snapshot for Lvs {
    fn meta(&self) -> TableMeta {
        super::table(
            &self.table,
            "NAT load-balancing links from conntrack's destination-NATed entries",
            &[
                (
                    "client_ip",
                    FieldType::Key,
                    "Client address (original source)",
                ),
                (
                    "virtual_ip",
                    FieldType::Key,
                    "Virtual address the client connected to",
                ),
                ("virtual_port", FieldType::Key, "Virtual port"),
                (
                    "local_ip",
                    FieldType::Key,
                    "Address the backend answers to (client or SNAT address)",
                ),
                ("server_ip", FieldType::Key, "Backend address after DNAT"),
                ("server_port", FieldType::Key, "Backend port after DNAT"),
                (
                    "protocol",
                    FieldType::Key,
                    "IP protocol number (6 TCP, 17 UDP, 132 SCTP)",
                ),
                ("link_count", FieldType::Gauge, "Live conntrack entries"),
            ],
        )
    }

    fn take(&mut self, warnings: &mut Vec<String>) -> Result<Vec<Vec<Value>>, SnapshotError> {
        let mut links = Vec::new();
        let mut read = 0;
        for (path, socket) in &mut self.sockets {
            let where_ = path.as_ref().map_or_else(
                || "the agent's namespace".to_owned(),
                |p| p.display().to_string(),
            );
            if socket.is_none() {
                let opened = match path {
                    None => conntrack::open(),
                    Some(p) => conntrack::open_in(p),
                };
                match opened {
                    Ok(fd) => *socket = Some(fd),
                    Err(e) => {
                        warnings.push(format!("conntrack socket in {where_}: {e}"));
                        continue;
                    }
                }
            }
            let Some(fd) = socket.as_ref() else { continue };
            match conntrack::dump(fd, |e| links.extend(Link::of(e))) {
                Ok(()) => read += 1,
                Err(e) => {
                    // Reopened next interval (a namespace may have been re-created).
                    *socket = None;
                    warnings.push(format!("conntrack dump in {where_}: {e}"));
                }
            }
        }
        if read == 0 {
            return Err(SnapshotError::Transient(
                "no conntrack table could be read".into(),
            ));
        }
        Ok(count_rows(links, |l| {
            vec![
                Value::from(ip_text(l.client)),
                Value::from(ip_text(l.virtual_ip)),
                Value::from(l.virtual_port),
                Value::from(ip_text(l.local)),
                Value::from(ip_text(l.server)),
                Value::from(l.server_port),
                Value::from(l.proto),
            ]
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::lb::conntrack::{parse_entry, tests::dnat_entry};

    #[test]
    fn a_live_dnat_entry_is_a_link_and_a_closed_one_is_not() {
        let e = parse_entry(&dnat_entry(3)).unwrap();
        let l = Link::of(&e).unwrap();
        assert_eq!(l.client, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(
            (l.virtual_ip, l.virtual_port),
            (IpAddr::from([10, 0, 0, 1]), 80)
        );
        assert_eq!(l.local, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(
            (l.server, l.server_port, l.proto),
            (IpAddr::from([10, 1, 0, 5]), 8080, 6)
        );
        assert!(Link::of(&parse_entry(&dnat_entry(7)).unwrap()).is_none());
        let mut plain = e;
        plain.status = 0x8;
        assert!(Link::of(&plain).is_none(), "not NATed");
    }
}
