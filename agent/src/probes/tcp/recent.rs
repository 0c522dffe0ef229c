//! The closes of sockets no dump ever listed, kept for what may still name them after their
//! close event: a reset the sockops hooks report right after it (an abort moves the socket to
//! CLOSE before its RST goes out), a duplicate close, a dump racing with the close.
//!
//! Under churn nearly every close is one of these (the connection lived less than an
//! interval): tens of thousands a second. Kept with the tracked sockets' tombstones (a hash
//! map pruned at every dump), they cost about a fifth of the agent's time at 15 k
//! connections/s (perf): a lookup and an insert in a map of hundreds of thousands, its growth,
//! page faults and in-place rehashes after every prune. Here each goes into a fixed
//! direct-mapped array (slot: the cookie's low bits), overwriting one at least [`RECENT`]
//! cookies older: a close touches one cache line, nothing is pruned, and the array is 1 MiB.
//! The events that need an entry follow its close within microseconds (the same drain or the
//! next); one older than the last [`RECENT`] cookies is forgotten, as a tombstone is after a
//! few dumps. Cookies are unique per boot, so an entry never answers for another socket.

/// Entries: a power of two (the kernel hands out at least one cookie per socket it closes).
const RECENT: usize = 1 << 16;

#[derive(Clone, Copy, Default)]
struct Entry {
    /// 0: empty (the kernel's cookies start at 1).
    cookie: u64,
    link: u32,
}

/// See the module doc. Empty (no memory) until the first close.
#[derive(Default)]
pub struct Recent {
    slots: Vec<Entry>,
}

impl Recent {
    fn slot(cookie: u64) -> usize {
        // Masked below RECENT (2^16): no truncation.
        (cookie as usize) & (RECENT - 1)
    }

    /// Remembers a closed socket and the link it was counted in.
    pub fn insert(&mut self, cookie: u64, link: u32) {
        if self.slots.is_empty() {
            // Zeroed memory: the pages are only touched as closes reach them.
            self.slots = vec![Entry::default(); RECENT];
        }
        self.slots[Self::slot(cookie)] = Entry { cookie, link };
    }

    /// The link of a socket closed recently (see the module doc).
    pub fn get(&self, cookie: u64) -> Option<u32> {
        let e = self.slots.get(Self::slot(cookie))?;
        (e.cookie == cookie && cookie != 0).then_some(e.link)
    }

    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Entry>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_is_found_until_a_cookie_recent_entries_later_takes_its_slot() {
        let mut r = Recent::default();
        assert_eq!(r.get(7), None);
        assert_eq!(r.heap_bytes(), 0, "no memory before the first close");
        for c in 1..=1000 {
            r.insert(c, u32::try_from(c).unwrap() * 2);
        }
        assert_eq!(r.get(7), Some(14));
        assert_eq!(r.get(1000), Some(2000));
        assert_eq!(r.get(1001), None);
        assert_eq!(r.get(0), None, "cookie 0 is no socket");
        let later = 7 + RECENT as u64;
        r.insert(later, 1);
        assert_eq!(r.get(7), None, "overwritten");
        assert_eq!(r.get(later), Some(1));
        assert_eq!(r.get(8), Some(16), "neighbours stay");
    }
}
