//! Which process holds a socket: `/proc/<pid>/fd/*` links read `socket:[<inode>]`.
//!
//! Reading every process's fd table is the expensive part of attribution (on a node with 50 k
//! processes, one walk reads 50 k directories and every fd link in them), so it runs only when
//! some live socket's owner is unknown, at most once per interval. A socket whose owner cannot be
//! found (held by no fd: in flight over SCM_RIGHTS, or its process hidden from our /proc) would
//! otherwise cost a full walk every interval for as long as it lives: [`Resolver`] remembers such
//! misses and retries each after 1, 2, 4 … intervals (capped), so a walk happens only when some
//! socket is new or due again.

use std::{
    collections::{HashMap, HashSet},
    ffi::CStr,
};

/// Longest back-off between two searches for the same unfound socket, in intervals.
const MAX_BACKOFF: u32 = 64;
/// Unfound sockets remembered at most. Past it the oldest-looking entries are forgotten, which
/// only makes them due again: the walk count stays bounded by the sockets' churn.
const MAX_MISSES: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
    pub comm: String,
}

/// A socket not found at the last walk: when to look again, and how long the next wait is.
#[derive(Debug, Clone, Copy)]
struct Miss {
    due: u64,
    backoff: u32,
}

/// Owner lookups across intervals; each [`Resolver::resolve`] call is one interval.
#[derive(Debug, Default)]
pub struct Resolver {
    interval: u64,
    misses: HashMap<u64, Miss>,
    walks: u64,
}

impl Resolver {
    /// Looks up the owners of `wanted` socket inodes, walking /proc only if some of them are
    /// not waiting out a back-off. Returns the owners found.
    pub fn resolve(&mut self, wanted: impl Iterator<Item = u64>) -> HashMap<u64, Owner> {
        self.interval += 1;
        let now = self.interval;
        let due: HashSet<u64> = wanted
            .filter(|ino| self.misses.get(ino).is_none_or(|m| m.due <= now))
            .collect();
        if due.is_empty() {
            return HashMap::new();
        }
        self.walks += 1;
        let found = scan(&due);
        for ino in due {
            if found.contains_key(&ino) {
                self.misses.remove(&ino);
                continue;
            }
            let backoff = self
                .misses
                .get(&ino)
                .map_or(1, |m| (m.backoff * 2).min(MAX_BACKOFF));
            if self.misses.len() >= MAX_MISSES && !self.misses.contains_key(&ino) {
                // Forget half at once (amortised O(1) per miss): forgotten sockets are only due
                // again, and the live-socket pruning keeps this rare.
                let forget: Vec<u64> = self.misses.keys().take(MAX_MISSES / 2).copied().collect();
                for k in forget {
                    self.misses.remove(&k);
                }
            }
            self.misses.insert(
                ino,
                Miss {
                    due: now + u64::from(backoff),
                    backoff,
                },
            );
        }
        found
    }

    /// Forgets misses of sockets no longer live (inode numbers are reused).
    pub fn retain(&mut self, live: impl Fn(u64) -> bool) {
        self.misses.retain(|ino, _| live(*ino));
        if self.misses.capacity() > 256 && self.misses.len() * 4 < self.misses.capacity() {
            self.misses.shrink_to_fit();
        }
    }

    /// /proc walks done so far.
    #[cfg(test)]
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// Unfound sockets currently remembered.
    #[cfg(test)]
    pub fn misses(&self) -> usize {
        self.misses.len()
    }
}

/// Scans /proc for the owners of the given socket inodes. When several processes share a socket
/// (fork), the lowest pid wins, so repeated scans agree.
pub fn scan(wanted: &HashSet<u64>) -> HashMap<u64, Owner> {
    let mut found: HashMap<u64, Owner> = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    let mut pids: Vec<u32> = proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut link = [0u8; 64];
    for pid in pids {
        for_each_fd_link(pid, &mut link, |target| {
            let Some(inode) = socket_inode(target) else {
                return;
            };
            if wanted.contains(&inode) && !found.contains_key(&inode) {
                found.insert(
                    inode,
                    Owner {
                        tgid: pid,
                        comm: comm(pid),
                    },
                );
            }
        });
        if found.len() == wanted.len() {
            break;
        }
    }
    found
}

