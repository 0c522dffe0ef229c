//! The default hooks: each TCP socket is accounted once, when the kernel destroys it. No
//! sockops program is attached, so sockets pay nothing for ops nobody asked for, and nothing
//! runs per state change.
//!
//! * `cgroup/connect4|6` ([`gopher_connect4_sk`]): a client's owner, in the connecting
//!   process's context, into the socket's slot of `OWNER_SLOTS` (`slots.rs`; `LINKS` when
//!   another live socket holds the slot), as every entry below.
//! * `cgroup/sock_release` ([`gopher_sock_release_sk`]): the process doing the last `close()`
//!   of a socket that has no owner yet (not `connect()`ed: a server socket) becomes its owner;
//!   the role of such a socket is decided at its end ([`role_unrecorded`]: from a listener,
//!   a server).
//! * `tp_btf/tcp_destroy_sock` ([`gopher_tcp_destroy`]): fires exactly once per full TCP
//!   socket (`tcp_v4_destroy_sock`, IPv6 included), after its last state change. Its entry
//!   goes, and a socket that was ever established emits its final counters, read from the
//!   `tcp_sock` at the BTF offsets the agent resolved (`ITER_OFFSETS`), in a [`LinkClosed`]
//!   event whose `old_state` is the state equivalent to what it did (see [`equivalent_state`]).
//! * Resets and errors (`early.rs`): a reset is a bit in the entry, carried by the close
//!   event. This end's abort, and an error that ended a socket its process still holds (a reset
//!   received, a timeout), send the close event at once, with final counters; the entry (or,
//!   without room in the map, a mark in the socket) then says so and the destroy sends nothing
//!   more.
//!
//! A loopback connection, both ends watched, costs five runs (connect 1, sock_release 2,
//! destroy 2) and, when both sockets find their slots free, no hash operation: each entry is
//! a slot of a direct-mapped array, claimed at connect or release and compared and freed at
//! destroy (`slots.rs`); the preallocated `LINKS` hash takes the entries whose slot another
//! live socket holds, and those resets make. Socket-local storage would need no removes, but creating it
//! allocates (~2 µs a socket on this project's test VM, measured), more than the whole hash
//! path; and `max_links` keeps bounding what the probe holds in the kernel (a refused insert
//! is counted, and the socket is still accounted: its owner is then found by the agent). Only
//! a socket the map refused gets socket storage, as a mark ([`MARKS`]). Every entry goes with
//! its socket's destruction: the agent sweeps none (it does for the sockops hooks).
//!
//! Measured on the project's 2-CPU test VM (`bench/run.sh`, BENCHMARKS.md): 5 runs and ~3.6 µs
//! of BPF run time per loopback connection; with every entry in `LINKS` (eight hash
//! operations) it was ~4.8 µs, and the sockops hooks take 17 runs and ~5.3 µs. The hash
//! operations are most of it: there (retpolines, SRSO "safe RET": every call and return
//! costs) an empty program measures ~105 ns a run, a hash lookup ~250 ns, an update and a
//! delete ~700 ns together, while an array lookup is inlined by the verifier. Against the
//! sockops hooks this design also saves 12 runs and the sockops dispatch around each, which
//! the kernel's run time does not show.

use aya_ebpf::{
    EbpfContext,
    btf_maps::SkStorage,
    helpers::generated::{bpf_get_socket_cookie, bpf_sk_storage_get, bpf_skc_to_tcp_sock},
    macros::{btf_map, btf_tracepoint, cgroup_sock, cgroup_sock_addr},
    programs::{BtfTracePointContext, SockAddrContext, SockContext},
};
use core::{ffi::c_void, ptr::read_volatile};

use gopher_common::{
    EVENT_CLOSE, LinkClosed, LinkInfo, OWNER_KNOWN, OWNER_NO_ENTRY, ROLE_CLIENT, ROLE_SERVER,
    ROLE_UNKNOWN, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_LAST_ACK,
    TCP_LISTEN,
};

use crate::{
    ALLOW, IPPROTO_TCP, Inserted, SOCK_DONE, SOCK_STREAM, copy_info,
    health::off,
    iter::{ITER_OFFSETS, link_stats},
    owner_flags, reserve_close, set_owner, slots, submit_close, zero_info,
};

const AF_INET: u16 = 2;
const BPF_SK_STORAGE_GET_F_CREATE: u64 = 1;

