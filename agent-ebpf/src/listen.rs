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

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use core::ptr::read_volatile;

use gopher_common::{TCP_LISTEN, TCP_SYN_RECV};

use crate::health::{HEALTH_OFFSETS, count, listener, off, read};

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
        count(&listener(sk), |c| c.passive_open += 1);
    }
    0
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
