//! Netlink sockets for the probes that dump kernel tables (sock_diag in `tcp`, ctnetlink in
//! `lb`): opening one in the calling thread's network namespace, and reading a dump's datagrams
//! until its parser has seen the end.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// Opens a netlink socket of `protocol` (NETLINK_SOCK_DIAG, NETLINK_NETFILTER, …).
pub fn socket(protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is checked and owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Receives datagrams into `buf` and hands each to `parse` until it returns `Ok(true)` (the
/// dump's NLMSG_DONE) or an error.
pub fn recv_dump(
    fd: &OwnedFd,
    buf: &mut [u8],
    mut parse: impl FnMut(&[u8]) -> io::Result<bool>,
) -> io::Result<()> {
    loop {
        // SAFETY: receiving into an owned buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if parse(&buf[..n.unsigned_abs()])? {
            return Ok(());
        }
    }
}
