//! gala-gopher's `listendrop` and `syn_overflow` per listener, derived: this kernel has no hook
//! that sees them (kprobes are compiled out; a SYN refused at a full queue in
//! `tcp_conn_request` is consumed, not dropped with a reason, and no tracepoint fires there).
//!
//! What the kernel does count per listener is `sk_drops` (sock_diag). Every `tcp_listendrop()`
//! adds one to it (and to the namespace's `TcpExtListenDrops`): a SYN refused at a full SYN
//! queue (without SYN cookies) or a full accept queue, or without memory or a route; and a
//! handshake-completing ACK for which no child could be made (`tcp_v4_syn_recv_sock`: a full
//! accept queue in practice). Such an ACK is then discarded by `tcp_v4_rcv` as well, which adds
//! one more to `sk_drops`: the probe counts those ACKs exactly (`accept_overflow`, drop reason
//! `TCP_LISTEN_OVERFLOW`). So, per listener:
//!
//! * `listendrop` = `sk_drops` − `accept_overflow`: the listener's `tcp_listendrop()` count;
//! * `syn_overflow` = `listendrop` − `accept_overflow`: the SYNs it refused.
//!
//! Exact while the listener discards no other segment. `sk_drops` also counts, and both then
//! include: a retransmitted SYN of a handshake still in progress (its SYN-ACK was lost), a RST or
//! flagless segment sent to the listener, and segments refused by a socket filter, `IP_MINTTL`,
//! XFRM policy or TCP-MD5/AO; and, for a listener older than the agent, the second drop of each
//! accept overflow that happened before the agent counted them.
//!
//! The socket read and the eBPF map read are not one snapshot: the socket is read first, so an
//! overflow between the two reads shows its `accept_overflow` without its two drops and the
//! difference dips for one interval. A counter must not go back, so each row's values only rise
//! ([`Ratchet`]) until its `sk_drops` does fall (a socket of the row closed: a restart).

use std::collections::HashMap;

/// The derived counters of one row.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Derived {
    pub listendrop: u64,
    pub syn_overflow: u64,
}

/// `listendrop` and `syn_overflow` from a row's `sk_drops` and `accept_overflow`.
pub fn derive(sk_drops: u64, accept_overflow: u64) -> Derived {
    let listendrop = sk_drops.saturating_sub(accept_overflow);
    Derived {
        listendrop,
        syn_overflow: listendrop.saturating_sub(accept_overflow),
    }
}

/// The last values of each row, so that they never go back between two reads.
pub struct Ratchet<K>(HashMap<K, (u64, Derived)>);

impl<K> Default for Ratchet<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: std::hash::Hash + Eq> Ratchet<K> {
    /// The row's values now: what `derive` says, but never below the last ones unless
    /// `sk_drops` itself fell (the row's sockets changed).
    pub fn apply(&mut self, key: K, sk_drops: u64, accept_overflow: u64) -> Derived {
        let mut now = derive(sk_drops, accept_overflow);
        if let Some((drops, last)) = self.0.get(&key)
            && sk_drops >= *drops
        {
            now.listendrop = now.listendrop.max(last.listendrop);
            now.syn_overflow = now.syn_overflow.max(last.syn_overflow);
        }
        self.0.insert(key, (sk_drops, now));
        now
    }

    /// Forgets the rows `live` says are gone.
    pub fn retain(&mut self, mut live: impl FnMut(&K) -> bool) {
        self.0.retain(|k, _| live(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_overflowed_ack_counts_twice_in_sk_drops_and_once_in_listendrop() {
        // Three SYNs refused, two ACKs overflowed: sk_drops 3 + 2 x 2.
        assert_eq!(
            derive(7, 2),
            Derived {
                listendrop: 5,
                syn_overflow: 3
            }
        );
        assert_eq!(derive(0, 0), Derived::default());
        // Overflows counted, their drops not read yet: nothing below zero.
        assert_eq!(derive(1, 2), Derived::default());
    }

    #[test]
    fn a_dip_between_the_two_reads_does_not_show_but_a_restart_does() {
        let mut r = Ratchet::default();
        assert_eq!(r.apply(1, 7, 2).listendrop, 5);
        // An overflow between the socket read and the map read: its drops come next time.
        assert_eq!(r.apply(1, 7, 3), derive(7, 2));
        assert_eq!(r.apply(1, 9, 3), derive(9, 3));
        // A socket of the row closed: its drops left the sum, the counter restarts.
        assert_eq!(r.apply(1, 4, 3), derive(4, 3));
        r.retain(|k| *k != 1);
        assert_eq!(r.apply(1, 0, 0), Derived::default());
    }
}