/// Offset of `sock.sk_err` (an int), set by the agent from BTF: a socket that timed out
/// (`tcp_write_err`) ended without our FIN. 0 when unknown.
#[unsafe(no_mangle)]
static DESTROY_SK_ERR: u32 = 0;
/// Offset of `inet_sock.inet_sport` (a u16, network byte order), set by the agent from BTF:
/// the local port. `skc_num` is no use at the end: moving to CLOSE releases the port
/// (`inet_put_port` zeroes it).
#[unsafe(no_mangle)]
static DESTROY_SPORT: u32 = 0;
/// Offset of `sock.sk_max_ack_backlog` (a u32), set by the agent from BTF: a socket accepted
/// from a listener inherits the listener's (`sk_clone_lock` copies it; non-zero unless the
/// listener was given a backlog of 0), a connected one has 0. 0 when unknown.
#[unsafe(no_mangle)]
static DESTROY_BACKLOG: u32 = 0;

/// What a socket without a `LINKS` entry carries in itself, as [`MARK_CLIENT`] and
/// [`MARK_SENT`] bits. Only made when the map refused an insert: creating socket storage costs
/// ~2 µs, the whole hash path a fraction of it.
#[btf_map]
static MARKS: SkStorage<u32> = SkStorage::new();
/// A client whose connect found the map full: tells it from a server socket (which has no
/// entry until its process closes it) at release and destroy.
pub(crate) const MARK_CLIENT: u32 = 1;
/// Its close event went out already (an abort, an error), though the map had no room to say
/// so: the destroy hook sends nothing more.
pub(crate) const MARK_SENT: u32 = 2;

/// The socket's marks; 0 when it has none.
///
/// # Safety
/// `sk` is what the program type's `bpf_sk_storage_get` accepts: a `struct sock` BTF pointer
/// (tracing), the socket of a `bpf_sock_addr`, or a `cgroup/sock` context.
#[inline(always)]
pub(crate) unsafe fn marks(sk: *mut c_void) -> u32 {
    let map = core::ptr::from_ref(&MARKS).cast_mut().cast();
    // SAFETY: see the function's contract.
    let m = unsafe { bpf_sk_storage_get(map, sk, core::ptr::null_mut(), 0) }.cast::<u32>();
    if m.is_null() {
        0
    } else {
        // SAFETY: this socket's storage, valid while the program runs.
        unsafe { *m }
    }
}

/// Adds `bit` to the socket's marks (storage made if need be; nothing when it cannot be).
///
/// # Safety
/// As [`marks`].
#[inline(always)]
pub(crate) unsafe fn mark(sk: *mut c_void, bit: u32) {
    let map = core::ptr::from_ref(&MARKS).cast_mut().cast();
    // SAFETY: see the function's contract; a null value asks for a zeroed one.
    let m =
        unsafe { bpf_sk_storage_get(map, sk, core::ptr::null_mut(), BPF_SK_STORAGE_GET_F_CREATE) }
            .cast::<u32>();
    if !m.is_null() {
        // SAFETY: this socket's storage, valid while the program runs.
        unsafe { *m |= bit };
    }
}

/// A client's entry from its connect (the process aside): not `established` (in this design:
/// its close event has not gone out), born under the probe, its SYN counted in `bytes_acked`.
const CLIENT_FLAGS: [u8; 8] = owner_flags(&CLIENT_INFO);
const CLIENT_INFO: LinkInfo = LinkInfo {
    tgid: 0,
    role: ROLE_CLIENT,
    owner: OWNER_KNOWN,
    established: 0,
    syn_acked: 1,
    fin_seen: 0,
    rst: 0,
    born: 1,
    fin_sent: 0,
    comm: [0; 16],
};
/// A server socket's entry from its release: its role is decided at its end.
const RELEASE_FLAGS: [u8; 8] = owner_flags(&LinkInfo {
    role: ROLE_UNKNOWN,
    syn_acked: 0,
    born: 0,
    ..CLIENT_INFO
});

