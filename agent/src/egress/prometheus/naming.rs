//! gala-gopher naming for `/metrics` (`[web_server] metric_names = "gala-gopher"`).
//!
//! Queries, dashboards and models written for gala-gopher HEAD (gala-anteater, gala-spider in
//! Prometheus mode) look for `gala_gopher_tcp_link_rx_bytes{machine_id="…",comm="…"}`. In this
//! mode the encoder writes, for the tables gopher shares with gala-gopher:
//! - field names as gala-gopher HEAD's meta files spell them ([`RENAMES`]; e.g. `tcp_link`'s
//!   `process_name` is `comm`, `packets_in` is `segs_in`, `lost_packets` is `lost_out`; its
//!   `srtt` is a histogram as in gala-gopher HEAD, so the mean gauge keeps gopher's `rtt`),
//!   others unchanged;
//! - counters without the `_total` suffix gopher adds (gala-gopher never adds one). They stay
//!   typed `counter`, so that rate() keeps its meaning: this is the one thing promtool reports
//!   in this mode ("counter metrics should have "_total" suffix"), once per such family. In
//!   OpenMetrics, which requires `_total` on counter samples, they are typed `unknown`;
//! - a `machine_id` label last on every table series, built like gala-gopher's: the system
//!   UUID (`/sys/class/dmi/id/product_uuid`, else gala-gopher's `/opt/gala-gopher/machine_id`,
//!   else systemd's `/etc/machine-id` as it is), a `-`, and the host's first non-loopback IPv4
//!   address (the first `inet` that `ip a` lists). The agent's own `gopher_*` metrics are not
//!   gala-gopher's and keep their names and labels.
//!
//! The default naming costs the encoder nothing: the choice is made once per table, and the
//! per-sample loop is the same code with an empty suffix.

use std::net::Ipv4Addr;

/// How `/metrics` names families and labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Naming {
    /// gopher's own names (promtool-clean).
    #[default]
    Gopher,
    /// gala-gopher HEAD's names; the label `machine_id` carries this value.
    GalaGopher { machine_id: String },
}

/// `(table, gopher's field name, gala-gopher HEAD's)`: only where they differ. From
/// gala-gopher's `tcpprobe/tcp_link.meta` (table `tcp_metric`, entity `tcp_link`), whose keys
/// are tgid, comm, role, client_ip, server_ip, server_port, protocol, … and whose metrics
/// include rx_bytes, tx_bytes, segs_in, segs_out, retran_packets, lost_out, send_rsts,
/// receive_rsts and the histogram srtt (gopher's own field names match those three).
pub const RENAMES: &[(&str, &str, &str)] = &[
    ("tcp_link", "process_name", "comm"),
    ("tcp_link", "packets_in", "segs_in"),
    ("tcp_link", "packets_out", "segs_out"),
    ("tcp_link", "lost_packets", "lost_out"),
];

impl Naming {
    /// The gala-gopher naming with this host's machine id.
    pub fn gala_gopher() -> Self {
        Self::GalaGopher {
            machine_id: machine_id(),
        }
    }

    /// The name field `field` of `table` is exported under.
    pub(super) fn field<'a>(&self, table: &str, field: &'a str) -> &'a str {
        match self {
            Self::Gopher => field,
            Self::GalaGopher { .. } => RENAMES
                .iter()
                .find(|(t, from, _)| *t == table && *from == field)
                .map_or(field, |(_, _, to)| to),
        }
    }

    /// Whether counters get gopher's `_total` suffix.
    pub(super) fn total_suffix(&self) -> bool {
        matches!(self, Self::Gopher)
    }

    /// The label appended to every table series (`machine_id="…"`), or "" for none.
    pub(super) fn extra_label(&self, taken: impl Fn(&str) -> bool) -> String {
        match self {
            Self::GalaGopher { machine_id } if !taken("machine_id") => {
                let mut out = String::from("machine_id=\"");
                super::write_label_value(&mut out, machine_id);
                out.push('"');
                out
            }
            _ => String::new(),
        }
    }
}

/// gala-gopher's machine id: `<system uuid>-<host IPv4>` (see the module doc).
pub fn machine_id() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let uuid = read("/sys/class/dmi/id/product_uuid")
        .or_else(|| read("/opt/gala-gopher/machine_id"))
        .or_else(|| read("/etc/machine-id"))
        .unwrap_or_default();
    let ip = host_ipv4().map_or_else(String::new, |ip| ip.to_string());
    format!("{uuid}-{ip}")
}

/// The first IPv4 address other than 127.0.0.1, in the order the kernel lists interfaces.
fn host_ipv4() -> Option<Ipv4Addr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose family we check first.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if ip != Ipv4Addr::LOCALHOST {
            found = Some(ip);
            break;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renames_only_in_gala_mode_and_only_listed_fields() {
        let gala = Naming::GalaGopher {
            machine_id: "m".into(),
        };
        assert_eq!(gala.field("tcp_link", "process_name"), "comm");
        assert_eq!(gala.field("tcp_link", "rx_bytes"), "rx_bytes");
        // gala-gopher HEAD's srtt is a histogram: gopher's is too, and the mean keeps `rtt`.
        assert_eq!(gala.field("tcp_link", "srtt"), "srtt");
        assert_eq!(gala.field("tcp_link", "rtt"), "rtt");
        assert_eq!(gala.field("other", "process_name"), "process_name");
        assert_eq!(
            Naming::Gopher.field("tcp_link", "process_name"),
            "process_name"
        );
        assert_eq!(gala.extra_label(|_| false), "machine_id=\"m\"");
        assert_eq!(gala.extra_label(|n| n == "machine_id"), "");
        assert_eq!(Naming::Gopher.extra_label(|_| false), "");
    }

    #[test]
    fn machine_id_is_uuid_dash_ip() {
        let id = machine_id();
        let (uuid, ip) = id.rsplit_once('-').unwrap();
        assert!(!uuid.is_empty(), "{id}");
        if !ip.is_empty() {
            let ip: Ipv4Addr = ip.parse().unwrap();
            assert_ne!(ip, Ipv4Addr::LOCALHOST);
        }
    }
}
