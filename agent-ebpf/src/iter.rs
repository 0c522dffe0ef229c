//! `iter/tcp`: the live TCP sockets of one network namespace, one fixed-size [`IterSocket`]
//! record each, for the agent's per-interval counters.
//!
//! The same facts a sock_diag dump with `tcp_info` gives, at a fraction of its kernel cost:
//! sock_diag builds a netlink message per socket and fills the whole `tcp_info` (rate samples,
//! pacing, ...) under the socket lock; here the kernel walks the same hash tables and this
//! program copies a dozen fields into a 96-byte record (the inode for listeners only). Only
//! full sockets in the states the agent uses are written (`ITER_STATES`): request and
//! time-wait sockets, and every state a link does not need, are skipped before anything is
//! read.
//!
//! Field offsets come from the running kernel's BTF, resolved by the agent and set in the
//! frozen `.rodata` global [`ITER_OFFSETS`] before load: the verifier reads frozen read-only
//! data as constants, so each `tcp_sock + offset` load is checked against BTF like a CO-RE
//! access would be. The agent loads this program only once the offsets are resolved.

use aya_ebpf::{
    bindings::seq_file,
    helpers::generated::{
        bpf_get_socket_cookie, bpf_probe_read_kernel, bpf_seq_write, bpf_skc_to_tcp_sock,
    },
};
use core::{ffi::c_void, ptr::read_volatile};

use gopher_common::{ITER_STATES, IterSocket, LinkStats, SockOffsets, TCP_LISTEN};

const AF_INET: u16 = 2;
#[allow(clippy::cast_possible_truncation, reason = "TCP states are below 16")]
const TCP_LISTEN_U8: u8 = TCP_LISTEN as u8;

/// Set by the agent at load time (`EbpfLoader::set_global`). Its own global, not shared with
/// the sockops programs': every program sees one frozen copy either way. The tcp probe's reset
/// programs (`resets.rs`) read it too: the same loader sets it for both.
#[unsafe(no_mangle)]
pub(crate) static ITER_OFFSETS: SockOffsets = SockOffsets::ZERO;

/// From a `struct socket` to its inode's `i_ino` (they share a `struct socket_alloc`): the
/// inode sock_diag reports, one cache line away instead of two more through the file.
#[unsafe(no_mangle)]
static ITER_SOCKET_INO: u32 = 0;

/// One offset: a volatile load, so that it stays a load from `.rodata` (which the verifier
/// turns into a constant) instead of the zero LLVM would fold in.
macro_rules! off {
    ($field:ident) => {
        offset(&raw const ITER_OFFSETS.$field)
    };
}

#[inline(always)]
fn offset(field: *const u32) -> usize {
    // SAFETY: `field` points into an immutable static.
    unsafe { read_volatile(field) as usize }
}

/// Reads a `T` at `base + off` (a BTF-typed kernel pointer: the verifier checks the access).
///
/// # Safety
/// `base` is a valid kernel object pointer handed out by the verifier and `off` the offset of
/// a field of type `T` in it.
#[inline(always)]
unsafe fn field<T: Copy>(base: *const u8, off: usize) -> T {
    // SAFETY: see the function's contract.
    unsafe { read_volatile(base.add(off).cast::<T>()) }
}

/// A full socket's counters (the iterator's record and the destroy hook's close event).
///
/// # Safety
/// `tp` is a `tcp_sock` BTF pointer handed out by the verifier.
#[inline(always)]
pub(crate) unsafe fn link_stats(tp: *const u8) -> LinkStats {
    // SAFETY: every offset is a field of `tcp_sock` of the type read (BTF-checked).
    unsafe {
        LinkStats {
            bytes_received: field(tp, off!(bytes_received)),
            bytes_acked: field(tp, off!(bytes_acked)),
            segs_in: field(tp, off!(segs_in)),
            segs_out: field(tp, off!(segs_out)),
            total_retrans: field(tp, off!(total_retrans)),
            lost_out: field(tp, off!(lost_out)),
            srtt_us: field::<u32>(tp, off!(srtt_us)) >> 3,
            snd_cwnd: field(tp, off!(snd_cwnd)),
        }
    }
}