#[inline(always)]
fn connect(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the program's lifetime.
    let (ty, proto, sk) = unsafe {
        let a = &*ctx.sock_addr;
        (a.type_, a.protocol, a.__bindgen_anon_1.sk)
    };
    if ty == SOCK_STREAM && proto == IPPROTO_TCP {
        // SAFETY: ctx is a sock_addr context, for which this helper is defined.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // `established` stays 0: in this design it says the close event went out.
        if !slots::insert_client(cookie, CLIENT_FLAGS) && !sk.is_null() {
            // SAFETY: the sock_addr's socket, as the helper takes it here.
            unsafe { mark(sk.cast(), MARK_CLIENT) };
        }
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn gopher_connect4_sk(ctx: SockAddrContext) -> i32 {
    connect(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn gopher_connect6_sk(ctx: SockAddrContext) -> i32 {
    connect(&ctx)
}

/// The last `close()` of a socket, in the closing process's context: a socket without an
/// owner yet (not `connect()`ed: a server socket, or one older than the probe) gets this
/// process; its role is decided at its end ([`role_unrecorded`]). Listeners are skipped, and so
/// are sockets already in CLOSE without an entry: they are destroyed within this very
/// `close()`, and one never established leaves nothing to account.
#[cgroup_sock(sock_release)]
pub fn gopher_sock_release_sk(ctx: SockContext) -> i32 {
    // SAFETY: valid bpf_sock for the program's lifetime.
    let (proto, state) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).state) };
    if proto != IPPROTO_TCP || state == TCP_LISTEN {
        return ALLOW;
    }
    // SAFETY: sock context; helper defined for it.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let entry = match slots::get(cookie) {
        Some(info) => Some(info),
        None if state != TCP_CLOSE => {
            // A reset on another CPU may have made the entry in `LINKS` meanwhile: when the
            // slot is held, the entry gets the owner; else `slots::entry_or_insert` and the
            // destroy join the two.
            match slots::insert_owner(cookie, RELEASE_FLAGS) {
                Inserted::Present(entry) => Some(entry),
                Inserted::New | Inserted::Full => None,
            }
        }
        None => None,
    };
    if let Some(info) = entry {
        // SAFETY: pointer into a map value, valid while the program runs.
        set_owner(unsafe { &mut *info });
    }
    ALLOW
}

/// The role of a socket its connect did not record: a server if it came from a listener, a
/// client if its connect found the map full (its mark; read here when the caller has not:
/// `None`), else unknown (the agent decides).
///
/// # Safety
/// `sk` is a socket BTF pointer, non-null.
#[inline(always)]
pub(crate) unsafe fn role_unrecorded(sk: *mut c_void, marks_of_sk: Option<u32>) -> u8 {
    // SAFETY: as the caller's.
    if unsafe { accepted(sk) } {
        return ROLE_SERVER;
    }
    // SAFETY: as the caller's. (A client whose connect found its slot held and `LINKS` full
    // has only its mark to say so, even once its release claimed a slot since freed.)
    let m = marks_of_sk.unwrap_or_else(|| unsafe { marks(sk) });
    if m & MARK_CLIENT != 0 {
        ROLE_CLIENT
    } else {
        ROLE_UNKNOWN
    }
}

/// Offset of `sock.sk_type` (a u16), set by the agent from BTF; 0 when unknown.
#[unsafe(no_mangle)]
static DESTROY_SK_TYPE: u32 = 0;

/// Whether the socket is a stream socket (`bpf_skc_to_tcp_sock` takes a raw `IPPROTO_TCP`
/// socket too); true when the offset is unknown.
///
/// # Safety
/// `sk` is a socket BTF pointer, non-null.
#[inline(always)]
pub(crate) unsafe fn stream(sk: *mut c_void) -> bool {
    // SAFETY: an immutable static; volatile keeps it a `.rodata` load.
    match unsafe { read_volatile(&raw const DESTROY_SK_TYPE) } as usize {
        0 => true,
        // SAFETY: the BTF offset of `sock.sk_type` (a u16) in the socket.
        at => u32::from(unsafe { field::<u16>(sk.cast_const().cast(), at) }) == SOCK_STREAM,
    }
}

macro_rules! off {
    ($field:ident) => {
        off(&raw const ITER_OFFSETS.$field)
    };
}

