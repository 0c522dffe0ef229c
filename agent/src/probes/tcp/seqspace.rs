//! The kernel's TCP byte counters count sequence space, not data: an active open's SYN is in
//! `bytes_acked`, our acknowledged FIN too, and the peer's FIN in `bytes_received`. Users compare
//! `tx_bytes` with what their process wrote, so these take SYN and FIN out, in one place.

use gopher_common::{
    TCP_CLOSE_WAIT as CLOSE_WAIT, TCP_CLOSING as CLOSING, TCP_FIN_WAIT2 as FIN_WAIT2,
    TCP_LAST_ACK as LAST_ACK,
};

use super::diag::Counters;

/// `c` with the SYN and FIN sequence numbers it counts taken out.
pub(crate) fn data_only(
    mut c: Counters,
    syn_acked: bool,
    fin_acked: bool,
    fin_received: bool,
) -> Counters {
    c.bytes_acked = c
        .bytes_acked
        .saturating_sub(u64::from(syn_acked) + u64::from(fin_acked));
    c.bytes_received = c.bytes_received.saturating_sub(u64::from(fin_received));
    c
}

/// Takes the sequence-space FIN bytes a socket's state implies out of its counters (the SYN
/// is in the base the socket counts from).
pub(super) fn fin_adjusted(c: Counters, state: u8) -> Counters {
    let state = u32::from(state);
    data_only(
        c,
        false,
        state == FIN_WAIT2,
        matches!(state, CLOSE_WAIT | LAST_ACK | CLOSING),
    )
}

/// What a socket opened since the probe started counts from: nothing, except the SYN when it
/// is in `bytes_acked` (an active open).
pub(super) fn fresh_base(syn_acked: bool) -> Counters {
    Counters {
        bytes_acked: u64::from(syn_acked),
        ..Counters::default()
    }
}
