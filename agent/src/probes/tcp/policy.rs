//! What the TCP probe keeps: the series cap, client-address aggregation and include/exclude
//! filters (`[probes.params]` of the tcp probe; reference in docs/config.md).
//!
//! A server-role link is one per client address, so a public listener alone can make millions
//! of series. Sockets are filtered and their client address masked once, when the socket is
//! first keyed; the cap itself is applied by `links.rs`, which knows how many links exist.

use std::net::IpAddr;

/// Default cap on individual `tcp_link` rows: sized for one busy node's links, far below what
/// a Prometheus server tolerates per target.
pub const DEFAULT_MAX_SERIES: u32 = 50_000;

/// An address block; a bare address is a /32 (/128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub(super) fn parse(s: &str) -> Option<Self> {
        let (a, p) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() { max } else { p.parse().ok()? };
        (prefix <= max).then(|| Self {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// `ip` with everything after the first `prefix` bits zeroed.
pub fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// Include/exclude lists of one kind; an empty include list includes everything.
#[derive(Debug, Clone)]
pub struct Filter<T> {
    pub include: Vec<T>,
    pub exclude: Vec<T>,
}

impl<T> Default for Filter<T> {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

impl<T> Filter<T> {
    fn admits(&self, matches: impl Fn(&T) -> bool) -> bool {
        (self.include.is_empty() || self.include.iter().any(&matches))
            && !self.exclude.iter().any(matches)
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// Individual links kept; more are folded into aggregate rows.
    pub max_series: u32,
    /// Client addresses of server-role links are cut to this many leading bits.
    pub client_prefix_v4: u8,
    pub client_prefix_v6: u8,
    /// By server port (inclusive ranges).
    pub ports: Filter<(u16, u16)>,
    /// By the peer's address.
    pub cidrs: Filter<Cidr>,
    /// By process name (comm, exact).
    pub processes: Filter<String>,
    /// Which rows carry the `srtt` histogram.
    pub srtt_histogram: SrttHistogram,
}

/// Which `tcp_link` rows carry the `srtt` histogram (15 series per row in Prometheus: 13
/// buckets, `+Inf`, sum and count, where the rest of a row is 8). A link with one open
/// connection has a histogram of one observation, which its `rtt` already is: most links of a
/// busy node (100 k idle links: 800 k series without those histograms, 2.3 M with them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrttHistogram {
    /// Links with two or more open connections (the default).
    #[default]
    Shared,
    /// Every link with an open connection.
    All,
    /// None: `rtt` only.
    Off,
}

impl SrttHistogram {
    /// Whether a link with `live` open connections carries the histogram.
    pub fn carried(self, live: u32) -> bool {
        match self {
            Self::Shared => live >= 2,
            Self::All => live >= 1,
            Self::Off => false,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_series: DEFAULT_MAX_SERIES,
            client_prefix_v4: 32,
            client_prefix_v6: 128,
            ports: Filter::default(),
            cidrs: Filter::default(),
            processes: Filter::default(),
            srtt_histogram: SrttHistogram::default(),
        }
    }
}

impl Policy {
    /// Aggregate rows allowed beyond `max_series` (one per process, role and server); past
    /// them, overflow goes to one catch-all row per role and family.
    pub fn max_aggregates(&self) -> u32 {
        (self.max_series / 10).max(64)
    }

    /// The most `tcp_link` rows this policy lets exist: the store's record cap for the table
    /// must not be lower.
    pub fn max_rows(&self) -> u32 {
        self.max_series
            .saturating_add(self.max_aggregates())
            .saturating_add(4)
    }

    /// Whether a socket with this server port, peer address and process name is kept.
    pub fn admits(&self, server_port: u16, peer: IpAddr, comm: &str) -> bool {
        self.admits_address(server_port, peer) && self.processes.admits(|p| p == comm)
    }

    /// Whether [`Policy::admits`] looks at the process name.
    pub fn filters_processes(&self) -> bool {
        !(self.processes.include.is_empty() && self.processes.exclude.is_empty())
    }

    /// The part of [`Policy::admits`] known without the owner: a socket refused here needs
    /// no owner lookup at all.
    pub fn admits_address(&self, server_port: u16, peer: IpAddr) -> bool {
        self.ports
            .admits(|&(lo, hi)| (lo..=hi).contains(&server_port))
            && self.cidrs.admits(|c| c.contains(peer))
    }

    /// The client address a server-role link is keyed with.
    pub fn client_of_server_link(&self, client: IpAddr) -> IpAddr {
        match client {
            IpAddr::V4(_) => mask(client, self.client_prefix_v4),
            IpAddr::V6(_) => mask(client, self.client_prefix_v6),
        }
    }
}

/// A TOML array of strings/integers, or one comma-separated string (what `gopher ctl --param`
/// can send), as trimmed non-empty items.
pub(super) fn items(v: &toml::Value) -> Option<Vec<String>> {
    let raw: Vec<String> = match v {
        toml::Value::String(s) => s.split(',').map(str::to_owned).collect(),
        toml::Value::Integer(i) => vec![i.to_string()],
        toml::Value::Array(a) => a
            .iter()
            .map(|x| match x {
                toml::Value::String(s) => Some(s.clone()),
                toml::Value::Integer(i) => Some(i.to_string()),
                _ => None,
            })
            .collect::<Option<_>>()?,
        _ => return None,
    };
    Some(
        raw.iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

pub(super) fn port_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    (lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml: &str) -> Result<Policy, crate::probes::ParamError> {
        super::super::params::policy(&toml::from_str(toml).unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_mask_server_links_clients() {
        let p = policy("client_prefix_v4 = 24\nclient_prefix_v6 = 64").unwrap();
        assert_eq!(p.client_of_server_link(ip("10.1.2.3")), ip("10.1.2.0"));
        assert_eq!(
            p.client_of_server_link(ip("fd00:1:2:3:4::5")),
            ip("fd00:1:2:3::")
        );
        let all = policy("aggregate_clients = true").unwrap();
        assert_eq!(all.client_of_server_link(ip("10.1.2.3")), ip("0.0.0.0"));
        assert_eq!(all.client_of_server_link(ip("::1")), ip("::"));
        let none = Policy::default();
        assert_eq!(none.client_of_server_link(ip("10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn filters_by_port_cidr_and_process() {
        let p = policy(
            "include_ports = [80, \"8000-8009\"]\nexclude_cidrs = \"127.0.0.0/8, ::1\"\n\
             exclude_processes = [\"sshd\"]",
        )
        .unwrap();
        assert!(p.admits(80, ip("10.0.0.1"), "nginx"));
        assert!(p.admits(8005, ip("10.0.0.1"), "nginx"));
        assert!(!p.admits(8010, ip("10.0.0.1"), "nginx"));
        assert!(!p.admits(80, ip("127.3.4.5"), "nginx"));
        assert!(!p.admits(80, ip("::1"), "nginx"));
        assert!(p.admits(80, ip("::2"), "nginx"));
        assert!(!p.admits(80, ip("10.0.0.1"), "sshd"));
        let inc = policy("include_cidrs = [\"10.0.0.0/8\"]\ninclude_processes = \"a,b\"").unwrap();
        assert!(inc.admits(1, ip("10.9.9.9"), "b"));
        assert!(!inc.admits(1, ip("11.0.0.1"), "b"));
        assert!(!inc.admits(1, ip("10.0.0.1"), "c"));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (toml, key) in [
            ("max_series = 0", "max_series"),
            ("client_prefix_v4 = 33", "client_prefix_v4"),
            ("client_prefix_v6 = -1", "client_prefix_v6"),
            ("aggregate_clients = 1", "aggregate_clients"),
            ("include_ports = [\"80-70\"]", "include_ports"),
            ("exclude_ports = \"x\"", "exclude_ports"),
            ("include_cidrs = [\"10.0.0.0/33\"]", "include_cidrs"),
            (
                "exclude_processes = [\"a-name-longer-than-15\"]",
                "exclude_processes",
            ),
        ] {
            let e = policy(toml).unwrap_err().to_string();
            assert!(e.starts_with(&format!("probes[tcp].params.{key}: ")), "{e}");
        }
    }

    #[test]
    fn the_row_bound_covers_aggregates() {
        let p = policy("max_series = 1000").unwrap();
        assert_eq!(p.max_rows(), 1000 + 100 + 4);
        assert_eq!(Policy::default().max_rows(), 50_000 + 5_000 + 4);
    }
}
