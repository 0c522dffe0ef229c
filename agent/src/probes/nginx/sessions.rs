//! From the upstream connections the uprobes recorded to `(client, front, backend)` link counts.
//!
//! For each recorded `(process, ngx_connection_t *)` this reads, from the nginx process's memory
//! (`process_vm_readv`), only leading struct fields that have not moved in nginx 1.x:
//! `ngx_connection_t { void *data; read; write; ngx_socket_t fd; … }` and, at `data`, the
//! request (`ngx_http_request_t`) or session (`ngx_stream_session_t`), both
//! `{ uint32_t signature; ngx_connection_t *connection; … }` with the signature "HTTP"/"STRM".
//! The client connection is `connection`; a connection whose `data` is not a request or session
//! (a keepalive connection waiting in the cache, a freed one) serves no session now and is not
//! counted. The two descriptors become sockets through `/proc/<pid>/fd` and the sockets'
//! addresses come from sock_diag (in the process's network namespace), so no address layout of
//! nginx is read. Addresses are cached by socket inode: a dump happens only when a new socket
//! appears, so a steady interval costs a few small reads per live session.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::IpAddr,
    os::fd::OwnedFd,
    path::Path,
};

use gopher_common::NginxPeer;

use crate::probes::tcp::{diag, netns};

/// `NGX_HTTP_MODULE`, the `signature` of every `ngx_http_request_t`.
const SIG_HTTP: u32 = 0x5054_5448;
/// `NGX_STREAM_MODULE`, the `signature` of every `ngx_stream_session_t`.
const SIG_STREAM: u32 = 0x4d52_5453;
/// Offset of `fd` in `ngx_connection_t` (after three pointers), of `connection` in a request
/// or session (after the 4-byte signature, pointer-aligned). 64-bit builds only.
const CONN_FD: usize = 24;
const SESSION_CONN: usize = 8;

/// One row of the link table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkKey {
    pub client_ip: IpAddr,
    pub virtual_ip: IpAddr,
    pub virtual_port: u16,
    pub server_ip: IpAddr,
    pub server_port: u16,
    pub is_l7: bool,
}

/// Why a recorded connection was not counted as a session, for `gopher_nginx_sessions_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// A socket that is not TCP over IPv4/IPv6 (unix-socket upstream, UDP stream proxying).
    NotTcp,
    /// The process memory or descriptors could not be read (it exited meanwhile).
    Unreadable,
}

impl Skip {
    pub const ALL: [Self; 2] = [Self::NotTcp, Self::Unreadable];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotTcp => "not_tcp",
            Self::Unreadable => "unreadable",
        }
    }
}

/// What one interval found.
#[derive(Debug, Default)]
pub struct Census {
    pub links: HashMap<LinkKey, u64>,
    /// Recorded connections that are gone (freed, process exited): the caller removes them.
    pub dead: Vec<NginxPeer>,
    pub skipped: HashMap<Skip, u64>,
}

#[derive(Clone, Copy)]
struct Ends {
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
}

/// Socket addresses by inode, and one sock_diag socket per network namespace.
#[derive(Default)]
pub struct Resolver {
    addrs: HashMap<u64, Option<Ends>>,
    diag: HashMap<u64, OwnedFd>,
    buf: Vec<u8>,
}

/// Every TCP state a proxied connection can be in (not LISTEN, TIME_WAIT, NEW_SYN_RECV).
const STATES: u32 = (1 << gopher_common::TCP_ESTABLISHED)
    | (1 << gopher_common::TCP_SYN_SENT)
    | (1 << gopher_common::TCP_SYN_RECV)
    | (1 << gopher_common::TCP_FIN_WAIT1)
    | (1 << gopher_common::TCP_FIN_WAIT2)
    | (1 << gopher_common::TCP_CLOSE)
    | (1 << gopher_common::TCP_CLOSE_WAIT)
    | (1 << gopher_common::TCP_LAST_ACK)
    | (1 << gopher_common::TCP_CLOSING);

