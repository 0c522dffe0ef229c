//! Which process holds a socket: `/proc/<pid>/fd/*` links read `socket:[<inode>]`.
//!
//! Reading every process's fd table is the expensive part of attribution, so it runs only when
//! some live socket's owner is unknown, at most once per interval, and remembers what it saw.

use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
    pub comm: String,
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
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(target.as_os_str().as_encoded_bytes()) else {
                continue;
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
        }
        if found.len() == wanted.len() {
            break;
        }
    }
    found
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn parses_socket_links() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[1]"), None);
        assert_eq!(socket_inode(b"socket:[x]"), None);
    }

    #[test]
    fn finds_own_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let got = scan(&HashSet::from([ino]));
        assert_eq!(got.get(&ino).map(|o| o.tgid), Some(std::process::id()));
    }
}
