//! Live TCP sockets from the eBPF `iter/tcp` program (agent-ebpf/src/iter.rs), the cheaper
//! source of what a sock_diag dump gives (`diag.rs`): same sockets, same [`DiagSocket`]s,
//! except that only listeners carry their inode (the collector asks sock_diag for the inodes
//! of the few new sockets whose owner it must find, `diag::inode_of`).
//!
//! Why: at 100 k idle sockets the kernel side of sock_diag (a netlink message and a full
//! `tcp_info` per socket, under the socket lock) alone costs 3–4 % of a core at a 5 s
//! interval. The iterator walks the same tables and writes a 96-byte record of the dozen
//! fields the probe uses.
//!
//! A BPF iterator walks the network namespace of the process that created the iterator fd, so
//! each dump creates one fd per namespace from a short-lived thread that `setns()`s into each
//! in turn (found through the namespace's sock_diag socket, `SIOCGSKNS`, so `netns.rs` keeps
//! one handle per namespace). The fds are then read on the caller's thread.
//!
//! Loading can fail (no BTF, a kernel without `bpf_iter_tcp`, a verifier that refuses the
//! loads): the probe then keeps sock_diag, and says so once.

use std::{
    fs::File,
    io::{self, Read as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use anyhow::{Context as _, anyhow};
use aya::{Ebpf, programs::Iter};
use gopher_common::IterSocket;

use super::{
    bpf::Programs,
    diag::{Counters, DiagSocket},
};

/// `SIOCGSKNS`: a new fd of the network namespace a socket lives in (Linux 4.9).
const SIOCGSKNS: libc::c_ulong = 0x894C;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;
const RECORD: usize = size_of::<IterSocket>();
/// Namespaces whose iterators are made (and open) at once.
pub const OPEN_AT_ONCE: usize = 256;
/// Read size: a whole number of records, about what the kernel's seq_file buffer holds.
pub const READ_BUFFER: usize = RECORD * 512;

/// The attached iterator: a bpf link from which each dump creates its iterator fds.
pub struct TcpIter {
    link: OwnedFd,
    own_netns: u64,
}

impl TcpIter {
    /// Loads and attaches `gopher_iter_tcp`. The object must have been loaded with the socket
    /// offsets set (see [`Programs::iter_offsets`]).
    pub fn load(programs: &mut Programs) -> anyhow::Result<Self> {
        if let Some(e) = &programs.iter_offsets {
            return Err(anyhow!("kernel struct offsets unknown: {e}"));
        }
        Self::attach(&mut programs.ebpf)
    }

    /// [`Self::load`] from an object loaded with the offsets set.
    fn attach(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
        let prog: &mut Iter = ebpf
            .program_mut("gopher_iter_tcp")
            .ok_or_else(|| anyhow!("program gopher_iter_tcp missing from the eBPF object"))?
            .try_into()
            .context("gopher_iter_tcp has an unexpected type")?;
        prog.load("tcp", &btf).context("loading gopher_iter_tcp")?;
        let prog_fd = prog.fd().context("gopher_iter_tcp fd")?.as_fd();
        let link = link_create(prog_fd).context("attaching gopher_iter_tcp")?;
        let own_netns = std::fs::metadata("/proc/self/ns/net")
            .map_or(0, |m| std::os::unix::fs::MetadataExt::ino(&m));
        let it = Self { link, own_netns };
        // One walk proves the whole path (iterator creation and reads) before it is chosen.
        let fd = it.create().context("creating a tcp iterator")?;
        read(fd, &mut Vec::new(), |_| {}).context("reading a tcp iterator")?;
        // Parsing the kernel's BTF (for the offsets, and again in aya for the attach point)
        // leaves ~10 MB of freed heap that glibc would keep for good: hand it back.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free memory to the system.
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(it)
    }

    /// One iterator fd per namespace, created inside it: `(netns inode, sock_diag socket of
    /// that namespace)` in, `(netns inode, iterator or why not)` out.
    pub fn open(&self, namespaces: &[(u64, RawFd)]) -> Vec<(u64, io::Result<OwnedFd>)> {
        let mut out = Vec::with_capacity(namespaces.len());
        let mut others = Vec::new();
        for &(ino, fd) in namespaces {
            if ino == self.own_netns {
                out.push((ino, self.create()));
            } else {
                others.push((ino, fd));
            }
        }
        if others.is_empty() {
            return out;
        }
        std::thread::scope(|s| {
            let made = s.spawn(|| {
                others
                    .iter()
                    .map(|&(ino, fd)| (ino, self.create_in(fd)))
                    .collect::<Vec<_>>()
            });
            match made.join() {
                Ok(made) => out.extend(made),
                Err(_) => out.extend(
                    others
                        .iter()
                        .map(|&(ino, _)| (ino, Err(io::Error::other("netns thread panicked")))),
                ),
            }
        });
        out
    }

    /// In the calling thread's namespace. Only for threads that may change namespace.
    fn create_in(&self, socket: RawFd) -> io::Result<OwnedFd> {
        // SAFETY: ioctl on a socket fd the caller keeps open; returns a new fd or -1.
        let ns = unsafe { libc::ioctl(socket, SIOCGSKNS) };
        if ns < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nothing else owns.
        let ns = unsafe { OwnedFd::from_raw_fd(ns) };
        // SAFETY: setns affects only this thread, which the caller dedicates to it.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.create()
    }

    /// An iterator over the calling thread's current network namespace.
    fn create(&self) -> io::Result<OwnedFd> {
        #[repr(C)]
        struct IterCreate {
            link_fd: u32,
            flags: u32,
        }
        let attr = IterCreate {
            link_fd: self.link.as_raw_fd() as u32,
            flags: 0,
        };
        bpf(
            BPF_ITER_CREATE,
            (&raw const attr).cast(),
            size_of::<IterCreate>(),
        )
    }
}

fn link_create(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // The head of `bpf_attr.link_create`, the rest zero (no iterator arguments).
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        rest: [u64; 4],
    }
    let attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: 0,
        attach_type: BPF_TRACE_ITER,
        flags: 0,
        rest: [0; 4],
    };
    bpf(
        BPF_LINK_CREATE,
        (&raw const attr).cast(),
        size_of::<LinkCreate>(),
    )
}