/// Calls `f` with the link target of every fd of `pid`. Reads links relative to the open fd
/// directory (`readlinkat`) into one buffer: a path lookup through /proc and an allocation per
/// fd are most of a walk's cost otherwise. Targets longer than the buffer are not sockets.
pub(super) fn for_each_fd_link(pid: u32, buf: &mut [u8], mut f: impl FnMut(&[u8])) {
    let Ok(path) = std::ffi::CString::new(format!("/proc/{pid}/fd")) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return; // exited, or a table we may not read
    }
    // SAFETY: `raw` is an open directory fd; on success the stream owns it.
    let dir = unsafe { libc::fdopendir(raw) };
    if dir.is_null() {
        // SAFETY: fdopendir failed, so `raw` is still ours to close.
        unsafe { libc::close(raw) };
        return;
    }
    loop {
        // SAFETY: `dir` is an open stream until closedir below.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            break;
        }
        // SAFETY: readdir returns a valid dirent whose d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes().first() == Some(&b'.') {
            continue;
        }
        // SAFETY: `raw` stays open while `dir` is; writes at most buf.len() bytes into `buf`.
        let n = unsafe { libc::readlinkat(raw, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if let Ok(n) = usize::try_from(n)
            && n < buf.len()
        {
            f(&buf[..n]);
        }
    }
    // SAFETY: `dir` is open and closed exactly once (closing `raw` with it).
    unsafe { libc::closedir(dir) };
}

pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end_matches('\n').to_owned())
        .unwrap_or_default()
}

fn socket_inode(link: &[u8]) -> Option<u64> {
    let rest = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// Gives a map's room back once it holds far fewer entries than it has room for.
pub(super) fn shrink<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(
    m: &mut std::collections::HashMap<K, V, S>,
) {
    if m.capacity() > 256 && m.len() * 4 < m.capacity() {
        m.shrink_to_fit();
    }
}

/// A kernel `comm` (NUL-padded) as text.
pub(super) fn comm_str(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::{fd::AsRawFd, unix::fs::MetadataExt};

    #[test]
    fn parses_socket_links() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[1]"), None);
        assert_eq!(socket_inode(b"socket:[x]"), None);
    }

    fn inode_of(fd: i32) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino()
    }

    #[test]
    fn finds_own_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = inode_of(l.as_raw_fd());
        let got = scan(&HashSet::from([ino]));
        assert_eq!(got.get(&ino).map(|o| o.tgid), Some(std::process::id()));
    }

    /// Sends `fd` over a unix socket pair with SCM_RIGHTS and leaves it unreceived: the socket
    /// then lives in the kernel, held by no process's fd table.
    fn send_fd(over: &std::os::unix::net::UnixStream, fd: i32) {
        let mut cmsg = [0u64; 8]; // u64: cmsghdr alignment
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: a zeroed msghdr is valid; the pointers set below outlive sendmsg.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure size computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<i32>() as u32) } as usize;
        // SAFETY: the control buffer is large enough for one fd (CMSG_SPACE above).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&raw const msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        }
        // SAFETY: msg is fully initialised.
        let rc = unsafe { libc::sendmsg(over.as_raw_fd(), &raw const msg, 0) };
        assert_eq!(rc, 1, "sendmsg: {}", std::io::Error::last_os_error());
    }

    #[test]
    fn an_unfindable_socket_is_searched_with_back_off_not_every_interval() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let lost = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let ino = inode_of(lost.as_raw_fd());
        let (tx, _rx) = std::os::unix::net::UnixStream::pair().unwrap();
        send_fd(&tx, lost.as_raw_fd());
        drop(lost); // now only the unreceived message holds it
        assert!(
            scan(&HashSet::from([ino])).is_empty(),
            "the in-flight socket must have no owner in /proc"
        );

        let own = inode_of(listener.as_raw_fd());
        let mut r = Resolver::default();
        let found = r.resolve([own, ino].into_iter());
        assert_eq!(found.get(&own).map(|o| o.tgid), Some(std::process::id()));
        assert_eq!(r.walks(), 1);
        // 100 more intervals asking for the unfindable socket: walks at intervals 2, 4, 8, 16,
        // 32 and 64 (back-off doubling to its cap), not 100.
        for _ in 0..100 {
            assert!(r.resolve(std::iter::once(ino)).is_empty());
        }
        assert_eq!(r.walks(), 1 + 6, "walks after 101 intervals");
        assert_eq!(r.misses(), 1);
        r.retain(|i| i != ino);
        assert_eq!(r.misses(), 0);
        // Forgotten (e.g. the inode was reused): looked for at once again.
        r.resolve(std::iter::once(ino));
        assert_eq!(r.walks(), 8);
    }
}
