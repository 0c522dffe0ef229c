//! Listener events the per-interval sock_diag read cannot see, counted per listening socket:
//! connections it opened (passive opens) and the handshakes it dropped because its accept queue
//! was full when they completed (accept-queue overflows).
//!
//! Why these two hooks, without kprobes:
//! * `sock:inet_sock_set_state` (raw) fires once per state change of a TCP socket, never per
//!   packet. A passive open is the one change from LISTEN to SYN_RECV: the child socket, just
//!   cloned from its listener (`inet_csk_clone_lock`), still holds the listener's bound address,
//!   port and namespace, so the listener's key is read from the child. The kernel counts the same
//!   event in `TcpPassiveOpens`.
//! * `skb:kfree_skb` (raw) fires for every dropped packet of the host, so the program returns
//!   after one compare of the drop reason (an argument, no memory read) unless it is
//!   `TCP_LISTEN_OVERFLOW`: the reason `tcp_check_req` gives a handshake-completing ACK when no
//!   child could be made (accept queue full, in practice). The dropping socket (`rx_sk`) is the
//!   listener. The reason's number differs between kernels: the agent reads it from BTF and
//!   freezes it into [`LISTEN_OVERFLOW_REASON`].
//!
//! A SYN refused at a full queue (`tcp_conn_request`) is not an event any tracepoint sees on
//! this kernel (the SYN is consumed, not dropped with a reason): the listener's `sk_drops`, read
//! by sock_diag, counts it.
//!
//! Handshakes that never became a connection (gala-gopher's `passive_open_failed`: SYN-ACK
//! retries exhausted, a RST or ICMP error to the SYN-ACK, a final ACK never accepted): a request
//! socket's end has no tracepoint, but its start and its success do. `gopher_listen_reqs`
//! (cgroup sock_ops, `TIMEOUT_INIT`: run once for each request socket `tcp_conn_request` makes,
//! not for a SYN answered with a cookie) puts the handshake in `REQS`; the passive-open program
//! takes it out when its child is cloned, before the request socket leaves the hash. The agent
//! reads `REQS`, then the request sockets still alive (sock_diag): one in `REQS` that is gone
//! from the kernel and that the agent can still take out of `REQS` (no child took it first)
//! failed.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_SOCK_OPS_TIMEOUT_INIT,
    helpers::generated::bpf_get_netns_cookie,
    macros::{map, raw_tracepoint, sock_ops},
    maps::HashMap,
    programs::{RawTracePointContext, SockOpsContext},
};
use core::ptr::read_volatile;

use gopher_common::{ListenerKey, ReqKey, TCP_LISTEN, TCP_NEW_SYN_RECV, TCP_SYN_RECV};

use crate::health::{HEALTH_OFFSETS, count, full, listener, off, read};

const AF_INET: u32 = 2;
/// Memory as entries come (the map holds only handshakes in progress, usually few).
const BPF_F_NO_PREALLOC: u32 = 1;
/// Slot of `HEALTH_FULL` counting handshakes `REQS` had no room for.
const FULL_REQS: u32 = 2;

/// Handshakes in progress: the listener each started on. Sized by the agent (`HEALTH_REQS`).
#[map]
static REQS: HashMap<ReqKey, ListenerKey> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW` on the running kernel, set by the agent at load.
#[unsafe(no_mangle)]
static LISTEN_OVERFLOW_REASON: u32 = 0;

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn gopher_listen_passive(ctx: RawTracePointContext) -> i32 {
    // (sk, oldstate, newstate): the states are arguments, compared before any memory read.
    let (old, new): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    if old != u64::from(TCP_LISTEN) || new != u64::from(TCP_SYN_RECV) {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    if sk != 0 {
        let key = listener(sk);
        count(&key, |c| c.passive_open += 1);
        // The child holds its handshake's ports and client (`REQS`' key): it succeeded.
        let o = &raw const HEALTH_OFFSETS;
        // SAFETY: field addresses inside an immutable static.
        let (dport_at, daddr_at) = unsafe {
            (
                off(&raw const (*o).skc_dport),
                off(&raw const (*o).skc_daddr),
            )
        };
        let req = ReqKey {
            netns_cookie: key.netns_cookie,
            remote_v4: if u32::from(key.family) == AF_INET {
                read(sk, daddr_at)
            } else {
                0
            },
            local_port: key.port,
            remote_port: u16::from_be(read(sk, dport_at)),
        };
        let _ = REQS.remove(&req);
    }
    0
}

/// A request socket made (`tcp_conn_request`, before its SYN-ACK): the handshake goes in `REQS`.
/// Every other sock_ops callback of every socket returns after two compares.
#[sock_ops]
pub fn gopher_listen_reqs(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    // SAFETY: the kernel hands us a valid bpf_sock_ops; these are its stable-ABI fields, read
    // one by one at constant offsets (what the verifier accepts).
    unsafe {
        if read_volatile(&raw const (*ops).op) != BPF_SOCK_OPS_TIMEOUT_INIT
            || read_volatile(&raw const (*ops).state) != TCP_NEW_SYN_RECV
        {
            return 1;
        }
        let family = read_volatile(&raw const (*ops).family);
        let mut addr = [0u32; 4];
        let mut remote_v4 = 0;
        if family == AF_INET {
            addr[0] = read_volatile(&raw const (*ops).local_ip4);
            remote_v4 = read_volatile(&raw const (*ops).remote_ip4);
        } else {
            addr[0] = read_volatile(&raw const (*ops).local_ip6[0]);
            addr[1] = read_volatile(&raw const (*ops).local_ip6[1]);
            addr[2] = read_volatile(&raw const (*ops).local_ip6[2]);
            addr[3] = read_volatile(&raw const (*ops).local_ip6[3]);
        }
        let netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
        let port = read_volatile(&raw const (*ops).local_port) as u16;
        let req = ReqKey {
            netns_cookie,
            remote_v4,
            local_port: port,
            remote_port: u32::from_be(read_volatile(&raw const (*ops).remote_port)) as u16,
        };
        let listener = ListenerKey {
            netns_cookie,
            family: family as u16,
            port,
            _pad: 0,
            addr,
        };
        if REQS.insert(&req, &listener, 0).is_err() {
            full(FULL_REQS);
        }
    }
    1
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn gopher_listen_drop(ctx: RawTracePointContext) -> i32 {
    // (skb, location, reason, rx_sk)
    let reason: u64 = ctx.arg(2);
    // SAFETY: an immutable static; volatile keeps it a `.rodata` load.
    let want = unsafe { read_volatile(&raw const LISTEN_OVERFLOW_REASON) };
    if want == 0 || reason != u64::from(want) {
        return 0;
    }
    let sk: u64 = ctx.arg(3);
    if sk == 0 {
        return 0;
    }
    let state: u8 = read(sk, off(&raw const HEALTH_OFFSETS.skc_state));
    if u32::from(state) == TCP_LISTEN {
        count(&listener(sk), |c| c.accept_overflow += 1);
    }
    0
}
