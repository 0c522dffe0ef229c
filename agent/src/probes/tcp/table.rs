//! A compact keyed table: values in fixed-size chunks addressed by a `u32` index, and a hash
//! index that stores only those `u32`s (the key lives once, inside the value).
//!
//! The TCP probe keeps one entry per live socket and one per link; on a busy node that is
//! hundreds of thousands of each, so what an entry costs beyond its own bytes matters. A
//! `HashMap<Key, Value>` stores the key twice (map and value) and doubles its bucket array at
//! once; here the index costs 5 bytes a bucket, and values grow a chunk (1024 entries) at a
//! time, so the table holds at most one partly used chunk more than it needs. Freed slots are
//! reused lowest first and trailing free chunks are released, so memory follows the work back
//! down after a peak.

use std::{cmp::Reverse, collections::BinaryHeap, hash::Hash};

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use std::hash::BuildHasher as _;

/// Entries per chunk.
const CHUNK: usize = 1024;

pub trait Keyed: Copy {
    type Key: Hash + Eq + Copy;
    fn key(&self) -> Self::Key;
}

pub struct Table<T: Keyed> {
    chunks: Vec<Vec<T>>,
    /// One bit per slot: occupied.
    used: Vec<u64>,
    free: BinaryHeap<Reverse<u32>>,
    index: HashTable<u32>,
}

impl<T: Keyed> Default for Table<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            used: Vec::new(),
            free: BinaryHeap::new(),
            index: HashTable::new(),
        }
    }
}

fn hash<K: Hash>(k: &K) -> u64 {
    FxBuildHasher.hash_one(k)
}

impl<T: Keyed> Table<T> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn slot(&self, i: u32) -> &T {
        let i = i as usize;
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    fn is_used(&self, i: u32) -> bool {
        let i = i as usize;
        self.used
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set_used(&mut self, i: u32, on: bool) {
        let i = i as usize;
        if self.used.len() <= i / 64 {
            self.used.resize(i / 64 + 1, 0);
        }
        if on {
            self.used[i / 64] |= 1 << (i % 64);
        } else {
            self.used[i / 64] &= !(1 << (i % 64));
        }
    }

    pub fn contains_index(&self, i: u32) -> bool {
        self.is_used(i)
    }

    pub fn find(&self, key: &T::Key) -> Option<u32> {
        self.index
            .find(hash(key), |&i| self.slot(i).key() == *key)
            .copied()
    }

    /// The entry at `i`. Panics on an index this table never handed out (a logic error).
    pub fn get(&self, i: u32) -> &T {
        debug_assert!(self.is_used(i));
        self.slot(i)
    }

    pub fn get_mut(&mut self, i: u32) -> &mut T {
        debug_assert!(self.is_used(i));
        let i = i as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    /// Inserts a value whose key is not in the table yet; returns its index.
    pub fn insert(&mut self, v: T) -> u32 {
        let i = if let Some(Reverse(i)) = self.free.pop() {
            let j = i as usize;
            self.chunks[j / CHUNK][j % CHUNK] = v;
            i
        } else {
            if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                self.chunks.push(Vec::with_capacity(CHUNK));
            }
            let n = self.chunks.len();
            let last = &mut self.chunks[n - 1];
            last.push(v);
            ((n - 1) * CHUNK + last.len() - 1) as u32
        };
        self.set_used(i, true);
        let chunks = &self.chunks;
        self.index.insert_unique(hash(&v.key()), i, |&j| {
            let j = j as usize;
            hash(&chunks[j / CHUNK][j % CHUNK].key())
        });
        i
    }

    /// Removes the entry at `i` and returns it.
    pub fn remove(&mut self, i: u32) -> T {
        let v = *self.get(i);
        if let Ok(e) = self.index.find_entry(hash(&v.key()), |&j| j == i) {
            e.remove();
        }
        self.set_used(i, false);
        self.free.push(Reverse(i));
        v
    }

    /// Indices of every entry (a snapshot: the caller may mutate or remove while walking it).
    pub fn indices(&self) -> impl Iterator<Item = u32> + use<T> {
        let used = self.used.clone();
        used.into_iter().enumerate().flat_map(|(w, mut bits)| {
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                Some((w * 64) as u32 + b)
            })
        })
    }

    /// Releases trailing chunks with no entry and shrinks a mostly empty index.
    pub fn compact(&mut self) {
        let mut released = false;
        while let Some(last) = self.chunks.last() {
            let start = (self.chunks.len() - 1) * CHUNK;
            if (start..start + last.len()).any(|i| self.is_used(i as u32)) {
                break;
            }
            self.chunks.pop();
            self.used.truncate(start.div_ceil(64));
            released = true;
        }
        if released {
            let end = (self.chunks.len() * CHUNK) as u32;
            self.free.retain(|Reverse(i)| *i < end);
            self.free.shrink_to_fit();
            self.used.shrink_to_fit();
        }
        if self.index.capacity() > 64 && self.index.len() * 4 < self.index.capacity() {
            let chunks = &self.chunks;
            self.index.shrink_to_fit(|&j| {
                let j = j as usize;
                hash(&chunks[j / CHUNK][j % CHUNK].key())
            });
        }
    }

    /// Heap bytes this table holds (capacities, not lengths).
    pub fn heap_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.capacity() * size_of::<T>())
            .sum::<usize>()
            + self.chunks.capacity() * size_of::<Vec<T>>()
            + self.used.capacity() * 8
            + self.free.capacity() * 4
            + self.index.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    struct E(u64, u32);
    impl Keyed for E {
        type Key = u64;
        fn key(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn insert_find_remove_and_reuse_lowest_slot() {
        let mut t = Table::<E>::default();
        let idx: Vec<u32> = (0..3000).map(|k| t.insert(E(k, 0))).collect();
        assert_eq!(t.len(), 3000);
        assert_eq!(t.find(&1234), Some(idx[1234]));
        t.get_mut(idx[5]).1 = 9;
        assert_eq!(t.get(t.find(&5).unwrap()).1, 9);
        assert_eq!(t.remove(idx[7]), E(7, 0));
        assert_eq!(t.remove(idx[3]), E(3, 0));
        assert_eq!(t.find(&7), None);
        assert_eq!(t.insert(E(99_999, 1)), idx[3], "lowest free slot first");
        assert_eq!(t.indices().count(), 2999);
    }

    #[test]
    fn memory_goes_back_down_after_a_peak() {
        let mut t = Table::<E>::default();
        let idx: Vec<u32> = (0..100_000).map(|k| t.insert(E(k, 0))).collect();
        let peak = t.heap_bytes();
        for &i in &idx[10..] {
            t.remove(i);
        }
        t.compact();
        assert_eq!(t.len(), 10);
        assert!(t.heap_bytes() < peak / 50, "{} of {peak}", t.heap_bytes());
        for k in 0..10 {
            assert_eq!(t.find(&k), Some(idx[k as usize]));
        }
        assert_eq!(t.insert(E(5_000_000, 0)), 10);
    }
}
