//! `iter/tcp`: the live TCP sockets of one network namespace, one fixed-size [`IterSocket`]
//! record each, for the agent's per-interval counters.
//!
//! The same facts a sock_diag dump with `tcp_info` gives, at a fraction of its kernel cost:
//! sock_diag builds a netlink message per socket and fills the whole `tcp_info` (rate samples,
//! pacing, ...) under the socket lock; here the kernel walks the same hash tables and this
//! program copies a dozen fields into a 96-byte record (the inode for listeners only), and for
//! a socket whose counters did not move since its last record, only its cookie. Only
//! full sockets in the states the agent uses are written (`ITER_STATES`): request and
//! time-wait sockets, and every state a link does not need, are skipped before anything is
//! read.
//!
//! Work follows what changed: the program remembers, in socket-local storage (`ITER_SEEN`),
//! the counters and state of the last record it wrote for each socket. A socket still at those
//! values gets a 16-byte [`IterHead`] alone (`ITER_SAME`: "still here, unchanged"), any other
//! its head and full record (`ITER_FULL`). The agent keeps the socket-gone logic as it was
//! (absent from a complete walk: gone) and only marks unchanged sockets present. What is
//! remembered is written only once the record is in the reader's buffer, so a record that did
//! not fit (and is shown again) is never taken as delivered. Everything that could leave the
//! agent without a socket's last full record (a new program instance comes with a new, empty
//! map; a walk the agent could not read to the end; a socket it does not know reported as
//! unchanged) is answered by a new generation (`ITER_GEN`): every socket in full once more.
//! Listeners are always written in full.
//!
//! Field offsets come from the running kernel's BTF, resolved by the agent and set in the
//! frozen `.rodata` global [`ITER_OFFSETS`] before load: the verifier reads frozen read-only
//! data as constants, so each `tcp_sock + offset` load is checked against BTF like a CO-RE
//! access would be. The agent loads this program only once the offsets are resolved.

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, seq_file},
    btf_maps::SkStorage,
    helpers::generated::{
        bpf_get_socket_cookie, bpf_probe_read_kernel, bpf_seq_write, bpf_sk_storage_get,
        bpf_skc_to_tcp_sock,
    },
    macros::{btf_map, map},
    maps::Array,
};
use core::{
    ffi::c_void,
    ptr::{self, read_volatile},
};

use gopher_common::{
    ITER_FULL, ITER_SAME, ITER_STATES, IterHead, IterSeen, IterSocket, LinkStats, SockOffsets,
    TCP_LISTEN,
};

const AF_INET: u16 = 2;
#[allow(clippy::cast_possible_truncation, reason = "TCP states are below 16")]
const TCP_LISTEN_U8: u8 = TCP_LISTEN as u8;

/// Set by the agent at load time (`EbpfLoader::set_global`). Its own global, not shared with
/// the sockops programs': every program sees one frozen copy either way. The tcp probe's reset
/// programs (`resets.rs`) read it too: the same loader sets it for both.
#[unsafe(no_mangle)]
pub(crate) static ITER_OFFSETS: SockOffsets = SockOffsets::ZERO;

/// Per socket, what the last record written for it said (see [`unchanged`]). A new program
/// instance (agent start, probe rebuild) comes with a new, empty map: its first walk writes
/// every socket in full.
#[btf_map]
static ITER_SEEN: SkStorage<IterSeen> = SkStorage::new();

