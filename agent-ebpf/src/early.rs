//! Close events the destroy hooks send before the socket is destroyed (`destroy.rs`): when a
//! socket's counters are final but its destruction may be far off or would find them zeroed.
//!
//! * `tp_btf/tcp_send_reset` without a segment to answer: this end aborted the connection
//!   (`SO_LINGER` 0, `close()` with unread data, `SOCK_DESTROY`). `tcp_disconnect()` zeroes the
//!   counters right after the RST, before the destroy: the event goes now.
//! * `tp_btf/inet_sk_error_report`: `tcp_done_with_error()` moved a socket its process still
//!   holds to CLOSE (a reset received, a timeout, `SOCK_DESTROY`). It is destroyed only when
//!   the process closes it, which for an idle pooled connection may be minutes later, long
//!   after the agent stopped looking for it: counted then, it would count twice. The event
//!   goes now.
//! * `tp_btf/tcp_receive_reset`: the reset is a bit in the socket's entry, carried by its
//!   close event (the error report follows at once, or the destroy for an orphan).
//!
//! An entry (made if need be) then says the event went out (`established`), and the destroy
//! sends nothing more; without room in the map, a mark in the socket says it ([`MARK_SENT`]).
//! All three fire once per connection that ends this way, never per packet.

use aya_ebpf::{
    helpers::generated::bpf_skc_to_tcp_sock, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use core::ffi::c_void;

use gopher_common::{
    LinkClosed, LinkInfo, OWNER_NO_ENTRY, ROLE_UNKNOWN, RST_RECEIVED, RST_SENT, TCP_CLOSE,
    TCP_CLOSING, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_SYN_SENT,
};

use crate::{
    destroy::{MARK_SENT, mark, marks, role_unrecorded, send_final, socket_cookie, stream},
    emit,
    health::{off, read},
    iter::ITER_OFFSETS,
    slots::entry_or_insert,
};

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn gopher_link_rst_in_sk(ctx: BtfTracePointContext) -> i32 {
    reset(ctx.arg(0), RST_RECEIVED);
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn gopher_link_rst_out_sk(ctx: BtfTracePointContext) -> i32 {
    // An abort (no segment to answer) is a connection's; a reply to a stray segment is not.
    let skb: u64 = ctx.arg(1);
    if skb == 0 {
        reset(ctx.arg(0), RST_SENT);
    }
    0
}

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn gopher_sk_error_sk(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    // Any inet socket reports errors (UDP, ping and raw ones ICMP errors too, in CLOSE for
    // life): only a TCP socket that `tcp_done_with_error()` moved to CLOSE is final. An entry
    // made for any other would never go (no `tcp_destroy_sock` ever fires for it).
    if !sk.is_null()
        && u32::from(read::<u8>(
            sk as u64,
            off(&raw const ITER_OFFSETS.skc_state),
        )) == TCP_CLOSE
        // SAFETY: the tracepoint's socket, a BTF pointer; the helper checks it is a TCP one
        // (a full socket of protocol TCP: a raw one too, hence its type).
        && !unsafe { bpf_skc_to_tcp_sock(sk) }.is_null()
        // SAFETY: as above.
        && unsafe { stream(sk) }
    {
        // SAFETY: the tracepoint's socket, non-null.
        let cookie = unsafe { socket_cookie(sk) };
        match entry_or_insert(cookie, &unrecorded(0)) {
            // SAFETY: pointer into a map value, valid while the program runs; the socket.
            Some(info) => unsafe { send_now(sk, cookie, &mut *info) },
            // SAFETY: the tracepoint's socket.
            None => unsafe { send_marked(sk, cookie, unrecorded(0)) },
        }
    }
    0
}

/// An entry for a socket no hook recorded yet (its release fills in the owner).
fn unrecorded(rst: u8) -> LinkInfo {
    LinkInfo {
        role: ROLE_UNKNOWN,
        rst,
        ..LinkInfo::default()
    }
}

#[inline(always)]
fn reset(sk: *mut c_void, bit: u8) {
    if sk.is_null() {
        return;
    }
    let state = u32::from(read::<u8>(
        sk as u64,
        off(&raw const ITER_OFFSETS.skc_state),
    ));
    // A RST to a SYN is a refused connect, not a link's reset (there never was a link).
    if state == TCP_SYN_SENT {
        return;
    }
    // SAFETY: the tracepoint's socket, non-null.
    let cookie = unsafe { socket_cookie(sk) };
    let Some(info) = entry_or_insert(cookie, &unrecorded(0)) else {
        if bit == RST_SENT {
            // SAFETY: the tracepoint's socket.
            unsafe { send_marked(sk, cookie, unrecorded(bit)) };
        } else {
            // The map is full (counted): the agent gives the reset to the socket's link.
            emit(&LinkClosed::reset(cookie, bit), false);
        }
        return;
    };
    // SAFETY: pointer into a map value, valid while the program runs.
    let info = unsafe { &mut *info };
    info.rst |= bit;
    // An abort in `close()` moves the socket to CLOSE before its RST: no FIN then.
    if matches!(
        state,
        TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING | TCP_LAST_ACK
    ) {
        info.fin_sent = 1;
    }
    if bit == RST_SENT {
        // SAFETY: the tracepoint's socket.
        unsafe { send_now(sk, cookie, info) };
    }
}

/// Sends the close event of a socket with an entry, once.
///
/// # Safety
/// `sk` is a socket BTF pointer, non-null.
#[inline(always)]
unsafe fn send_now(sk: *mut c_void, cookie: u64, info: &mut LinkInfo) {
    if info.established != 0 {
        return;
    }
    if info.role == ROLE_UNKNOWN {
        // SAFETY: as the caller's.
        info.role = unsafe { role_unrecorded(sk, None) };
    }
    // SAFETY: as the caller's.
    if unsafe { send_final(sk, cookie, info) } {
        info.established = 1;
    }
}

/// Sends the close event of a socket the full map has no entry for, once (its mark says so).
///
/// # Safety
/// `sk` is a socket BTF pointer, non-null.
#[inline(always)]
unsafe fn send_marked(sk: *mut c_void, cookie: u64, mut info: LinkInfo) {
    // SAFETY: as the caller's.
    let m = unsafe { marks(sk) };
    if m & MARK_SENT != 0 {
        return;
    }
    info.owner = OWNER_NO_ENTRY;
    // SAFETY: as the caller's.
    info.role = unsafe { role_unrecorded(sk, Some(m)) };
    // SAFETY: as the caller's.
    if unsafe { send_final(sk, cookie, &info) } {
        // SAFETY: as the caller's.
        unsafe { mark(sk, MARK_SENT) };
    }
}
