//! Conntrack table dumps over ctnetlink (NETLINK_NETFILTER, `conntrack -L`), in one network
//! namespace, streamed entry by entry.
//!
//! Hand-written like the tcp probe's sock_diag code: the one dump crate on crates.io (`conntrack`
//! 0.1, one maintainer, neli + log) collects every flow with all attributes into a `Vec` and
//! cannot open its socket in another namespace; what the lb probes need is four attributes
//! (tuples, status, TCP state) read as the datagrams arrive, in ~200 lines.

use std::{
    fs::OpenOptions,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::probes::netlink;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`: family, version, res_id.
const NFGENMSG_LEN: usize = 4;
/// Strips NLA_F_NESTED and NLA_F_NET_BYTEORDER.
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;

/// `IPS_DST_NAT`: the original destination was rewritten (DNAT, REDIRECT, IPVS with conntrack).
pub const IPS_DST_NAT: u32 = 1 << 5;
/// `IPS_SEEN_REPLY`: a packet went the reply way (the server answered).
pub const IPS_SEEN_REPLY: u32 = 1 << 1;
/// `IPS_DYING`: being removed; no longer a live link.
const IPS_DYING: u32 = 1 << 9;
/// TCP conntrack states TIME_WAIT (7) and CLOSE (8): the connection is over, only the entry's
/// timer is left.
const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
const TCP_CONNTRACK_CLOSE: u8 = 8;
/// Receive buffer for one dump datagram.
const DUMP_BUFFER: usize = 64 * 1024;

static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);

/// One direction's addresses and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// One conntrack entry, as far as the lb probes read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// IP protocol number (6 TCP, 17 UDP, …).
    pub proto: u8,
    /// As the client sent it: client → virtual address.
    pub orig: Tuple,
    /// As the answering side sent it: server → local (NAT) address.
    pub reply: Tuple,
    pub status: u32,
    /// TCP only: the conntrack TCP state.
    pub tcp_state: Option<u8>,
}

impl Entry {
    /// Still a live flow: not dying, and for TCP not past its close (TIME_WAIT/CLOSE entries
    /// only wait for their timer).
    pub fn live(&self) -> bool {
        self.status & IPS_DYING == 0
            && !matches!(
                self.tcp_state,
                Some(TCP_CONNTRACK_TIME_WAIT | TCP_CONNTRACK_CLOSE)
            )
    }
}

/// Opens a ctnetlink socket in the calling thread's network namespace.
pub fn open() -> io::Result<OwnedFd> {
    netlink::socket(NETLINK_NETFILTER)
}

/// Opens a ctnetlink socket inside the network namespace at `ns` (`/proc/<pid>/ns/net`,
/// `/run/netns/<name>`): a short-lived thread enters it, and the socket stays there.
pub fn open_in(ns: &Path) -> io::Result<OwnedFd> {
    in_netns(ns, open)
}

/// Runs `f` on a short-lived thread inside the network namespace at `ns`.
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(ns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid fd affects only this short-lived thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}

/// Dumps every conntrack entry (IPv4 and IPv6) of the socket's namespace, handing each to `f`
/// as its datagram arrives.
pub fn dump(fd: &OwnedFd, mut f: impl FnMut(&Entry)) -> io::Result<()> {
    let mut req = [0u8; NLMSG_HDRLEN + NFGENMSG_LEN];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    let ty = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    req[4..6].copy_from_slice(&ty.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC (both families), NFNETLINK_V0, res_id 0.
    // SAFETY: sending a fully initialised buffer on a valid netlink socket.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; DUMP_BUFFER];
    netlink::recv_dump(fd, &mut buf, |b| parse_messages(b, seq, &mut f))
}

/// Parses one datagram of netlink messages; true at NLMSG_DONE.
fn parse_messages(mut b: &[u8], seq: u32, f: &mut impl FnMut(&Entry)) -> io::Result<bool> {
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_ne(b, 0) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(io::Error::other("truncated netlink message"));
        }
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        let msg_seq = u32_ne(b, 8);
        let body = &b[NLMSG_HDRLEN..len];
        b = &b[align(len).min(b.len())..];
        if msg_seq != seq {
            continue;
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = body
                    .get(0..4)
                    .map_or(0, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]));
                if errno == 0 {
                    continue;
                }
                return Err(io::Error::from_raw_os_error(-errno));
            }
            _ => {
                if let Some(entry) = body.get(NFGENMSG_LEN..).and_then(parse_entry) {
                    f(&entry);
                }
            }
        }
    }
    Ok(false)
}

/// One conntrack message's attributes; `None` when a tuple is missing or malformed.
pub(crate) fn parse_entry(attrs: &[u8]) -> Option<Entry> {
    let mut orig = None;
    let mut reply = None;
    let mut status = 0;
    let mut tcp_state = None;
    for (ty, v) in Attrs(attrs) {
        match ty {
            CTA_TUPLE_ORIG => orig = parse_tuple(v),
            CTA_TUPLE_REPLY => reply = parse_tuple(v),
            CTA_STATUS if v.len() >= 4 => status = u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            CTA_PROTOINFO => {
                for (ty, v) in Attrs(v) {
                    if ty == CTA_PROTOINFO_TCP {
                        tcp_state = Attrs(v)
                            .find(|(t, v)| *t == CTA_PROTOINFO_TCP_STATE && !v.is_empty())
                            .map(|(_, v)| v[0]);
                    }
                }
            }
            _ => {}
        }
    }
    let ((proto, orig), (_, reply)) = (orig?, reply?);
    Some(Entry {
        proto,
        orig,
        reply,
        status,
        tcp_state,
    })
}

fn parse_tuple(b: &[u8]) -> Option<(u8, Tuple)> {
    let (mut src, mut dst) = (None, None);
    let (mut proto, mut sport, mut dport) = (None, 0, 0);
    for (ty, v) in Attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, v) in Attrs(v) {
                    let ip = match (ty, v.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
                            IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))
                        }
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                            let mut a = [0u8; 16];
                            a.copy_from_slice(v);
                            IpAddr::V6(Ipv6Addr::from(a))
                        }
                        _ => continue,
                    };
                    if matches!(ty, CTA_IP_V4_SRC | CTA_IP_V6_SRC) {
                        src = Some(ip);
                    } else {
                        dst = Some(ip);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, v) in Attrs(v) {
                    match (ty, v.len()) {
                        (CTA_PROTO_NUM, 1..) => proto = Some(v[0]),
                        (CTA_PROTO_SRC_PORT, 2..) => sport = u16::from_be_bytes([v[0], v[1]]),
                        (CTA_PROTO_DST_PORT, 2..) => dport = u16::from_be_bytes([v[0], v[1]]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        proto?,
        Tuple {
            src: src?,
            dst: dst?,
            sport,
            dport,
        },
    ))
}

/// Walks netlink attributes: (type without flags, payload).
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        if len < 4 || len > b.len() {
            self.0 = &[];
            return None;
        }
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        self.0 = &b[align(len).min(b.len())..];
        Some((ty, &b[4..len]))
    }
}

const fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((payload.len() + 4) as u16).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(payload);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let ip = [attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)].concat();
        let proto = [
            attr(CTA_PROTO_NUM, &[6]),
            attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
            attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
        ]
        .concat();
        [
            attr(CTA_TUPLE_IP | 0x8000, &ip),
            attr(CTA_TUPLE_PROTO | 0x8000, &proto),
        ]
        .concat()
    }

    /// The attributes of a DNAT'd TCP entry in the given conntrack TCP state.
    pub(crate) fn dnat_entry(state: u8) -> Vec<u8> {
        let info = attr(
            CTA_PROTOINFO_TCP | 0x8000,
            &attr(CTA_PROTOINFO_TCP_STATE, &[state]),
        );
        [
            attr(
                CTA_TUPLE_ORIG | 0x8000,
                &tuple([10, 0, 0, 2], [10, 0, 0, 1], 40000, 80),
            ),
            attr(
                CTA_TUPLE_REPLY | 0x8000,
                &tuple([10, 1, 0, 5], [10, 0, 0, 2], 8080, 40000),
            ),
            attr(CTA_STATUS, &(IPS_DST_NAT | 0x8).to_be_bytes()),
            attr(CTA_PROTOINFO | 0x8000, &info),
        ]
        .concat()
    }

    #[test]
    fn parses_a_dnat_entry() {
        let e = parse_entry(&dnat_entry(3)).unwrap();
        assert_eq!(e.proto, 6);
        assert_eq!(e.orig.src, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(
            (e.orig.dst, e.orig.dport),
            (IpAddr::from([10, 0, 0, 1]), 80)
        );
        assert_eq!(
            (e.reply.src, e.reply.sport),
            (IpAddr::from([10, 1, 0, 5]), 8080)
        );
        assert!(e.status & IPS_DST_NAT != 0);
        assert_eq!(e.tcp_state, Some(3));
        assert!(e.live());
        assert!(
            !parse_entry(&dnat_entry(TCP_CONNTRACK_TIME_WAIT))
                .unwrap()
                .live()
        );
    }

    #[test]
    fn malformed_attributes_are_no_entry() {
        assert!(parse_entry(&[]).is_none());
        let mut b = dnat_entry(3);
        b.truncate(7);
        assert!(parse_entry(&b).is_none());
        assert!(parse_entry(&[0xff, 0xff, 1, 0, 0, 0]).is_none());
    }

    #[test]
    fn dumps_the_own_namespace() {
        // Root only (CAP_NET_ADMIN); the table may be empty, the dump must still finish.
        let fd = open().unwrap();
        let mut n = 0;
        dump(&fd, |_| n += 1).unwrap();
        let fd = open_in(Path::new("/proc/self/ns/net")).unwrap();
        dump(&fd, |_| {}).unwrap();
    }
}
