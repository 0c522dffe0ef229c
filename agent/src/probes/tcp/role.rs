//! The role of a socket the eBPF side never saw open (it predates the probe, or the `LINKS` map
//! was full): server if something listens on its local port in its namespace, as the kernel
//! itself decides, else guessed from the ports when nothing listens there any more.
//!
//! Why the guess: a server that closed its listener (draining before a restart, a one-shot
//! accept) still holds its accepted connections. Taken as a client, such a socket would become a
//! client-role link keyed by its peer's ephemeral port: one bogus link per connection, and a
//! topology edge pointing the wrong way. The kernel hands out ephemeral ports from
//! `ip_local_port_range`; a socket whose own port lies outside it while its peer's lies inside
//! was accepted, not connected.

use super::links::{ROLE_CLIENT, ROLE_SERVER};

/// Linux's default `ip_local_port_range`, used when the file cannot be read.
const DEFAULT_EPHEMERAL: (u16, u16) = (32768, 60999);

/// The host's ephemeral port range (`net.ipv4.ip_local_port_range`; namespaces rarely change
/// it, and the guess only matters for sockets without a listener).
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_range(&s))
        .unwrap_or(DEFAULT_EPHEMERAL)
}

fn parse_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo <= hi).then_some((lo, hi))
}

/// The role of a socket the eBPF side has no record of.
pub fn unrecorded(listening: bool, local_port: u16, remote_port: u16, eph: (u16, u16)) -> u8 {
    let ephemeral = |p: u16| (eph.0..=eph.1).contains(&p);
    if listening || (!ephemeral(local_port) && ephemeral(remote_port)) {
        ROLE_SERVER
    } else {
        ROLE_CLIENT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_decides_and_without_one_the_ports_do() {
        let eph = (32768, 60999);
        assert_eq!(unrecorded(true, 40000, 80, eph), ROLE_SERVER);
        // Accepted on a port nothing listens on any more, from an ephemeral port.
        assert_eq!(unrecorded(false, 8080, 45000, eph), ROLE_SERVER);
        // Connected from an ephemeral port to a service port.
        assert_eq!(unrecorded(false, 45000, 8080, eph), ROLE_CLIENT);
        // Nothing to tell them apart: a client, as before.
        assert_eq!(unrecorded(false, 8080, 9090, eph), ROLE_CLIENT);
        assert_eq!(unrecorded(false, 45000, 46000, eph), ROLE_CLIENT);
    }

    #[test]
    fn the_range_is_read_as_the_kernel_writes_it() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_range("60999 32768"), None);
        assert_eq!(parse_range("x"), None);
        let (lo, hi) = ephemeral_range();
        assert!(lo <= hi);
    }
}
