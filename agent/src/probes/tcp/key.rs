//! A `tcp_link` row's identity and values, as the link state keeps them (`Key`: 44 bytes, no
//! heap) and as rows show them (`LinkKey`, `LinkRow`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use gopher_common::{ROLE_CLIENT, ROLE_SERVER};

/// A link's identity as rows show it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkKey {
    pub netns: u64,
    pub tgid: u32,
    pub role: u8,
    pub client_ip: IpAddr,
    pub server_ip: IpAddr,
    pub server_port: u16,
}

impl LinkKey {
    /// Address family as gala-gopher's `protocol` field reports it (2 = IPv4, 10 = IPv6).
    pub fn family(&self) -> u8 {
        if self.server_ip.is_ipv4() { 2 } else { 10 }
    }
}

/// The same identity, stored compactly (44 bytes, no heap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub(super) client: [u8; 16],
    pub(super) server: [u8; 16],
    /// Network namespace inode (the kernel's `unsigned int inum`).
    pub netns: u32,
    pub tgid: u32,
    pub port: u16,
    pub role: u8,
    pub(super) v6: bool,
}

pub(super) fn octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// The inverse of [`octets`]: `b`'s first four bytes when not `v6`.
pub(super) fn from_octets(v6: bool, b: [u8; 16]) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}

impl Key {
    pub fn new(netns: u64, tgid: u32, role: u8, client: IpAddr, server: IpAddr, port: u16) -> Self {
        Self {
            client: octets(client),
            server: octets(server),
            netns: u32::try_from(netns).unwrap_or(u32::MAX),
            tgid,
            port,
            role,
            v6: server.is_ipv6(),
        }
    }

    pub fn client_ip(&self) -> IpAddr {
        from_octets(self.v6, self.client)
    }

    pub fn server_ip(&self) -> IpAddr {
        from_octets(self.v6, self.server)
    }

    /// The other end's address.
    pub fn peer(&self) -> IpAddr {
        if self.role == ROLE_SERVER {
            self.client_ip()
        } else {
            self.server_ip()
        }
    }

    pub fn link_key(&self) -> LinkKey {
        LinkKey {
            netns: u64::from(self.netns),
            tgid: self.tgid,
            role: self.role,
            client_ip: self.client_ip(),
            server_ip: self.server_ip(),
            server_port: self.port,
        }
    }
}

/// Upper bounds (µs, inclusive) of the `srtt` histogram's buckets; above the last, `+Inf`.
/// From loopback and same-rack (tens of µs) to intercontinental (a quarter second).
pub const SRTT_BOUNDS_US: [u32; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// A finished row, ready to become `tcp_link` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRow {
    pub key: LinkKey,
    pub process_name: String,
    pub link_count: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub retran_packets: u64,
    pub lost_packets: u64,
    pub rtt_us: u64,
    /// Wall time (ms since the Unix epoch) this link's counters started from zero.
    pub start_ms: u64,
    pub send_rsts: u64,
    pub receive_rsts: u64,
    /// Live sockets per `srtt` bucket (`entries::SRTT_BOUNDS_US`, then above them all); None
    /// with none live.
    pub srtt_hist: Option<[u32; SRTT_BOUNDS_US.len() + 1]>,
    /// Sum of the live sockets' smoothed RTTs, µs.
    pub srtt_sum_us: u64,
}

/// What changed since the previous [`Links::take_delta`]: rows whose values moved, and links
/// forgotten (idle) since. A key may be in both when a forgotten link came back.
#[derive(Debug, Default)]
pub struct Delta {
    pub changed: Vec<LinkRow>,
    pub removed: Vec<LinkKey>,
}

/// Dual-stack sockets show IPv4 peers as `::ffff:a.b.c.d`; the traffic is IPv4, so is the row.
pub(crate) fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

pub(crate) fn ip_from_words(family: u8, words: [u32; 4]) -> IpAddr {
    // The words hold network-order bytes as the kernel stored them.
    let mut b = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    ip_from_bytes(family, b)
}

/// The address of `family` (AF_INET or AF_INET6) in `b`, 16 bytes in network order as the
/// kernel keeps them (IPv4 in the first four).
pub(crate) fn ip_from_bytes(family: u8, b: [u8; 16]) -> IpAddr {
    from_octets(i32::from(family) != libc::AF_INET, b)
}
