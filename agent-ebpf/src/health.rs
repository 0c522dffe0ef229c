//! TCP health events the per-interval socket reads cannot see: SYN-ACK retransmissions per
//! listening socket, and per client (process and destination) the handshakes started, refused,
//! timed out or failed otherwise, and the established connections reset by either side.
//!
//! Only per-connection and rare events are hooked, never a packet of an established connection:
//! `cgroup/connect4|6` (once per `connect()` of a TCP socket, in the caller's context: the owner
//! and the destination), and raw tracepoints (no tracefs needed) on `tcp_retransmit_synack`,
//! `inet_sk_error_report` (a socket's error: how a handshake failed), `tcp_receive_reset` and
//! `tcp_send_reset` (one per connection reset). A raw tracepoint's arguments are plain kernel
//! pointers: socket fields are read at offsets from the kernel's BTF, resolved by the agent and
//! frozen into [`HEALTH_OFFSETS`] / [`HEALTH_SK_ERR`] at load.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::{cgroup_sock_addr, map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, SockAddrContext},
};
use core::ptr::read_volatile;

use gopher_common::{
    ConnectCounts, ConnectKey, ListenerCounts, ListenerKey, SockOffsets, TCP_SYN_SENT,
};

const AF_INET: u16 = 2;
const BPF_NOEXIST: u64 = 1;
/// Hash maps of per-CPU values take memory as entries come (a preallocated one would hold
/// entries x CPUs values from the start: tens of MB on a many-core node).
const BPF_F_NO_PREALLOC: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const SOCK_STREAM: u32 = 1;
const ECONNREFUSED: i32 = 111;
const ETIMEDOUT: i32 = 110;
const ECONNRESET: i32 = 104;
const EPIPE: i32 = 32;
/// Allow the operation (cgroup programs must say so explicitly).
const ALLOW: i32 = 1;

// The maps are declared with one entry: the object is also loaded by the tcp probe, which
// does not use them; the endpoint probe sizes them at load (`HEALTH_LISTENERS`,
// `HEALTH_CONNECTS`, `HEALTH_SOCKETS`).

/// Set by the agent at load time (its own global: each program sees one frozen copy).
#[unsafe(no_mangle)]
pub(crate) static HEALTH_OFFSETS: SockOffsets = SockOffsets::ZERO;

/// Offset of `sock.sk_err` (an int), set by the agent at load time.
#[unsafe(no_mangle)]
static HEALTH_SK_ERR: u32 = 0;

/// Listener events (SYN-ACKs retransmitted, passive opens, accept-queue overflows), per
/// listener; per CPU, so that an event costs no atomic operation (the agent sums the CPUs).
#[map]
static LISTENERS: PerCpuHashMap<ListenerKey, ListenerCounts> =
    PerCpuHashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Client events per process and destination; per CPU like `LISTENERS`.
#[map]
static CONNECTS: PerCpuHashMap<ConnectKey, ConnectCounts> =
    PerCpuHashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// The counters' key of each client socket, by socket cookie, from its `connect()`: the later
/// events run in softirq context, where the current task is not the owner.
#[map]
static SOCKETS: LruHashMap<u64, ConnectKey> = LruHashMap::with_max_entries(1, 0);

/// Events not counted because a map was full: slot 0 `LISTENERS`, slot 1 `CONNECTS`, slot 2
/// `REQS` (`listen.rs`).
#[map]
static HEALTH_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

#[inline(always)]
pub(crate) fn off(field: *const u32) -> usize {
    // SAFETY: `field` points into an immutable static; volatile keeps it a `.rodata` load.
    unsafe { read_volatile(field) as usize }
}

/// A kernel field at `base + at`; zero when it cannot be read.
#[inline(always)]
pub(crate) fn read<T: Copy + Default>(base: u64, at: usize) -> T {
    // SAFETY: a probe read: a bad address yields an error, never a fault.
    unsafe { bpf_probe_read_kernel((base as usize + at) as *const T) }.unwrap_or_default()
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn gopher_synack_retrans(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    if sk != 0 {
        count(&listener(sk), |c| c.retran_synacks += 1);
    }
    0
}

#[inline(always)]
pub(crate) fn listener(sk: u64) -> ListenerKey {
    let o = &raw const HEALTH_OFFSETS;
    // SAFETY: field addresses inside an immutable static.
    let (family_at, port_at, v4_at, v6_at, net_at, cookie_at) = unsafe {
        (
            off(&raw const (*o).skc_family),
            off(&raw const (*o).skc_num),
            off(&raw const (*o).skc_rcv_saddr),
            off(&raw const (*o).skc_v6_rcv_saddr),
            off(&raw const (*o).skc_net),
            off(&raw const (*o).net_cookie),
        )
    };
    let family: u16 = read(sk, family_at);
    let mut addr = [0u32; 4];
    if family == AF_INET {
        addr[0] = read(sk, v4_at);
    } else {
        addr = read(sk, v6_at);
    }
    let net: u64 = read(sk, net_at);
    ListenerKey {
        netns_cookie: if net == 0 { 0 } else { read(net, cookie_at) },
        family,
        port: read(sk, port_at),
        _pad: 0,
        addr,
    }
}

/// This CPU's counters of `key` in `map`, made if new; `None` (counted in `HEALTH_FULL[full]`)
/// when the map is full. Another CPU may insert the key between the lookup and the insert: then
/// the insert fails and the second lookup finds this CPU's slot.
#[inline(always)]
fn slot<K, V: Default>(map: &PerCpuHashMap<K, V>, key: &K, full: u32) -> Option<*mut V> {
    let found = map.get_ptr_mut(key).or_else(|| {
        let _ = map.insert(key, &V::default(), BPF_NOEXIST);
        map.get_ptr_mut(key)
    });
    if found.is_none() {
        self::full(full);
    }
    found
}

/// Counts an event lost to a full map in `HEALTH_FULL[slot]`.
#[inline(always)]
pub(crate) fn full(slot: u32) {
    if let Some(n) = HEALTH_FULL.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *n += 1 };
    }
}

