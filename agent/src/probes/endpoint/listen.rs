//! Listening TCP sockets as sock_diag reports them: for a LISTEN socket `idiag_rqueue` is the
//! accept queue's current length and `idiag_wqueue` its limit (the `listen()` backlog, capped
//! by `net.core.somaxconn`), and the socket's `sk_drops` (`INET_DIAG_SKMEMINFO`, slot
//! `SK_MEMINFO_DROPS`) counts every segment the kernel dropped on it: what `tcp_listendrop()`
//! counted (a SYN or handshake-completing ACK refused at a full accept or SYN queue, or without
//! memory: the listener's share of `TcpExtListenDrops`) and the segments of handshakes in
//! progress it discarded (a retransmitted SYN). Read once per interval: nothing runs per
//! connection or per packet.

use std::{collections::HashSet, io, net::IpAddr, os::fd::OwnedFd};

use gopher_common::{ReqKey, TCP_SYN_RECV};

use crate::probes::tcp::diag::{self, INET_DIAG_MSG_LEN, LISTEN_STATES, addr, u32_at};

/// `INET_DIAG_SKMEMINFO`: the socket's `sk_meminfo` array (u32 slots).
const INET_DIAG_SKMEMINFO: u16 = 7;
/// `SK_MEMINFO_DROPS`: the slot holding `sk_drops`.
const SK_MEMINFO_DROPS: usize = 8;

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// AF_INET (2) or AF_INET6 (10), as the kernel reports the socket.
    pub family: u8,
    /// The bound address as the kernel holds it (network byte order, IPv4 in the first word):
    /// how the eBPF programs key the listener.
    pub addr_words: [u32; 4],
    pub local: IpAddr,
    pub port: u16,
    pub inode: u64,
    /// Connections completed and waiting for `accept()`.
    pub accept_queue: u32,
    /// The most the accept queue holds before the listener drops.
    pub accept_queue_limit: u32,
    /// Drops the kernel counted on this listener (`sk_drops`); absent on a kernel that does not
    /// send the meminfo attribute.
    pub drops: Option<u32>,
}

/// Every listening TCP socket (IPv4, then IPv6) of the namespace `fd` lives in.
pub fn dump(fd: &OwnedFd, buf: &mut Vec<u8>, mut f: impl FnMut(Listener)) -> io::Result<()> {
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let ext = 1 << (INET_DIAG_SKMEMINFO - 1);
        diag::dump_raw(fd, family, LISTEN_STATES, ext, buf, |body| {
            if let Some(l) = parse(body, family) {
                f(l);
            }
        })?;
    }
    Ok(())
}

/// The handshakes in progress (request sockets) of the namespace `fd` lives in, whose cookie
/// is `netns_cookie`, into `out`, keyed as the eBPF programs key them. sock_diag reports a
/// request socket as SYN_RECV (asking for SYN_RECV dumps them); a full socket still in SYN_RECV
/// (a TCP Fast Open child) comes too and only delays nothing: no handshake of `REQS` has its key.
pub fn pending(
    fd: &OwnedFd,
    netns_cookie: u64,
    buf: &mut Vec<u8>,
    out: &mut HashSet<ReqKey>,
) -> io::Result<()> {
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        diag::dump_raw(fd, family, 1 << TCP_SYN_RECV, 0, buf, |body| {
            if body.len() < INET_DIAG_MSG_LEN || body[0] != family {
                return;
            }
            let id = &body[4..52];
            out.insert(ReqKey {
                netns_cookie,
                remote_v4: if family == libc::AF_INET as u8 {
                    u32::from_ne_bytes([id[20], id[21], id[22], id[23]])
                } else {
                    0
                },
                local_port: u16::from_be_bytes([id[0], id[1]]),
                remote_port: u16::from_be_bytes([id[2], id[3]]),
            });
        })?;
    }
    Ok(())
}

/// Reads a `SOCK_DIAG_BY_FAMILY` reply body (`inet_diag_msg`, then attributes).
fn parse(body: &[u8], family: u8) -> Option<Listener> {
    if body.len() < INET_DIAG_MSG_LEN || body[0] != family {
        return None;
    }
    let id = &body[4..52];
    let drops =
        diag::attribute(body, INET_DIAG_SKMEMINFO).and_then(|m| u32_at(m, SK_MEMINFO_DROPS * 4));
    let mut addr_words = [0u32; 4];
    for (w, b) in addr_words.iter_mut().zip(id[4..20].chunks_exact(4)) {
        *w = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    }
    Some(Listener {
        family,
        addr_words,
        local: addr(family, &id[4..20]),
        port: u16::from_be_bytes([id[0], id[1]]),
        inode: u64::from(u32_at(body, 68)?),
        accept_queue: u32_at(body, 56)?,
        accept_queue_limit: u32_at(body, 60)?,
        drops,
    })
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, TcpStream},
        os::fd::AsRawFd,
        time::{Duration, Instant},
    };

    use super::*;

    /// A real listener with backlog 1 that never accepts: two handshakes fill its queue
    /// (the kernel admits backlog + 1), and the kernel drops what comes after.
    #[test]
    fn a_listener_that_never_accepts_shows_a_full_queue_and_its_drops() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen(2) again on our own bound socket only changes its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 1) }, 0);
        let port = listener.local_addr().unwrap().port();
        let fd = diag::open().unwrap();
        let mut buf = Vec::new();
        let find = |buf: &mut Vec<u8>| {
            let mut out = None;
            dump(&fd, buf, |l| {
                if l.port == port {
                    out = Some(l);
                }
            })
            .unwrap();
            out.expect("the test's listener is dumped")
        };
        let l = find(&mut buf);
        assert_eq!(l.local, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!((l.accept_queue, l.accept_queue_limit), (0, 1));
        assert_eq!(l.drops, Some(0));
        assert_ne!(l.inode, 0);
        let _held: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        // A third client's SYN meets a full queue and is dropped (and retried by its kernel).
        let third = std::net::TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, port).into(),
            Duration::from_millis(300),
        );
        assert!(
            third.is_err(),
            "a full accept queue takes no third connection"
        );
        let start = Instant::now();
        loop {
            let l = find(&mut buf);
            assert_eq!((l.accept_queue, l.accept_queue_limit), (2, 1));
            if l.drops.unwrap() > 0 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no drop: {l:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
