//! The upstream connections an nginx worker already holds when the probe first sees it (the
//! probe attached, or the agent restarted, while sessions were open): the uprobes only see
//! connections being made, so without this such sessions would be missed until they
//! reconnect, and `link_count` would not be exact.
//!
//! Where from: nginx's epoll event module registers every connection it uses (client,
//! upstream, listening) with its epoll instance for the connection's whole life (edge-triggered,
//! `ngx_epoll_add_connection` on accept and in `ngx_event_connect_peer`, removed only in
//! `ngx_close_connection`), with the `ngx_connection_t *` as the event's data (its low bit is
//! nginx's "instance" flag). The kernel lists those registrations in
//! `/proc/<pid>/fdinfo/<epoll fd>` (`tfd: … data: <hex>`), so the worker's live connections are
//! read without any knowledge of `ngx_cycle_t`'s layout, which changes between releases. Each
//! candidate then goes through the same check as a recorded connection (`sessions::session`):
//! only those whose `data` is a request or session of another (client) connection are upstream
//! connections serving a session now, and those are added to the probe's map as if the uprobe
//! had seen them being made. From then on `ngx_close_connection` removes them as usual.
//!
//! Not covered: nginx built or configured to use another event method than epoll (`use poll;`,
//! `use select;`): its connections are not listed by the kernel; they are counted from their
//! next (re)connect, as before.

use std::fs;

use gopher_common::NginxPeer;

use super::sessions;

/// The upstream connections of process `pid` serving a session now.
pub fn upstreams(pid: u32) -> Vec<NginxPeer> {
    registered(pid)
        .into_iter()
        .map(|conn| NginxPeer {
            tgid: pid,
            _pad: 0,
            conn,
        })
        .filter(|peer| matches!(sessions::session(peer), Ok(Some(_))))
        .collect()
}

/// Every pointer registered with any epoll instance of `pid`, instance bit cleared, deduplicated.
fn registered(pid: u32) -> Vec<u64> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for entry in dir.flatten() {
        let is_epoll =
            fs::read_link(entry.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[eventpoll]");
        if !is_epoll {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        if let Ok(text) = fs::read_to_string(info) {
            out.extend(epoll_data(&text));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The `data` of each `tfd:` line of an epoll fdinfo, low (instance) bit cleared.
fn epoll_data(fdinfo: &str) -> impl Iterator<Item = u64> + '_ {
    fdinfo.lines().filter_map(|line| {
        if !line.starts_with("tfd:") {
            return None;
        }
        let mut words = line.split_whitespace();
        words.find(|w| *w == "data:")?;
        let data = u64::from_str_radix(words.next()?, 16).ok()?;
        (data > 1).then_some(data & !1)
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn parses_the_kernel_fdinfo_lines() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t26\n\
            tfd:        5 events:     2019 data:     5613b264fa00  pos:0 ino:427186f sdev:9\n\
            tfd:        9 events: 8000201d data:     5613b264fcd1  pos:0 ino:42718f5 sdev:9\n\
            tfd:        4 events:       19 data:                0  pos:0 ino:1 sdev:9\n";
        assert_eq!(
            epoll_data(text).collect::<Vec<_>>(),
            [0x5613_b264_fa00, 0x5613_b264_fcd0]
        );
    }

    /// A real epoll instance of this process, registered the way nginx does (pointer | instance).
    #[test]
    fn lists_the_pointers_registered_with_a_real_epoll_instance() {
        // SAFETY: plain syscalls on descriptors this test owns.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0);
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = Box::new(0u64);
        let ptr = std::ptr::from_ref(&*target) as u64;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: ptr | 1,
        };
        // SAFETY: as above.
        let rc = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, sock.as_raw_fd(), &raw mut ev) };
        assert_eq!(rc, 0);
        let found = registered(std::process::id());
        // SAFETY: closing the descriptor created above.
        unsafe { libc::close(ep) };
        assert!(found.contains(&ptr), "{ptr:x} not in {found:x?}");
        // A pointer that is no nginx connection is not taken for an upstream one.
        assert!(upstreams(std::process::id()).is_empty());
    }
}
