//! Network namespaces: which exist, and one sock_diag socket inside each.
//!
//! sock_diag answers only for the namespace its socket lives in, so the agent keeps one socket
//! per namespace, created by a short-lived thread that `setns()`s into it (a socket stays in the
//! namespace it was created in). Sockets of vanished namespaces are closed, because an open
//! socket would keep a dead namespace alive.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

/// SO_NETNS_COOKIE (Linux 5.14): the same cookie `bpf_get_netns_cookie` returns.
const SO_NETNS_COOKIE: i32 = 71;

pub struct Namespace {
    pub inode: u64,
    pub cookie: u64,
    pub diag: OwnedFd,
}

#[derive(Default)]
pub struct Namespaces {
    pub by_inode: HashMap<u64, Namespace>,
}

/// Every network namespace reachable through a process or a pinned namespace file.
pub fn discover() -> HashMap<u64, PathBuf> {
    let mut found = HashMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(meta) = std::fs::metadata(&path) {
            found.entry(meta.ino()).or_insert(path);
        }
    };
    add(PathBuf::from("/proc/self/ns/net"));
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            if name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
                add(entry.path().join("ns/net"));
            }
        }
    }
    // `ip netns add` and CNI plugins pin namespaces in /run/netns, Docker in /run/docker/netns;
    // a pinned namespace may have no process left in it while its sockets still close.
    for pins in ["/run/netns", "/run/docker/netns"] {
        if let Ok(dir) = std::fs::read_dir(pins) {
            for entry in dir.flatten() {
                add(entry.path());
            }
        }
    }
    found
}

impl Namespaces {
    /// Opens sockets in new namespaces and closes those of vanished ones. Returns errors per
    /// namespace path (a process may exit between discovery and open: not fatal).
    pub fn refresh(&mut self) -> Vec<(PathBuf, io::Error)> {
        let current = discover();
        self.by_inode.retain(|ino, _| current.contains_key(ino));
        let mut errors = Vec::new();
        for (ino, path) in current {
            if self.by_inode.contains_key(&ino) {
                continue;
            }
            match open_in(&path) {
                Ok(diag) => {
                    let cookie = netns_cookie(&diag).unwrap_or(0);
                    self.by_inode.insert(
                        ino,
                        Namespace {
                            inode: ino,
                            cookie,
                            diag,
                        },
                    );
                }
                Err(e) => errors.push((path, e)),
            }
        }
        errors
    }

    pub fn inode_of_cookie(&self, cookie: u64) -> Option<u64> {
        self.by_inode
            .values()
            .find(|ns| ns.cookie == cookie && cookie != 0)
            .map(|ns| ns.inode)
    }
}

/// Creates a sock_diag socket inside the namespace at `path`.
fn open_in(path: &Path) -> io::Result<OwnedFd> {
    let ns = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd affects only this short-lived thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            super::diag::open()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}

fn netns_cookie(fd: &OwnedFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_namespace_with_a_cookie() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let mut ns = Namespaces::default();
        ns.refresh();
        let me = ns.by_inode.get(&own).expect("own namespace");
        assert_ne!(me.cookie, 0);
        assert_eq!(ns.inode_of_cookie(me.cookie), Some(own));
    }
}
