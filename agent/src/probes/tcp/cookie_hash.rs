//! A hasher for maps keyed by socket cookie that keeps neighbouring cookies in neighbouring
//! buckets.
//!
//! The kernel hands out socket cookies from a counter (in per-CPU batches), in the order sockets
//! are first asked for one: for the TCP probe, about the order connections were established.
//! Under churn the link state records every closed cookie for a few dumps (hundreds of
//! thousands at 10 k connections/s) and looks each new close up there first: with a hash that
//! scatters keys (Fx), every close costs cache misses in a table of megabytes. Here the hash's
//! low bits are the cookie's own, so closes that follow one another touch the same few cache
//! lines, and its top 7 bits (hashbrown's tag, compared before any key) are mixed from all of
//! the cookie's bits. A std `HashMap` with it keeps its usual guarantees: keys that share low
//! bits (cookies a table's size apart) just probe further, as any colliding keys do.

use std::hash::{BuildHasher, Hasher};

/// The bits of a hash taken from the cookie as it is (cookies never reach 2^57).
const LOW: u64 = (1 << 57) - 1;
/// Fibonacci hashing's multiplier: its product's top bits depend on every bit of the cookie.
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug, Default, Clone, Copy)]
pub struct CookieHash;

impl BuildHasher for CookieHash {
    type Hasher = CookieHasher;
    fn build_hasher(&self) -> CookieHasher {
        CookieHasher(0)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CookieHasher(u64);

impl Hasher for CookieHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys use this hasher; any other write still hashes every byte.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        (self.0 & LOW) | (self.0.wrapping_mul(MIX) & !LOW)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn neighbours_stay_neighbours_and_tags_are_mixed() {
        let h = |c: u64| CookieHash.hash_one(c);
        // Low bits: the cookie's own, so consecutive cookies land in consecutive buckets.
        for c in [1_u64, 4096, 123_456_789] {
            assert_eq!(h(c + 1) & LOW, (h(c) & LOW) + 1);
        }
        // Top 7 bits (the tag): spread over most of the 128 values by a run of cookies.
        let tags: std::collections::HashSet<u64> = (0..1024).map(|c| h(c) >> 57).collect();
        assert!(tags.len() > 100, "{} tags", tags.len());
    }

    #[test]
    fn a_map_with_it_finds_every_key_among_colliding_ones() {
        let mut m: HashMap<u64, u64, CookieHash> = HashMap::default();
        // Two dense runs a power of two apart (their low bits collide in any table up to 2^20
        // buckets), and a sparse one.
        let keys: Vec<u64> = (0..50_000)
            .chain((0..50_000).map(|c| c + (1 << 20)))
            .chain((0..5_000).map(|c| c * 7919))
            .collect();
        for &k in &keys {
            m.insert(k, k * 3);
        }
        for &k in &keys {
            assert_eq!(m.get(&k), Some(&(k * 3)));
        }
        assert_eq!(m.get(&(1 << 40)), None);
        m.retain(|k, _| k % 2 == 0);
        assert!(keys.iter().all(|k| m.contains_key(k) == (k % 2 == 0)));
    }
}
