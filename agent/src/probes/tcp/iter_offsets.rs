//! Where the socket iterator program reads, resolved from this kernel's BTF and handed to the
//! program before it loads. Apart from `iter.rs` because the loader (`bpf.rs`) needs them and
//! `iter.rs` needs the loaded programs. The sockops programs take one offset from here too
//! (`sock.sk_flags`: whether the peer's FIN reached a socket that closed first, read once at
//! CLOSE instead of watching every segment it receives); without BTF they watch the segments.

use aya::EbpfLoader;
use gopher_common::SockOffsets;

use super::btf::{self, Btf, BtfError};

/// Where the iterator program reads, from this kernel's BTF.
pub struct Offsets {
    sock: SockOffsets,
    /// From a `struct socket` to its inode's `i_ino`: the two share a `struct socket_alloc`.
    /// The program reads the inode there (as sock_diag does) rather than through
    /// `socket->file->f_inode`, which costs two more cache misses per idle socket.
    socket_ino: u32,
    /// `sock.sk_flags` (an unsigned long), for the sockops programs.
    sk_flags: u32,
    /// `sock.sk_shutdown` (a u8), for the sockops programs: tells a server socket's abort by
    /// its own process (owner recorded then) from a received reset; 0 when unknown.
    sk_shutdown: u32,
    /// `sock.sk_err` (an int), for the destroy hook: a socket that timed out sent no FIN.
    sk_err: u32,
    /// `inet_sock.inet_sport` (a u16), for the destroy hook: the local port, which `skc_num`
    /// no longer holds once the socket released its port.
    inet_sport: u32,
    /// `sock.sk_max_ack_backlog` (a u32), for the destroy hook: an accepted socket inherits
    /// its listener's (non-zero unless `listen(fd, 0)`); a connected one never listened.
    backlog: u32,
    /// `sock.sk_type` (a u16), for the error-report hook: a raw socket of protocol TCP passes
    /// for a TCP one otherwise.
    sk_type: u32,
}

pub fn offsets() -> Result<Offsets, BtfError> {
    let btf = Btf::from_sys_fs()?;
    let socket = btf.member("socket_alloc", "socket")?.offset;
    let inode = btf.member("socket_alloc", "vfs_inode")?.offset;
    if inode < socket {
        return Err(BtfError::Malformed("socket_alloc: vfs_inode before socket"));
    }
    Ok(Offsets {
        sock: btf::sock_offsets(&btf)?,
        socket_ino: inode - socket + btf.offset("inode", "i_ino", 8)?,
        sk_flags: sk_flags(&btf),
        sk_shutdown: btf.offset("sock", "sk_shutdown", 1).unwrap_or_else(|e| {
            tracing::info!(
                "sock.sk_shutdown not found in the kernel's BTF ({e}): a server socket its \
                 process aborts takes its owner from its listener"
            );
            0
        }),
        inet_sport: btf.offset("inet_sock", "inet_sport", 2)?,
        backlog: btf
            .offset("sock", "sk_max_ack_backlog", 4)
            .unwrap_or_else(|e| {
                tracing::info!(
                    "sock.sk_max_ack_backlog not found in the kernel's BTF ({e}): the agent \
                 decides the role of an accepted socket without an owner record"
                );
                0
            }),
        sk_type: btf.offset("sock", "sk_type", 2).unwrap_or_else(|e| {
            tracing::info!(
                "sock.sk_type not found in the kernel's BTF ({e}): an error report of a raw \
                 socket of protocol TCP may be taken for a TCP socket's"
            );
            0
        }),
        sk_err: btf.offset("sock", "sk_err", 4).unwrap_or_else(|e| {
            tracing::info!(
                "sock.sk_err not found in the kernel's BTF ({e}): a link that timed out after \
                 all was acknowledged may count its FIN as a byte"
            );
            0
        }),
    })
}

/// `sock.sk_flags`: a member of `struct sock` until Linux 6.x moved it into `sock_common`
/// (`skc_flags`, which `sk_flags` now names). 0 (unknown) when neither resolves: the sockops
/// programs then watch the segments instead, and the iterator is not held back for it.
fn sk_flags(btf: &Btf) -> u32 {
    btf.offset("sock", "sk_flags", 8)
        .or_else(|_| btf.offset("sock", "__sk_common.skc_flags", 8))
        .unwrap_or_else(|e| {
            tracing::info!(
                "sock.sk_flags not found in the kernel's BTF ({e}): FINs are watched per segment"
            );
            0
        })
}

impl Offsets {
    /// Hands the offsets to the program (frozen `.rodata`) before the object is loaded.
    pub fn set<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader.override_global("ITER_OFFSETS", &self.sock, true);
        loader.override_global("ITER_SOCKET_INO", &self.socket_ino, true);
        loader.override_global("SOCKOPS_SK_FLAGS", &self.sk_flags, true);
        loader.override_global("SOCKOPS_SK_SHUTDOWN", &self.sk_shutdown, true);
        loader.override_global("DESTROY_SK_ERR", &self.sk_err, true);
        loader.override_global("DESTROY_SPORT", &self.inet_sport, true);
        loader.override_global("DESTROY_BACKLOG", &self.backlog, true);
        loader.override_global("DESTROY_SK_TYPE", &self.sk_type, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sockops programs read `SOCK_DONE` at this offset: on this kernel it must resolve
    /// (wherever the kernel keeps it) to the `unsigned long` the kernel's own headers name, and
    /// its lookup must never hold the iterator's offsets back.
    #[test]
    fn sk_flags_resolves_to_the_kernels_socket_flags() {
        let btf = match Btf::from_sys_fs() {
            Ok(btf) => btf,
            Err(e) => {
                assert!(
                    std::env::var_os("GOPHER_STRICT_TESTS").is_none(),
                    "no kernel BTF: {e}"
                );
                eprintln!("skipped: no kernel BTF ({e})");
                return;
            }
        };
        let want = btf
            .offset("sock", "sk_flags", 8)
            .or_else(|_| btf.offset("sock_common", "skc_flags", 8))
            .expect("the kernel's socket flags");
        assert_eq!(sk_flags(&btf), want);
        assert_ne!(want, 0);
        let o = offsets().expect("offsets on a kernel with BTF");
        assert_eq!(o.sk_flags, want);
        assert_eq!(
            o.sk_shutdown,
            btf.offset("sock", "sk_shutdown", 1).expect("sk_shutdown")
        );
        assert_ne!(o.sk_shutdown, 0);
    }
}