impl Resolver {
    /// Counts the sessions behind `peers` (every recorded upstream connection).
    pub fn census(&mut self, peers: &[NginxPeer]) -> Census {
        let mut out = Census::default();
        // (peer, is_l7, client inode, upstream inode, netns inode) of every live session.
        let mut found = Vec::with_capacity(peers.len());
        let mut wanted: HashMap<u64, HashSet<u64>> = HashMap::new();
        // One stat per process, not per session.
        let mut namespaces: HashMap<u32, Option<u64>> = HashMap::new();
        for peer in peers {
            match session(peer) {
                Ok(Some((is_l7, client_fd, upstream_fd))) => {
                    let (Some(ci), Some(ui)) = (
                        socket_inode(peer.tgid, client_fd),
                        socket_inode(peer.tgid, upstream_fd),
                    ) else {
                        *out.skipped.entry(Skip::NotTcp).or_default() += 1;
                        continue;
                    };
                    let ns = *namespaces
                        .entry(peer.tgid)
                        .or_insert_with(|| netns_inode(peer.tgid));
                    let Some(ns) = ns else {
                        *out.skipped.entry(Skip::Unreadable).or_default() += 1;
                        continue;
                    };
                    for inode in [ci, ui] {
                        if !self.addrs.contains_key(&inode) {
                            wanted.entry(ns).or_default().insert(inode);
                        }
                    }
                    found.push((peer.tgid, is_l7, ci, ui, ns));
                }
                Ok(None) => {}
                Err(Gone) => out.dead.push(*peer),
            }
        }
        for (ns, inodes) in wanted {
            let pid = found.iter().find(|f| f.4 == ns).map_or(0, |f| f.0);
            if let Err(e) = self.dump(ns, pid, &inodes) {
                tracing::debug!("nginx probe: sock_diag in netns {ns}: {e}");
            }
        }
        let mut live = HashSet::with_capacity(found.len() * 2);
        for (_, is_l7, ci, ui, _) in found {
            live.insert(ci);
            live.insert(ui);
            let (Some(Some(client)), Some(Some(upstream))) =
                (self.addrs.get(&ci), self.addrs.get(&ui))
            else {
                *out.skipped.entry(Skip::NotTcp).or_default() += 1;
                continue;
            };
            let key = LinkKey {
                client_ip: client.remote.0,
                virtual_ip: client.local.0,
                virtual_port: client.local.1,
                server_ip: upstream.remote.0,
                server_port: upstream.remote.1,
                is_l7,
            };
            *out.links.entry(key).or_default() += 1;
        }
        // Inodes are only reused after their socket is gone: forget what no session holds.
        self.addrs.retain(|inode, _| live.contains(inode));
        out
    }

    /// One dump of the namespace's TCP sockets, keeping the addresses of `inodes` (those not
    /// found are remembered as not TCP until their session ends).
    fn dump(&mut self, ns: u64, pid: u32, inodes: &HashSet<u64>) -> io::Result<()> {
        let fd = match self.diag.entry(ns) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                netns::open_in(Path::new(&format!("/proc/{pid}/ns/net"))).map_err(|(_, e)| e)?,
            ),
        };
        let addrs = &mut self.addrs;
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            diag::dump(fd, family, STATES, &mut self.buf, |s| {
                if inodes.contains(&s.inode) {
                    addrs.insert(
                        s.inode,
                        Some(Ends {
                            local: (s.local.to_canonical(), s.local_port),
                            remote: (s.remote.to_canonical(), s.remote_port),
                        }),
                    );
                }
            })?;
        }
        for inode in inodes {
            addrs.entry(*inode).or_insert(None);
        }
        Ok(())
    }

    /// Drops the sock_diag sockets of namespaces no nginx runs in any more.
    pub fn keep_namespaces(&mut self, live: &HashSet<u64>) {
        self.diag.retain(|ns, _| live.contains(ns));
    }
}

/// The connection is freed or its process gone: it will never serve a session again.
pub struct Gone;

