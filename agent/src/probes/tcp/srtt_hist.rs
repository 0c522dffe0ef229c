//! The `srtt` histogram of each link: how many of its open connections fall in each bucket of
//! [`SRTT_BOUNDS_US`], kept as sockets join, move and leave, so that building a row reads no
//! socket.
//!
//! Only links with two or more live sockets keep buckets here (52 bytes and a map slot): a
//! link with one has a histogram of one observation, its RTT sum, and one with none has none.
//! Most links of a busy node hold one connection, so the per-link state stays within its
//! budget (`links_tests::state_per_link_stays_small`).

use rustc_hash::FxHashMap as HashMap;

use super::key::SRTT_BOUNDS_US;

/// Live sockets per bucket, not cumulative; the last slot is above every bound.
pub type Buckets = [u32; SRTT_BOUNDS_US.len() + 1];

/// The bucket of a smoothed RTT: the first bound it does not exceed (`SRTT_BOUNDS_US.len()`:
/// above them all, counted only in `+Inf`).
pub fn bucket(us: u32) -> usize {
    SRTT_BOUNDS_US.partition_point(|&b| b < us)
}

fn bucket_of_sum(sum: u64) -> usize {
    bucket(u32::try_from(sum).unwrap_or(u32::MAX))
}

/// A link's live sockets and the sum of their RTTs (µs), as `entries::Link` has them.
pub type Live = (u32, u64);

#[derive(Default)]
pub struct SrttHists {
    by_link: HashMap<u32, Buckets>,
}

impl SrttHists {
    /// After link `li`'s live set changed from `before` to `after`: a socket at RTT `out` left
    /// it or moved from there, one at `inn` joined it or moved there.
    pub fn change(
        &mut self,
        li: u32,
        before: Live,
        after: Live,
        out: Option<u32>,
        inn: Option<u32>,
    ) {
        if after.0 < 2 {
            self.by_link.remove(&li);
            return;
        }
        let h = self.by_link.entry(li).or_insert_with(|| {
            let mut h = [0; SRTT_BOUNDS_US.len() + 1];
            // From one socket to two: that one's RTT was the whole sum.
            if before.0 == 1 {
                h[bucket_of_sum(before.1)] = 1;
            }
            h
        });
        if let Some(o) = out {
            let n = &mut h[bucket(o)];
            *n = n.saturating_sub(1);
        }
        if let Some(i) = inn {
            h[bucket(i)] += 1;
        }
    }

    /// The buckets of link `li` with `live` sockets whose RTTs sum to `sum`; None with none.
    pub fn get(&self, li: u32, (live, sum): Live) -> Option<Buckets> {
        match live {
            0 => None,
            1 => {
                let mut h = [0; SRTT_BOUNDS_US.len() + 1];
                h[bucket_of_sum(sum)] = 1;
                Some(h)
            }
            _ => self.by_link.get(&li).copied(),
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.by_link.capacity() * (size_of::<(u32, Buckets)>() + 1)
    }

    /// Gives the room of a burst back.
    pub fn shrink(&mut self) {
        if self.by_link.capacity() > 1024 && self.by_link.len() * 4 < self.by_link.capacity() {
            self.by_link.shrink_to_fit();
        }
    }
}