/// Counts an event of the listener `key` in this CPU's slot.
#[inline(always)]
pub(crate) fn count(key: &ListenerKey, f: impl FnOnce(&mut ListenerCounts)) {
    if let Some(n) = slot(&LISTENERS, key, 0) {
        // SAFETY: this CPU's value slot, no concurrent writer.
        f(unsafe { &mut *n });
    }
}

#[inline(always)]
/// `V6`: the `connect6` program (a `connect4` program may not read `user_ip6`, nor the reverse).
fn connect<const V6: bool>(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the program's lifetime.
    let (ty, proto) = unsafe { ((*sa).type_, (*sa).protocol) };
    if ty != SOCK_STREAM || proto != IPPROTO_TCP {
        return ALLOW;
    }
    // SAFETY: sock_addr context, for which these helpers are defined; its fields are the
    // destination the caller asked for (network byte order).
    let key = unsafe {
        let family = read_volatile(&raw const (*sa).user_family) as u16;
        let mut addr = [0u32; 4];
        if !V6 {
            addr[0] = read_volatile(&raw const (*sa).user_ip4);
        } else {
            addr[0] = read_volatile(&raw const (*sa).user_ip6[0]);
            addr[1] = read_volatile(&raw const (*sa).user_ip6[1]);
            addr[2] = read_volatile(&raw const (*sa).user_ip6[2]);
            addr[3] = read_volatile(&raw const (*sa).user_ip6[3]);
        }
        ConnectKey {
            netns_cookie: bpf_get_netns_cookie(ctx.as_ptr()),
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            family,
            port: u16::from_be(read_volatile(&raw const (*sa).user_port) as u16),
            addr,
        }
    };
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // A socket's later connect() calls (a non-blocking caller polling with connect) start
    // nothing: only its first counts.
    if SOCKETS.insert(&cookie, &key, BPF_NOEXIST).is_ok()
        && let Some(c) = slot(&CONNECTS, &key, 1)
    {
        // SAFETY: this CPU's value slot, no concurrent writer.
        unsafe { (*c).active_open += 1 };
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn gopher_health_connect4(ctx: SockAddrContext) -> i32 {
    connect::<false>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn gopher_health_connect6(ctx: SockAddrContext) -> i32 {
    connect::<true>(&ctx)
}

/// The counters of the client socket `sk`, if its connect() was seen.
#[inline(always)]
fn client(sk: u64) -> Option<(u64, *mut ConnectCounts)> {
    let cookie: u64 = read(sk, off(&raw const HEALTH_OFFSETS.skc_cookie));
    // SAFETY: a map value, copied out at once.
    let key = unsafe { *SOCKETS.get(&cookie)? };
    Some((cookie, slot(&CONNECTS, &key, 1)?))
}

/// A socket's error, reported once: for a client that never got a SYN-ACK (nothing acked, not
/// even the SYN) the reason its handshake failed.
#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn gopher_health_error(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let acked_at = off(&raw const HEALTH_OFFSETS.bytes_acked);
    if sk == 0 || read::<u64>(sk, acked_at) != 0 {
        return 0;
    }
    let err: i32 = read(sk, off(&raw const HEALTH_SK_ERR));
    // A reset never ends a handshake (a RST to a SYN is ECONNREFUSED); an abort of a
    // connection by its own process (SO_LINGER 0, connect(AF_UNSPEC)) reports ECONNRESET after
    // zeroing bytes_acked.
    if matches!(err, 0 | ECONNRESET | EPIPE) {
        return 0;
    }
    let Some((cookie, c)) = client(sk) else {
        return 0;
    };
    // SAFETY: this CPU's value slot, no concurrent writer.
    unsafe {
        match err {
            ECONNREFUSED => (*c).refused += 1,
            ETIMEDOUT => (*c).timed_out += 1,
            _ => (*c).failed_other += 1,
        }
    }
    // The handshake is over: nothing more comes from this socket.
    let _ = SOCKETS.remove(&cookie);
    0
}

/// A RST arrived for a socket (once per connection: the socket is closed at once). In SYN_SENT
/// it is a refusal, which the error report counts.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn gopher_health_rst_in(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let state: u8 = read(sk, off(&raw const HEALTH_OFFSETS.skc_state));
    if sk == 0 || u32::from(state) == TCP_SYN_SENT {
        return 0;
    }
    if let Some((_, c)) = client(sk) {
        // SAFETY: this CPU's value slot, no concurrent writer.
        unsafe { (*c).receive_rsts += 1 };
    }
    0
}

/// A RST sent. Only a socket's own abort (no segment it answers: `skb` NULL) is counted, once
/// per connection; RSTs in reply to stray segments are per packet and not a connection's.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn gopher_health_rst_out(ctx: RawTracePointContext) -> i32 {
    let (sk, skb): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    if sk == 0 || skb != 0 {
        return 0;
    }
    if let Some((_, c)) = client(sk) {
        // SAFETY: this CPU's value slot, no concurrent writer.
        unsafe { (*c).send_rsts += 1 };
    }
    0
}