/// A bpf(2) command that returns a new fd.
fn bpf(cmd: libc::c_long, attr: *const libc::c_void, size: usize) -> io::Result<OwnedFd> {
    // SAFETY: `attr` points to `size` initialised bytes laid out as the command expects.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reads an iterator to its end, handing each socket to `f` as its chunk arrives: nothing is
/// collected, so a walk of any size needs only `buf` (grown to [`READ_BUFFER`]).
pub fn read(fd: OwnedFd, buf: &mut Vec<u8>, mut f: impl FnMut(&DiagSocket)) -> io::Result<()> {
    let mut file = File::from(fd);
    buf.resize(READ_BUFFER, 0);
    let mut held = 0;
    loop {
        let n = match file.read(&mut buf[held..]) {
            Ok(0) if held == 0 => return Ok(()),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "iterator ended inside a record",
                ));
            }
            Ok(n) => n,
            // EAGAIN: the kernel stopped after a million sockets without output (time-wait
            // ones, say); the walk goes on from there at the next read.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let end = held + n;
        let whole = end - end % RECORD;
        for rec in buf[..whole].chunks_exact(RECORD) {
            // SAFETY: RECORD bytes of a `#[repr(C)]` plain-old-data struct, read unaligned.
            let rec: IterSocket = unsafe { std::ptr::read_unaligned(rec.as_ptr().cast()) };
            f(&to_diag(&rec));
        }
        // The kernel hands out whole records, but a read may still end inside one.
        buf.copy_within(whole..end, 0);
        held = end - whole;
    }
}

fn to_diag(r: &IterSocket) -> DiagSocket {
    DiagSocket {
        state: r.state,
        local: ip(r.family, r.local_ip),
        local_port: r.local_port,
        remote: ip(r.family, r.remote_ip),
        remote_port: r.remote_port,
        inode: r.inode,
        cookie: r.cookie,
        counters: Some(Counters::from(&r.stats)),
    }
}

fn ip(family: u16, words: [u32; 4]) -> IpAddr {
    if i32::from(family) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut b = [0u8; 16];
        for (chunk, w) in b.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

#[cfg(test)]
#[path = "iter_tests.rs"]
mod tests;
