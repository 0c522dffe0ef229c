//! Connection resets for `tcp_link` (`send_rsts`, `receive_rsts`) with the sockops hooks: which
//! live link a RST ended. (The default destroy hooks keep the reset in the socket's storage:
//! `destroy.rs`.)
//!
//! Two raw tracepoints, each firing once per reset connection (never per packet of an
//! established one): `tcp_receive_reset` (the peer's RST ended it) and `tcp_send_reset` with no
//! segment to answer (`skb` NULL: this end aborted it — `SO_LINGER` 0, close with unread data,
//! `SOCK_DESTROY`); RSTs in reply to stray segments carry their `skb` and are not a connection's.
//! The filters are the endpoint probe's (`health.rs`), whose field readers this reuses.
//!
//! The reset is attributed through the socket's cookie. While the socket still has its `LINKS`
//! entry the reset is a bit in it, and its close event (which follows at once: a reset socket
//! goes to CLOSE) carries it: no extra event. The kernel sends an abort's RST only after the
//! move to CLOSE, whose callback already removed the entry and queued the close event; then a
//! small `EVENT_RESET` event follows it in the same ring, and the agent gives it to the link
//! the just-closed socket was counted in.
//!
//! Field offsets are the socket iterator's (`ITER_OFFSETS`, frozen by the tcp probe's loader);
//! the agent loads these programs only when they are resolved.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use gopher_common::{LinkClosed, RST_RECEIVED, RST_SENT, TCP_SYN_SENT};

use crate::{
    CLOSED, LINKS, LOST, bump,
    health::{off, read},
    iter::ITER_OFFSETS,
};

const BPF_RB_NO_WAKEUP: u64 = 1;

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn gopher_link_rst_in(ctx: RawTracePointContext) -> i32 {
    reset(ctx.arg(0), RST_RECEIVED);
    0
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn gopher_link_rst_out(ctx: RawTracePointContext) -> i32 {
    let (sk, skb): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    if skb == 0 {
        reset(sk, RST_SENT);
    }
    0
}

#[inline(always)]
fn reset(sk: u64, bit: u8) {
    if sk == 0 {
        return;
    }
    let (state_at, cookie_at) = (
        off(&raw const ITER_OFFSETS.skc_state),
        off(&raw const ITER_OFFSETS.skc_cookie),
    );
    // A RST to a SYN is a refused connect, not a link's reset (there never was a link).
    let state: u8 = read(sk, state_at);
    if u32::from(state) == TCP_SYN_SENT {
        return;
    }
    // The cookie is set once anyone asked for it: the sockops programs do for every socket
    // they see. 0: a socket this probe never saw, so no link to give the reset to.
    let cookie: u64 = read(sk, cookie_at);
    if cookie == 0 {
        return;
    }
    if let Some(info) = LINKS.get_ptr_mut(&cookie) {
        // SAFETY: a map value, valid while the program runs; a byte store.
        unsafe { (*info).rst |= bit };
        return;
    }
    let event = LinkClosed::reset(cookie, bit);
    // Rare: no wake-up of its own; the agent drains the ring on a short timer anyway.
    if CLOSED
        .output::<LinkClosed>(&event, BPF_RB_NO_WAKEUP)
        .is_err()
    {
        bump(&LOST, 0);
    }
}
