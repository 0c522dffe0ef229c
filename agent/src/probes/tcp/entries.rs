//! The link state's entries: one per socket (its last reading, 48 bytes) and one per link
//! (its totals, 128 bytes), and the arithmetic that moves a reading's difference into a link.

use super::{diag::Counters, key::Key, table::Keyed};

/// One socket: its last reading and its link (48 bytes).
#[derive(Debug, Clone, Copy)]
pub struct Sock {
    pub cookie: u64,
    pub rx: u64,
    pub tx: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    pub retrans: u32,
    pub srtt: u32,
    pub link: u32,
    pub lost: u16,
    /// Dump epoch (mod 256) it was last listed in.
    pub seen: u8,
    pub flags: u8,
}

/// Missing from dumps without a close event; its counters stay with its link.
pub const VANISHED: u8 = 1;
/// Left out by the filters: remembered only so that it is not looked at again.
pub const EXCLUDED: u8 = 2;

impl Keyed for Sock {
    type Key = u64;
    fn key(&self) -> u64 {
        self.cookie
    }
}

impl Sock {
    /// A socket whose counters count from `base`, not yet live on its link.
    pub fn new(cookie: u64, base: &Counters, link: u32, seen: u8) -> Self {
        Self {
            cookie,
            rx: base.bytes_received,
            tx: base.bytes_acked,
            segs_in: base.segs_in,
            segs_out: base.segs_out,
            retrans: base.total_retrans,
            srtt: 0,
            link,
            lost: 0,
            seen,
            flags: 0,
        }
    }

    pub fn same(&self, c: &Counters) -> bool {
        self.rx == c.bytes_received
            && self.tx == c.bytes_acked
            && self.segs_in == c.segs_in
            && self.segs_out == c.segs_out
            && self.retrans == c.total_retrans
            && self.srtt == c.srtt_us
            && self.lost == lost16(c.lost)
    }
}

fn lost16(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// One link's totals (128 bytes).
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub key: Key,
    pub rx: u64,
    pub tx: u64,
    pub segs_in: u64,
    pub segs_out: u64,
    pub retrans: u64,
    /// Sum of the live sockets' smoothed RTTs; with none live, the last one's to leave.
    pub srtt: u64,
    /// Connections reset by this end, and by the peer (counted at their close).
    pub send_rsts: u64,
    pub receive_rsts: u64,
    pub live: u32,
    pub lost: u32,
    /// Seconds since `Links::start` of the last change, and of creation.
    pub changed_s: u32,
    pub created_s: u32,
    pub flags: u8,
}

/// Its row changed since the last delta.
pub const DIRTY: u8 = 1;
/// A vanished socket still points here: not forgotten this round.
pub const PINNED: u8 = 2;
/// Made by the series cap (not counted against it).
pub const AGGREGATE: u8 = 4;
/// In `Links::idle`: its last socket left, so `prune` looks at it.
pub const IDLE_LISTED: u8 = 8;

impl Keyed for Link {
    type Key = Key;
    fn key(&self) -> Key {
        self.key
    }
}

impl Link {
    /// Adds what moved between the socket's last reading and `c`; returns whether anything did.
    pub fn absorb(&mut self, s: &mut Sock, c: &Counters, live: bool) -> bool {
        if s.same(c) {
            return false;
        }
        self.rx += c.bytes_received.saturating_sub(s.rx);
        self.tx += c.bytes_acked.saturating_sub(s.tx);
        // 32-bit kernel counters: the difference modulo 2^32 is what moved, across a wrap too.
        self.segs_in += u64::from(c.segs_in.wrapping_sub(s.segs_in));
        self.segs_out += u64::from(c.segs_out.wrapping_sub(s.segs_out));
        self.retrans += u64::from(c.total_retrans.wrapping_sub(s.retrans));
        if live {
            self.leave_gauges(s);
        }
        s.rx = s.rx.max(c.bytes_received);
        s.tx = s.tx.max(c.bytes_acked);
        s.segs_in = c.segs_in;
        s.segs_out = c.segs_out;
        s.retrans = c.total_retrans;
        s.srtt = c.srtt_us;
        s.lost = lost16(c.lost);
        if live {
            self.join_gauges(s);
        }
        true
    }

    fn join_gauges(&mut self, s: &Sock) {
        self.srtt += u64::from(s.srtt);
        self.lost += u32::from(s.lost);
    }

    fn leave_gauges(&mut self, s: &Sock) {
        self.srtt = self.srtt.saturating_sub(u64::from(s.srtt));
        self.lost = self.lost.saturating_sub(u32::from(s.lost));
    }

    pub fn join(&mut self, s: &Sock) {
        if self.live == 0 {
            self.srtt = 0;
            self.lost = 0;
        }
        self.live += 1;
        self.join_gauges(s);
    }

    /// A live socket left (closed, or vanished); `last_srtt` is its final RTT when known.
    pub fn leave(&mut self, s: &Sock, last_srtt: u32) {
        self.live = self.live.saturating_sub(1);
        self.leave_gauges(s);
        if self.live == 0 {
            self.lost = 0;
            self.srtt = u64::from(if last_srtt == 0 { s.srtt } else { last_srtt });
        }
    }
}

// The sizes the memory budget counts on.
const _: () = assert!(size_of::<Sock>() == 48 && size_of::<Link>() == 128);
