//! A socket's entry (`LinkInfo`), written where it lives: in its slot or `LINKS` value, or
//! on the stack only when it goes to `LINKS`.
//!
//! Built on the stack and copied, an entry cost a zeroed name (a `memset` subprogram call: a
//! call and a return, each paying the return-stack mitigations), byte-wise copies (a volatile
//! read of the struct is a load per byte) and stack spills, in every connect, release and
//! destroy: here an entry is three 32-bit words and a name the helper writes in place.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, generated::bpf_get_current_comm};
use core::ptr::{read_volatile, write_volatile};

use gopher_common::{LinkInfo, OWNER_KNOWN, ROLE_CLIENT};

/// The calling process as a socket's owner. A client entry is complete from here on: a CLOSE
/// that finds it from SYN_SENT (a connect that failed) drops it without an event, any other
/// finds it established, and an active open's `bytes_acked` always counts its SYN once the
/// SYN-ACK is in.
pub(crate) fn current_owner(role: u8) -> LinkInfo {
    let mut info = link_info(role, OWNER_KNOWN, u8::from(role == ROLE_CLIENT), 0, [0; 16]);
    // SAFETY: a stack value, whole.
    unsafe { write_current_owner(&raw mut info, owner_flags(&info)) };
    info
}

/// The bytes of `LinkInfo` between `tgid` and `comm` (`role` to `fin_sent`, in field order),
/// as [`write_current_owner`] writes them.
#[inline(always)]
pub(crate) const fn owner_flags(i: &LinkInfo) -> [u8; 8] {
    [
        i.role,
        i.owner,
        i.established,
        i.syn_acked,
        i.fin_seen,
        i.rst,
        i.born,
        i.fin_sent,
    ]
}

// `write_current_owner` writes `LinkInfo` as three 32-bit words and the name.
const _: () = {
    assert!(core::mem::offset_of!(LinkInfo, role) == 4);
    assert!(core::mem::offset_of!(LinkInfo, fin_sent) == 11);
    assert!(core::mem::offset_of!(LinkInfo, comm) == 12);
    assert!(size_of::<LinkInfo>() == 28);
};

/// Writes a whole entry where it is (a map value, or the stack): the calling process, the
/// `flags` bytes ([`owner_flags`]), and the process name straight from the helper.
///
/// # Safety
/// `dst` points to a whole `LinkInfo` the program may write.
#[inline(always)]
pub(crate) unsafe fn write_current_owner(dst: *mut LinkInfo, flags: [u8; 8]) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let w = dst.cast::<u32>();
    // SAFETY: see the function's contract; LinkInfo is 4-aligned, its layout checked above.
    unsafe {
        write_volatile(w, tgid);
        write_volatile(
            w.add(1),
            u32::from_le_bytes([flags[0], flags[1], flags[2], flags[3]]),
        );
        write_volatile(
            w.add(2),
            u32::from_le_bytes([flags[4], flags[5], flags[6], flags[7]]),
        );
        // The helper fills all 16 bytes (zeroes them when it fails).
        let _ = bpf_get_current_comm(w.add(3).cast(), 16);
    }
}

/// Copies an entry word by word (a volatile read of the struct is a load per byte).
///
/// # Safety
/// Both point to whole `LinkInfo`s; `src` may be a map value other CPUs write.
#[inline(always)]
pub(crate) unsafe fn copy_info(dst: *mut LinkInfo, src: *const LinkInfo) {
    let (d, s) = (dst.cast::<u32>(), src.cast::<u32>());
    // SAFETY: see the function's contract; 7 words of a 4-aligned 28-byte struct.
    unsafe {
        write_volatile(d, read_volatile(s));
        write_volatile(d.add(1), read_volatile(s.add(1)));
        write_volatile(d.add(2), read_volatile(s.add(2)));
        write_volatile(d.add(3), read_volatile(s.add(3)));
        write_volatile(d.add(4), read_volatile(s.add(4)));
        write_volatile(d.add(5), read_volatile(s.add(5)));
        write_volatile(d.add(6), read_volatile(s.add(6)));
    }
}

pub(crate) fn link_info(role: u8, owner: u8, syn_acked: u8, tgid: u32, comm: [u8; 16]) -> LinkInfo {
    LinkInfo {
        tgid,
        role,
        owner,
        established: 1,
        syn_acked,
        fin_seen: 0,
        rst: 0,
        born: 1,
        fin_sent: 0,
        comm,
    }
}

/// Makes the calling process the owner of a socket closed in its context (a server socket's);
/// a client's owner is the process that connected, kept.
pub(crate) fn set_owner(info: &mut LinkInfo) {
    if info.owner != OWNER_KNOWN {
        info.owner = OWNER_KNOWN;
        let flags = owner_flags(info);
        // SAFETY: a whole entry, ours to write.
        unsafe { write_current_owner(info, flags) };
    }
}

/// Zeroes an entry word by word (`LinkInfo::default()` is a memset subprogram call).
///
/// # Safety
/// `dst` points to a whole `LinkInfo` the program may write.
#[inline(always)]
pub(crate) unsafe fn zero_info(dst: *mut LinkInfo) {
    let d = dst.cast::<u32>();
    // SAFETY: see the function's contract; 7 words of a 4-aligned 28-byte struct.
    unsafe {
        for i in 0..7 {
            write_volatile(d.add(i), 0);
        }
    }
}