/// `(is_l7, client fd, upstream fd)` when the upstream connection serves a session now.
pub fn session(peer: &NginxPeer) -> Result<Option<(bool, i32, i32)>, Gone> {
    let mut conn = [0u8; 32];
    read_mem(peer.tgid, peer.conn, &mut conn).map_err(|_| Gone)?;
    let data = u64_at(&conn, 0);
    let fd = i32_at(&conn, CONN_FD);
    if fd < 0 {
        // ngx_close_connection sets fd to -1 before the connection goes back to the free list.
        return Err(Gone);
    }
    if data == 0 {
        return Ok(None);
    }
    let mut head = [0u8; 16];
    if read_mem(peer.tgid, data, &mut head).is_err() {
        return Ok(None);
    }
    let is_l7 = match u32_at(&head, 0) {
        SIG_HTTP => true,
        SIG_STREAM => false,
        _ => return Ok(None),
    };
    let client = u64_at(&head, SESSION_CONN);
    // A connection whose request points back at it is a client connection (the pointer was
    // reused after the upstream connection closed): not an upstream one.
    if client == 0 || client == peer.conn {
        return Ok(None);
    }
    let mut client_conn = [0u8; 32];
    if read_mem(peer.tgid, client, &mut client_conn).is_err() {
        return Ok(None);
    }
    let client_fd = i32_at(&client_conn, CONN_FD);
    if client_fd < 0 {
        return Ok(None);
    }
    Ok(Some((is_l7, client_fd, fd)))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(-1, i32::from_ne_bytes)
}

/// Reads `buf.len()` bytes at `addr` of process `pid`.
fn read_mem(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`; the remote address is
    // only ever dereferenced by the kernel, which checks it against the other process's map.
    let n = unsafe {
        libc::process_vm_readv(
            pid.cast_signed(),
            &raw const local,
            1,
            &raw const remote,
            1,
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n.cast_unsigned() != buf.len() {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(())
}

/// The inode of the socket behind descriptor `fd` of `pid` (`socket:[N]`).
fn socket_inode(pid: u32, fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The inode of the network namespace of `pid`.
pub fn netns_inode(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_spell_http_and_strm() {
        assert_eq!(&SIG_HTTP.to_le_bytes(), b"HTTP");
        assert_eq!(&SIG_STREAM.to_le_bytes(), b"STRM");
    }

    /// A fake connection in this very process: data -> session -> client connection.
    #[test]
    fn reads_a_session_from_a_process_and_refuses_freed_and_client_connections() {
        #[repr(C)]
        struct Conn {
            data: u64,
            read: u64,
            write: u64,
            fd: i32,
            pad: i32,
        }
        #[repr(C)]
        struct Sess {
            signature: u32,
            connection: u64,
        }
        let pid = std::process::id();
        let client = Box::new(Conn {
            data: 0,
            read: 0,
            write: 0,
            fd: 7,
            pad: 0,
        });
        let sess = Box::new(Sess {
            signature: SIG_STREAM,
            connection: std::ptr::from_ref(&*client) as u64,
        });
        let mut up = Box::new(Conn {
            data: std::ptr::from_ref(&*sess) as u64,
            read: 0,
            write: 0,
            fd: 9,
            pad: 0,
        });
        let conn = std::ptr::from_ref(&*up) as u64;
        let peer = NginxPeer {
            tgid: pid,
            _pad: 0,
            conn,
        };
        assert!(matches!(session(&peer), Ok(Some((false, 7, 9)))));
        // The same connection pointer now serving as a client connection of its own session.
        let own = Box::new(Sess {
            signature: SIG_HTTP,
            connection: conn,
        });
        up.data = std::ptr::from_ref(&*own) as u64;
        assert!(matches!(session(&peer), Ok(None)));
        up.fd = -1;
        assert!(session(&peer).is_err());
        let _ = (
            &client.data,
            &client.read,
            &client.write,
            &client.pad,
            &up.read,
            &up.write,
            &up.pad,
        );
    }
}