/// A field of the `tcp_sock` at `tp + at` (the verifier checks it against BTF).
///
/// # Safety
/// `tp` is a `tcp_sock` BTF pointer and `at` the offset of a field of type `T` in it.
#[inline(always)]
unsafe fn field<T: Copy>(tp: *const u8, at: usize) -> T {
    // SAFETY: see the function's contract.
    unsafe { read_volatile(tp.add(at).cast::<T>()) }
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn gopher_tcp_destroy(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    if !sk.is_null() {
        // SAFETY: the tracepoint's socket, a BTF pointer.
        unsafe { destroyed(sk) };
    }
    0
}

/// What `closed_event` reads from `old_state` (which end sent a FIN), as the state a socket
/// would have left for CLOSE with the same facts: the agent keeps one rule for both hooks.
#[inline(always)]
fn equivalent_state(we_sent_fin: bool, fin_received: bool) -> u32 {
    match (we_sent_fin, fin_received) {
        (true, true) => TCP_LAST_ACK,
        (true, false) => TCP_FIN_WAIT1,
        (false, true) => TCP_CLOSE_WAIT,
        (false, false) => TCP_ESTABLISHED,
    }
}

/// The socket's cookie: read from the socket when something asked for it already (the connect
/// and release hooks did, for nearly every socket that gets here), which spares a helper call
/// (on CPUs with return-stack mitigations every call and return costs tens of ns).
///
/// # Safety
/// `sk` is a socket BTF pointer, non-null.
#[inline(always)]
pub(crate) unsafe fn socket_cookie(sk: *mut c_void) -> u64 {
    // SAFETY: `sock_common.skc_cookie` (an atomic64_t) of the socket; BTF-checked load.
    let set: u64 = unsafe { field(sk.cast_const().cast(), off!(skc_cookie)) };
    if set != 0 {
        return set;
    }
    // SAFETY: a socket BTF pointer; the helper is defined for tracing programs.
    unsafe { bpf_get_socket_cookie(sk) }
}

#[inline(always)]
unsafe fn destroyed(sk: *mut c_void) {
    // SAFETY: the tracepoint's socket.
    let cookie = unsafe { socket_cookie(sk) };
    let mut info = core::mem::MaybeUninit::<LinkInfo>::uninit();
    // SAFETY: a stack value, whole; written here, so initialised.
    let mut info = unsafe {
        zero_info(info.as_mut_ptr());
        info.assume_init()
    };
    if slots::take(cookie, &mut info) {
        if info.established != 0 {
            // Its close was sent early (see `early.rs`).
            return;
        }
        if info.role == ROLE_UNKNOWN {
            // SAFETY: the tracepoint's socket.
            info.role = unsafe { role_unrecorded(sk, None) };
        }
    } else {
        // Neither connect()ed nor released under this probe: a listener's child the process
        // never accepted, a socket older than the probe, or one whose insert found the map
        // full.
        // SAFETY: the tracepoint's socket.
        let m = unsafe { marks(sk) };
        if m & MARK_SENT != 0 {
            return;
        }
        // SAFETY: as above.
        info.role = unsafe { role_unrecorded(sk, Some(m)) };
        info.owner = OWNER_NO_ENTRY;
    }
    // SAFETY: the tracepoint's socket.
    let _ = unsafe { send_final(sk, cookie, &info) };
}

/// Whether the socket came from a listener (see [`DESTROY_BACKLOG`]); false when unknown.
///
/// # Safety
/// `sk` is a socket BTF pointer, non-null.
#[inline(always)]
unsafe fn accepted(sk: *mut c_void) -> bool {
    // SAFETY: an immutable static; volatile keeps it a `.rodata` load.
    match unsafe { read_volatile(&raw const DESTROY_BACKLOG) } as usize {
        0 => false,
        // SAFETY: the BTF offset of `sock.sk_max_ack_backlog` (a u32) in the socket.
        at => (unsafe { field::<u32>(sk.cast_const().cast(), at) }) != 0,
    }
}

/// Sends the close event of a socket that will not change any more (destroyed, or reset by
/// this end). Returns false when it never was established (nothing to send); true when the
/// event went out, or found the ring full (counted in `LOST`).
///
/// The event is written straight into its ring buffer record: built on the stack and copied by
/// `bpf_ringbuf_output`, its 144 bytes were staged through stack spills (the hook's stack is
/// near the BPF limit) and copied twice.
///
/// # Safety
/// `sk` is a socket BTF pointer, non-null.
#[inline(always)]
pub(crate) unsafe fn send_final(sk: *mut c_void, cookie: u64, info: &LinkInfo) -> bool {
    // SAFETY: sk is a socket BTF pointer; the helper checks it is a TCP one.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) }.cast::<u8>().cast_const();
    if tp.is_null() {
        return false;
    }
    // SAFETY: every offset is a field of `tcp_sock` (or of the `sock` it starts with) of the
    // type read; the verifier checks each against BTF.
    let (bytes_acked, rcv_nxt) = unsafe {
        (
            field::<u64>(tp, off!(bytes_acked)),
            field::<u32>(tp, off!(rcv_nxt)),
        )
    };
    // Never established: a listener, a socket never connected, a connect whose SYN was never
    // answered (an active open's `bytes_acked` counts its SYN once the SYN-ACK is in; a
    // child of a listener has the peer's sequence in `rcv_nxt` from its birth).
    if bytes_acked == 0 && rcv_nxt == 0 {
        return false;
    }
    if let Some(mut entry) = reserve_close() {
        // SAFETY: a whole record of the ring, ours until submitted; `tp` as above.
        unsafe { fill_final(entry.as_mut_ptr(), tp, cookie, info) };
        submit_close(entry);
    }
    true
}

/// Writes the close event of the `tcp_sock` `tp` into `e`.
///
/// # Safety
/// `e` is a whole `LinkClosed` the program may write; `tp` a `tcp_sock` BTF pointer.
#[inline(always)]
unsafe fn fill_final(e: *mut LinkClosed, tp: *const u8, cookie: u64, info: &LinkInfo) {
    let flags_at = crate::sk_flags_offset();
    // SAFETY: BTF offsets of `sock.sk_flags` (unsigned long) and `sock.sk_err` (int).
    let (flags, err) = unsafe {
        (
            if flags_at == 0 {
                0
            } else {
                field::<u64>(tp, flags_at)
            },
            match read_volatile(&raw const DESTROY_SK_ERR) as usize {
                0 => 0,
                at => field::<i32>(tp, at),
            },
        )
    };
    // `SOCK_DONE`: the peer's FIN reached this socket (and `rcv_nxt` counts it). Our FIN: a
    // socket reset knows from its state at the reset; one that timed out has `sk_err` set;
    // any other ended gracefully, which takes our FIN (FIN_WAIT or LAST_ACK on the way).
    let fin_received = flags & SOCK_DONE != 0;
    let we_sent_fin = if info.rst == 0 {
        err == 0
    } else {
        info.fin_sent != 0
    };
    // SAFETY: see the function's contract. Every offset is a field of `tcp_sock` (or of the
    // `sock` it starts with) of the type read; the verifier checks each against BTF.
    unsafe {
        let ei = &raw mut (*e).info;
        copy_info(ei, info);
        (*ei).established = 1;
        (*ei).syn_acked = u8::from(info.role == ROLE_CLIENT);
        (*ei).fin_seen = u8::from(fin_received);
        (*e).cookie = cookie;
        (*e).old_state = equivalent_state(we_sent_fin, fin_received);
        (*e).kind = EVENT_CLOSE;
        (*e).stats = link_stats(tp);
        let family: u16 = field(tp, off!(skc_family));
        (*e).family = u32::from(family);
        if family == AF_INET {
            (*e).local_ip = [field(tp, off!(skc_rcv_saddr)), 0, 0, 0];
            (*e).remote_ip = [field(tp, off!(skc_daddr)), 0, 0, 0];
        } else {
            let (la, ra) = (off!(skc_v6_rcv_saddr), off!(skc_v6_daddr));
            (*e).local_ip = [
                field(tp, la),
                field(tp, la + 4),
                field(tp, la + 8),
                field(tp, la + 12),
            ];
            (*e).remote_ip = [
                field(tp, ra),
                field(tp, ra + 4),
                field(tp, ra + 8),
                field(tp, ra + 12),
            ];
        }
        let local_port: u16 = match read_volatile(&raw const DESTROY_SPORT) as usize {
            0 => field(tp, off!(skc_num)),
            at => u16::from_be(field(tp, at)),
        };
        (*e).local_port = u32::from(local_port);
        (*e).remote_port = u32::from(u16::from_be(field(tp, off!(skc_dport))));
        (*e).all_acked =
            u32::from(field::<u32>(tp, off!(snd_una)) == field::<u32>(tp, off!(snd_nxt)));
        // `sock_common.skc_net` (a `struct net` pointer, which the verifier types from BTF)
        // and `net.net_cookie` (a u64): loads through BTF pointers, not probe-read helper
        // calls (every call and return costs here, see `socket_cookie`).
        let net: *const u8 = field(tp, off!(skc_net));
        (*e).netns_cookie = if net.is_null() {
            0
        } else {
            field::<u64>(net, off!(net_cookie))
        };
    }
}
