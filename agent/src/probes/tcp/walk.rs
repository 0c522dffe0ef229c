//! The order the last dump listed the tracked sockets in, so that the next dump finds each of
//! them without a hash lookup.
//!
//! Why: a dump lists every live socket each interval, and the kernel lists them in the same
//! order every time (hash bucket by bucket; a bucket's chain only grows at its head). Looking
//! each one up in the cookie index was a cache miss per socket: 12 % of the idle agent's CPU at
//! 100 k links (perf). Following the last dump's order, the next socket is almost always the
//! one after the last match; a socket that closed since is skipped by looking a few ahead, and
//! anything else falls back to the index.

/// How far past the last match a socket is looked for (sockets that closed since the last dump).
const LOOKAHEAD: usize = 4;

#[derive(Default)]
pub struct WalkOrder {
    /// Slots of the last dump's sockets, in its order.
    prev: Vec<u32>,
    /// This dump's, so far.
    next: Vec<u32>,
    cursor: usize,
}

impl WalkOrder {
    /// A new dump starts: the one that just ended is the one to follow.
    pub fn begin(&mut self) {
        std::mem::swap(&mut self.prev, &mut self.next);
        self.next.clear();
        self.cursor = 0;
    }

    /// The slots the next listed socket most likely has, nearest first, with their positions.
    pub fn guesses(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        let end = (self.cursor + LOOKAHEAD).min(self.prev.len());
        (self.cursor..end).map(|i| (i, self.prev[i]))
    }

    /// The guess at `pos` was right: the next socket is most likely the one after it.
    pub fn matched(&mut self, pos: usize) {
        self.cursor = pos + 1;
    }

    /// A tracked socket was listed now, in slot `slot`.
    pub fn listed(&mut self, slot: u32) {
        self.next.push(slot);
    }

    pub fn heap_bytes(&self) -> usize {
        (self.prev.capacity() + self.next.capacity()) * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_order_is_followed_past_sockets_that_left() {
        let mut w = WalkOrder::default();
        for s in [7, 3, 9, 4, 1] {
            w.listed(s);
        }
        w.begin();
        assert_eq!(w.guesses().next(), Some((0, 7)));
        w.matched(0);
        // 3 and 9 closed: 4 is still within reach.
        assert!(w.guesses().any(|g| g == (3, 4)));
        w.matched(3);
        assert_eq!(w.guesses().collect::<Vec<_>>(), vec![(4, 1)]);
        w.matched(4);
        assert_eq!(w.guesses().next(), None);
        w.listed(8);
        w.begin();
        assert_eq!(w.guesses().collect::<Vec<_>>(), vec![(0, 8)]);
    }
}
