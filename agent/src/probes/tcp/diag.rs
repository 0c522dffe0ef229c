//! sock_diag (NETLINK_SOCK_DIAG) dumps of TCP sockets with their `tcp_info`.
//!
//! A sock_diag socket answers for the network namespace it was created in; see `netns.rs`.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use gopher_common::{
    TCP_CLOSE_WAIT, TCP_CLOSING, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LAST_ACK,
    TCP_LISTEN,
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_INFO: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
pub const INET_DIAG_MSG_LEN: usize = 72;

static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);

/// States in which a socket carries a link's counters (not LISTEN, SYN_*, TIME_WAIT or CLOSE):
/// the kernel skips every other socket, so the dump costs only what the probe uses.
pub const LINK_STATES: u32 = (1 << TCP_ESTABLISHED)
    | (1 << TCP_FIN_WAIT1)
    | (1 << TCP_FIN_WAIT2)
    | (1 << TCP_CLOSE_WAIT)
    | (1 << TCP_LAST_ACK)
    | (1 << TCP_CLOSING);
pub const LISTEN_STATES: u32 = 1 << TCP_LISTEN;
/// Receive buffer for one dump datagram (the kernel fills up to this much per recv).
pub const DUMP_BUFFER: usize = 64 * 1024;

/// Counters of one socket, from `struct tcp_info` (UAPI) or from the eBPF close event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes_received: u64,
    pub bytes_acked: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    pub total_retrans: u32,
    pub lost: u32,
    /// Smoothed RTT, µs.
    pub srtt_us: u32,
}