/// The agent's generation: a socket whose remembered record is of another generation is
/// written in full. The agent moves it on when it must see every socket again (a walk it could
/// not read to the end, a socket it does not know reported as unchanged).
#[map]
static ITER_GEN: Array<u32> = Array::with_max_entries(1, 0);

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
    let (cookie, stats) = unsafe {
        (
            bpf_get_socket_cookie(tp.cast_mut().cast()),
            LinkStats {
                bytes_received: field(tp, off!(bytes_received)),
                bytes_acked: field(tp, off!(bytes_acked)),
                segs_in: field(tp, off!(segs_in)),
                segs_out: field(tp, off!(segs_out)),
                total_retrans: field(tp, off!(total_retrans)),
                lost_out: field(tp, off!(lost_out)),
                srtt_us: field::<u32>(tp, off!(srtt_us)) >> 3,
                snd_cwnd: field(tp, off!(snd_cwnd)),
            },
        )
    };
    // SAFETY: meta is `bpf_iter_meta`, whose first member is the seq_file.
    let seq: *mut seq_file = unsafe { read_volatile(meta.cast::<*mut seq_file>()) };
    // Listeners always in full: the agent relearns them every walk, and they are few.
    let seen = if state == TCP_LISTEN_U8 {
        ptr::null_mut()
    } else {
        // SAFETY: tp is a BTF `tcp_sock`, which begins with the `sock_common` the helper takes.
        unsafe { remembered(tp) }
    };
    let generation = ITER_GEN.get(0).copied().unwrap_or(0);
    // SAFETY: `seen`, when not NULL, is this socket's storage, valid for this run.
    if !seen.is_null() && unsafe { unchanged(&*seen, &stats, state, generation) } {
        let head = IterHead {
            kind: ITER_SAME,
            len: 0,
            cookie,
        };
        // SAFETY: a plain-old-data head on the stack.
        let _ =
            unsafe { bpf_seq_write(seq, (&raw const head).cast(), size_of::<IterHead>() as u32) };
        return;
    }
    let mut full = Full {
        head: IterHead {
            kind: ITER_FULL,
            len: size_of::<IterSocket>() as u32,
            cookie,
        },
        rec: IterSocket {
            cookie,
            inode: 0,
            stats,
            // SAFETY: as above.
            family: unsafe { field(tp, off!(skc_family)) },
            state,
            _pad: 0,
            // SAFETY: as above.
            local_port: unsafe { field(tp, off!(skc_num)) },
            // SAFETY: as above.
            remote_port: u16::from_be(unsafe { field(tp, off!(skc_dport)) }),
            local_ip: [0; 4],
            remote_ip: [0; 4],
        },
    };
    let rec = &mut full.rec;
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
        let written = bpf_seq_write(seq, (&raw const full).cast(), size_of::<Full>() as u32);
        // Remembered only once it is in the reader's buffer: a record that did not fit is
        // dropped whole and the socket shown again at the next read, which must then write
        // it in full again.
        if written == 0 && !seen.is_null() {
            *seen = IterSeen {
                stats,
                generation,
                state,
                _pad: [0; 3],
            };
        }
    }
}

/// A full record as written: its head, then the socket.
#[repr(C)]
struct Full {
    head: IterHead,
    rec: IterSocket,
}

/// This socket's storage in [`ITER_SEEN`], made on first sight (zero: never written). NULL
/// when the kernel cannot make it (memory): the socket is then written in full.
///
/// # Safety
/// `tp` is a BTF `tcp_sock` pointer handed out by the verifier.
#[inline(always)]
unsafe fn remembered(tp: *const u8) -> *mut IterSeen {
    // SAFETY: the map is a socket storage map of `IterSeen`; tp is a full socket.
    unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&ITER_SEEN).cast_mut().cast(),
            tp.cast_mut().cast(),
            ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<IterSeen>()
}

/// Whether the last record written for this socket, in this generation, had these very
/// counters and this state: everything of a record that can change while a socket lives (its
/// addresses and ports are fixed once it is in a state the walk reports).
#[inline(always)]
fn unchanged(seen: &IterSeen, stats: &LinkStats, state: u8, generation: u32) -> bool {
    let s = &seen.stats;
    seen.generation == generation
        && generation != 0
        && seen.state == state
        && s.bytes_received == stats.bytes_received
        && s.bytes_acked == stats.bytes_acked
        && s.segs_in == stats.segs_in
        && s.segs_out == stats.segs_out
        && s.total_retrans == stats.total_retrans
        && s.lost_out == stats.lost_out
        && s.srtt_us == stats.srtt_us
        && s.snd_cwnd == stats.snd_cwnd
}
