//! Where the socket iterator program reads, resolved from this kernel's BTF and handed to the
//! program before it loads. Apart from `iter.rs` because the loader (`bpf.rs`) needs them and
//! `iter.rs` needs the loaded programs.

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
    })
}

impl Offsets {
    /// Hands the offsets to the program (frozen `.rodata`) before the object is loaded.
    pub fn set<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader.override_global("ITER_OFFSETS", &self.sock, true);
        loader.override_global("ITER_SOCKET_INO", &self.socket_ino, true);
    }
}