impl From<&gopher_common::LinkStats> for Counters {
    fn from(s: &gopher_common::LinkStats) -> Self {
        Self {
            bytes_received: s.bytes_received,
            bytes_acked: s.bytes_acked,
            segs_in: s.segs_in,
            segs_out: s.segs_out,
            total_retrans: s.total_retrans,
            lost: s.lost_out,
            srtt_us: s.srtt_us,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    pub state: u8,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub inode: u64,
    pub cookie: u64,
    pub counters: Option<Counters>,
}

/// Opens a sock_diag socket in the calling thread's current network namespace.
pub fn open() -> io::Result<OwnedFd> {
    crate::probes::netlink::socket(NETLINK_SOCK_DIAG)
}

/// Dumps the TCP sockets of one address family (AF_INET / AF_INET6) in the given states (a
/// bit per TCP state), handing each to `f` as its datagram arrives: nothing is collected, so a
/// dump of any size needs only `buf` (grown to [`DUMP_BUFFER`]).
pub fn dump(
    fd: &OwnedFd,
    family: u8,
    states: u32,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(&DiagSocket),
) -> io::Result<()> {
    dump_raw(fd, family, states, 1 << (INET_DIAG_INFO - 1), buf, |body| {
        if let Some(sock) = parse_socket(body, family) {
            f(&sock);
        }
    })
}

/// [`dump`] with the extensions `ext` (a bit per `INET_DIAG_*` attribute) asked for, handing
/// each socket's `inet_diag_msg` and attributes (the message body) to `f` unparsed: for
/// readers that need other facts of a socket (the endpoint probe's listener queues).
pub fn dump_raw(
    fd: &OwnedFd,
    family: u8,
    states: u32,
    ext: u8,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut req = [0u8; NLMSG_HDRLEN + 56];
    // inet_diag_req_v2: family, protocol, ext, pad, states, sockid (zeroed: all sockets)
    req[16] = family;
    req[17] = libc::IPPROTO_TCP as u8;
    req[18] = ext;
    req[20..24].copy_from_slice(&states.to_ne_bytes());
    let seq = send_request(fd, &mut req, NLM_F_REQUEST | NLM_F_DUMP)?;
    buf.resize(DUMP_BUFFER, 0);
    crate::probes::netlink::recv_dump(fd, buf, |b| parse_messages(b, seq, &mut f))
}

/// The inode of one socket (0 for an orphan), asked of sock_diag by its address, ports and
/// cookie (an exact request, not a dump): for the few sockets whose owner must be looked up
/// after a socket-iterator walk, which reads inodes of listeners only. `None` when the socket
/// is gone.
pub fn inode_of(fd: &OwnedFd, s: &DiagSocket, buf: &mut Vec<u8>) -> io::Result<Option<u64>> {
    let family = if s.local.is_ipv4() && s.remote.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    };
    let mut req = [0u8; NLMSG_HDRLEN + 56];
    req[16] = family;
    req[17] = libc::IPPROTO_TCP as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    // inet_diag_sockid: sport, dport (big-endian), src[16], dst[16], if, cookie[2].
    let id = &mut req[24..72];
    id[0..2].copy_from_slice(&s.local_port.to_be_bytes());
    id[2..4].copy_from_slice(&s.remote_port.to_be_bytes());
    for (at, ip) in [(4, s.local), (20, s.remote)] {
        match ip {
            IpAddr::V4(v4) if family == libc::AF_INET as u8 => {
                id[at..at + 4].copy_from_slice(&v4.octets());
            }
            IpAddr::V4(v4) => id[at..at + 16].copy_from_slice(&v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => id[at..at + 16].copy_from_slice(&v6.octets()),
        }
    }
    id[40..44].copy_from_slice(&(s.cookie as u32).to_ne_bytes());
    id[44..48].copy_from_slice(&((s.cookie >> 32) as u32).to_ne_bytes());
    let seq = send_request(fd, &mut req, NLM_F_REQUEST)?;
    buf.resize(DUMP_BUFFER, 0);
    let mut found = None;
    // The answer is one message (the socket, or an error such as ENOENT); a datagram of an
    // earlier, interrupted request carries another sequence number and is skipped.
    loop {
        let n = recv_datagram(fd, buf)?;
        let mut answered = false;
        let done = parse_messages(&buf[..n], seq, &mut |body: &[u8]| {
            if let Some(d) = parse_socket(body, family) {
                answered = true;
                found = Some(d.inode);
            }
        });
        match done {
            Ok(_) if answered => return Ok(found),
            // NLMSG_ERROR 0 / NLMSG_DONE without a socket.
            Ok(true) => return Ok(None),
            Ok(false) => {}
            // ENOENT: no such socket; ESTALE: those addresses, another cookie.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Fills in the netlink header of a `SOCK_DIAG_BY_FAMILY` request (its body already in
/// `req`) and sends it; returns its sequence number. Replies carry it: anything else is a
/// leftover of an earlier, interrupted request and is skipped.
fn send_request(fd: &OwnedFd, req: &mut [u8], flags: u16) -> io::Result<u32> {
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // SAFETY: sending a fully initialised buffer on a valid netlink socket; the kernel is the
    // default destination of an unbound netlink socket.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(seq)
}

/// One datagram of the answer into `buf`; returns its length.
fn recv_datagram(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: receiving into an owned buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Fills in the inodes a socket-iterator walk left out (it reads those of listeners only: the
/// read costs a fifth of its kernel time per socket) for the few new sockets whose owner must
/// be found in /proc: one exact request each, on the sock_diag socket of its namespace. A
/// socket gone meanwhile keeps 0 (its close event names its owner when the eBPF side knew it).
pub fn fill_inodes<'a>(
    socks: impl Iterator<Item = (&'a OwnedFd, &'a mut DiagSocket)>,
    buf: &mut Vec<u8>,
) {
    for (fd, s) in socks {
        match inode_of(fd, s, buf) {
            Ok(ino) => s.inode = ino.unwrap_or(0),
            Err(e) => tracing::debug!("sock_diag inode request failed: {e}"),
        }
    }
}

/// Every socket the probe uses in the namespace of `fd`: listeners first, then the sockets in
/// [`LINK_STATES`], IPv4 then IPv6 (what the socket iterator hands over in one walk).
pub fn dump_sockets(
    fd: &OwnedFd,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(&DiagSocket),
) -> io::Result<()> {
    for states in [LISTEN_STATES, LINK_STATES] {
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            dump(fd, family, states, buf, &mut f)?;
        }
    }
    Ok(())
}

/// Parses one datagram of netlink messages; returns true at NLMSG_DONE.
fn parse_messages(mut data: &[u8], seq: u32, f: &mut impl FnMut(&[u8])) -> io::Result<bool> {
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap_or_default()) as usize;
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let body = &data[NLMSG_HDRLEN..len];
        let msg_seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        let aligned = (len + 3) & !3;
        if msg_seq != seq {
            data = data.get(aligned..).unwrap_or_default();
            continue;
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = body
                    .get(0..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                return Ok(true);
            }
            SOCK_DIAG_BY_FAMILY => f(body),
            _ => {}
        }
        data = data.get(aligned..).unwrap_or_default();
    }
    Ok(false)
}

fn parse_socket(body: &[u8], family: u8) -> Option<DiagSocket> {
    if body.len() < INET_DIAG_MSG_LEN || body[0] != family {
        return None;
    }
    let state = body[1];
    let id = &body[4..52];
    let local_port = u16::from_be_bytes([id[0], id[1]]);
    let remote_port = u16::from_be_bytes([id[2], id[3]]);
    let local = addr(family, &id[4..20]);
    let remote = addr(family, &id[20..36]);
    let cookie = u64::from(u32_at(id, 40)?) | (u64::from(u32_at(id, 44)?) << 32);
    let inode = u64::from(u32_at(body, 68)?);
    let counters = attribute(body, INET_DIAG_INFO).and_then(parse_tcp_info);
    Some(DiagSocket {
        state,
        local,
        local_port,
        remote,
        remote_port,
        inode,
        cookie,
        counters,
    })
}

/// CPU time the calling thread has used, user and kernel: the kernel part of a dump is the
/// sock_diag cost proper (walking the socket tables, filling tcp_info).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime {
    pub user: Duration,
    pub sys: Duration,
}

impl CpuTime {
    pub fn since(self, earlier: Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            sys: self.sys.saturating_sub(earlier.sys),
        }
    }
}

pub fn thread_cpu() -> CpuTime {
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is valid on Linux.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &raw mut ru) } != 0 {
        return CpuTime::default();
    }
    let d = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.unsigned_abs())
            + Duration::from_micros(t.tv_usec.unsigned_abs())
    };
    CpuTime {
        user: d(ru.ru_utime),
        sys: d(ru.ru_stime),
    }
}

