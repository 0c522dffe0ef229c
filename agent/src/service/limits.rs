//! The open-files limit. The tcp probe keeps one sock_diag socket per network namespace, so a
//! node with thousands of namespaces needs thousands of descriptors, more than the usual soft
//! limit of 1024. The systemd unit sets `LimitNOFILE=65536`; elsewhere (a container whose
//! runtime leaves the soft limit at 1024 under a high hard limit, as containerd 2 does, or a
//! shell) the agent raises its soft limit to the hard limit at start, which needs no privilege
//! (the practice systemd recommends to programs that need many files). It never raises the hard
//! limit (that would need CAP_SYS_RESOURCE, which the agent does not have).

/// Raises the soft RLIMIT_NOFILE to the hard one; returns `(before, after)` soft limits. A
/// failure is returned for the caller to log: the agent still runs, with fewer namespaces.
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above, on structs we own.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) };
        let hard = lim.rlim_max;
        // Lower the soft limit first, so that there is something to raise.
        lim.rlim_cur = hard.min(512);
        assert_eq!(
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) },
            0
        );
        let (before, after) = raise_nofile().unwrap();
        assert_eq!(before, hard.min(512));
        assert_eq!(after, hard);
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) };
        assert_eq!(lim.rlim_cur, hard);
    }
}