/// The program. `ctx` is `struct bpf_iter__tcp`: the iterator's meta (seq_file), then the
/// socket (NULL once, at the end of the walk), then the socket's uid.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn gopher_iter_tcp(ctx: *mut c_void) -> i32 {
    // SAFETY: the kernel hands an iter program a valid `bpf_iter__tcp`.
    unsafe { write_socket(ctx.cast::<*const u8>()) };
    0
}

#[inline(always)]
unsafe fn write_socket(ctx: *const *const u8) {
    // SAFETY: ctx is `bpf_iter__tcp`; its first two members are pointers.
    let (meta, skc) = unsafe { (read_volatile(ctx), read_volatile(ctx.add(1))) };
    if skc.is_null() || meta.is_null() {
        return;
    }
    // SAFETY: skc is a `sock_common` (any TCP socket); skc_state is a byte of it.
    let state: u8 = unsafe { field(skc, off!(skc_state)) };
    if state >= 32 || ITER_STATES & (1 << state) == 0 {
        return;
    }
    // SAFETY: NULL for request and time-wait sockets, a full `tcp_sock` otherwise.
    let tp = unsafe { bpf_skc_to_tcp_sock(skc.cast_mut().cast()) }.cast::<u8>();
    if tp.is_null() {
        return;
    }
    let tp = tp.cast_const();
    // SAFETY: every offset is a field of `tcp_sock` (or of the `sock_common` it starts with)
    // of the type read; the verifier checks each against BTF.
    let mut rec = unsafe {
        IterSocket {
            // Set already for nearly every socket (the tcp hooks and the last dump asked for
            // it): a load, not a helper call per socket per dump.
            cookie: match field::<u64>(tp, off!(skc_cookie)) {
                0 => bpf_get_socket_cookie(tp.cast_mut().cast()),
                set => set,
            },
            inode: 0,
            stats: link_stats(tp),
            family: field(tp, off!(skc_family)),
            state,
            _pad: 0,
            local_port: field(tp, off!(skc_num)),
            remote_port: u16::from_be(field(tp, off!(skc_dport))),
            local_ip: [0; 4],
            remote_ip: [0; 4],
        }
    };
    // SAFETY: as above.
    unsafe {
        if rec.family == AF_INET {
            rec.local_ip[0] = field(tp, off!(skc_rcv_saddr));
            rec.remote_ip[0] = field(tp, off!(skc_daddr));
        } else {
            let (l, r) = (off!(skc_v6_rcv_saddr), off!(skc_v6_daddr));
            rec.local_ip[0] = field(tp, l);
            rec.local_ip[1] = field(tp, l + 4);
            rec.local_ip[2] = field(tp, l + 8);
            rec.local_ip[3] = field(tp, l + 12);
            rec.remote_ip[0] = field(tp, r);
            rec.remote_ip[1] = field(tp, r + 4);
            rec.remote_ip[2] = field(tp, r + 8);
            rec.remote_ip[3] = field(tp, r + 12);
        }
        // sock_diag's inode (SOCK_INODE(sk->sk_socket)->i_ino), 0 for an orphan: listeners
        // only. The inode lies outside `struct socket`, so it is a probe read (two cold cache
        // lines and a fault-safe copy: a fifth of the walk's kernel time per socket); the
        // agent needs it only to find the owner of a socket new to it, and asks sock_diag
        // for those few (`diag::inode_of`).
        let sock: *const u8 = if state == TCP_LISTEN_U8 {
            field(tp, off!(sk_socket))
        } else {
            core::ptr::null()
        };
        if !sock.is_null() {
            let mut ino: u64 = 0;
            if bpf_probe_read_kernel(
                (&raw mut ino).cast(),
                8,
                sock.add(offset(&raw const ITER_SOCKET_INO)).cast(),
            ) == 0
            {
                rec.inode = ino;
            }
        }
        // SAFETY: meta is `bpf_iter_meta`, whose first member is the seq_file.
        let seq: *mut seq_file = read_volatile(meta.cast::<*mut seq_file>());
        let _ = bpf_seq_write(seq, (&raw const rec).cast(), size_of::<IterSocket>() as u32);
    }
}