/// The payload of the first attribute of type `ty` after a reply's `inet_diag_msg`.
pub fn attribute(body: &[u8], ty: u16) -> Option<&[u8]> {
    let mut attrs = body.get(INET_DIAG_MSG_LEN..)?;
    while attrs.len() >= 4 {
        let alen = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let aty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if alen < 4 || alen > attrs.len() {
            return None;
        }
        if aty == ty {
            return Some(&attrs[4..alen]);
        }
        attrs = attrs.get((alen + 3) & !3..).unwrap_or_default();
    }
    None
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads the fields we need from `struct tcp_info` by their UAPI offsets. Older kernels send a
/// shorter struct: missing fields read as absent rather than garbage.
fn parse_tcp_info(info: &[u8]) -> Option<Counters> {
    Some(Counters {
        lost: u32_at(info, 32)?,
        srtt_us: u32_at(info, 68)?,
        total_retrans: u32_at(info, 100)?,
        bytes_acked: u64_at(info, 120)?,
        bytes_received: u64_at(info, 128)?,
        segs_out: u32_at(info, 136)?,
        segs_in: u32_at(info, 140)?,
    })
}

pub fn addr(family: u8, raw: &[u8]) -> IpAddr {
    let mut b = [0u8; 16];
    b.copy_from_slice(&raw[..16]);
    super::ip_from_bytes(family, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_a_live_loopback_link_with_counters() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut client, &[7u8; 1000]).unwrap();
        let mut got = [0u8; 1000];
        std::io::Read::read_exact(&mut server, &mut got).unwrap();

        let fd = open().unwrap();
        let mut socks = Vec::new();
        let mut buf = Vec::new();
        let v4 = libc::AF_INET as u8;
        dump(&fd, v4, LISTEN_STATES, &mut buf, |s| socks.push(s.clone())).unwrap();
        assert!(
            socks.iter().all(|s| u32::from(s.state) == TCP_LISTEN),
            "only the states asked for"
        );
        dump(&fd, v4, LINK_STATES, &mut buf, |s| socks.push(s.clone())).unwrap();
        let listen = socks
            .iter()
            .find(|s| s.local_port == port && u32::from(s.state) == TCP_LISTEN);
        assert!(listen.is_some(), "listener on {port} not dumped");
        let srv = socks
            .iter()
            .find(|s| s.local_port == port && u32::from(s.state) == TCP_ESTABLISHED)
            .expect("server side of the link");
        let c = srv.counters.expect("tcp_info");
        assert_eq!(c.bytes_received, 1000);
        assert_ne!(srv.cookie, 0);
        assert_ne!(srv.inode, 0);
    }

    #[test]
    fn an_exact_request_finds_the_inode_of_one_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let cport = client.local_addr().unwrap().port();
        let (_server, _) = listener.accept().unwrap();
        let fd = open().unwrap();
        let mut socks = Vec::new();
        let mut buf = Vec::new();
        dump(&fd, libc::AF_INET as u8, LINK_STATES, &mut buf, |s| {
            // Both ends of this link only (other tests' sockets may share one of the ports).
            let ports = (s.local_port, s.remote_port);
            if ports == (port, cport) || ports == (cport, port) {
                socks.push(s.clone());
            }
        })
        .unwrap();
        assert_eq!(socks.len(), 2, "both ends of the link");
        for s in &socks {
            assert_ne!(s.inode, 0);
            assert_eq!(inode_of(&fd, s, &mut buf).unwrap(), Some(s.inode));
            // Another cookie is another socket: none.
            let other = DiagSocket {
                cookie: s.cookie ^ 1,
                ..s.clone()
            };
            assert_eq!(inode_of(&fd, &other, &mut buf).unwrap(), None);
        }
    }

    /// The kernel's share of a dump, per socket, for whatever this namespace holds (hold 100 k
    /// links first, see the report): `cargo test -p gopher --lib dump_cost -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "measurement; needs many sockets to mean anything"]
    fn dump_cost() {
        let fd = open().unwrap();
        let mut buf = Vec::new();
        for _ in 0..5 {
            let mut n = 0u64;
            let (t, cpu) = (std::time::Instant::now(), thread_cpu());
            for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                dump(&fd, family, LINK_STATES, &mut buf, |_| n += 1).unwrap();
            }
            let (wall, used) = (t.elapsed(), thread_cpu().since(cpu));
            let per = |d: Duration| d.as_nanos() as f64 / n.max(1) as f64 / 1000.0;
            println!(
                "{n} sockets: wall {wall:?} ({:.2} us/socket), kernel {:?} ({:.2} us/socket), user {:?} ({:.2} us/socket)",
                per(wall),
                used.sys,
                per(used.sys),
                used.user,
                per(used.user)
            );
        }
    }
}
