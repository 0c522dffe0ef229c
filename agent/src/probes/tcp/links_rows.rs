//! The read side of the link state: each link's row, and what changed since the last interval
//! (a submodule of `links.rs`, whose fields it reads; kept apart so that each file does one job).

use super::{DIRTY, Delta, LinkRow, Links, live};

impl Links {
    pub(super) fn row(&self, li: u32) -> LinkRow {
        let l = self.table.get(li);
        LinkRow {
            key: l.key.link_key(),
            process_name: self
                .names
                .get(&l.key.tgid)
                .map(|(n, _)| n.to_string())
                .unwrap_or_default(),
            link_count: u64::from(l.live),
            rx_bytes: l.rx,
            tx_bytes: l.tx,
            packets_in: l.segs_in,
            packets_out: l.segs_out,
            retran_packets: l.retrans,
            lost_packets: u64::from(l.lost),
            // Mean over the live sockets, else the last one's to leave.
            rtt_us: if l.live > 0 {
                l.srtt / u64::from(l.live)
            } else {
                l.srtt
            },
            start_ms: self.start_wall_ms + u64::from(l.created_s) * 1000,
            send_rsts: l.send_rsts,
            receive_rsts: l.receive_rsts,
            srtt_hist: if self.policy.srtt_histogram.carried(l.live) {
                self.hists.get(li, live(l))
            } else {
                None
            },
            srtt_sum_us: if l.live > 0 { l.srtt } else { 0 },
        }
    }

    /// Rows changed since the last call, and links forgotten since.
    #[cfg(test)]
    pub fn take_delta(&mut self) -> Delta {
        self.take_delta_with(true)
    }

    /// [`Links::take_delta`], with the changed rows built only when `rows` (a caller that sends
    /// every row anyway needs none of them).
    pub fn take_delta_with(&mut self, rows: bool) -> Delta {
        let mut changed = Vec::with_capacity(if rows { self.dirty.len() } else { 0 });
        let dirty = std::mem::take(&mut self.dirty);
        for &li in &dirty {
            if !self.table.contains_index(li) {
                continue;
            }
            let l = self.table.get_mut(li);
            if l.flags & DIRTY == 0 {
                continue;
            }
            l.flags &= !DIRTY;
            if rows {
                changed.push(self.row(li));
            }
        }
        // Keep the list's room for the next interval, unless a burst made it large.
        let mut dirty = dirty;
        dirty.clear();
        dirty.shrink_to(4096);
        self.dirty = dirty;
        Delta {
            changed,
            removed: std::mem::take(&mut self.removed),
        }
    }

    /// Every link's row.
    #[cfg(test)]
    pub fn rows(&self) -> Vec<LinkRow> {
        self.rows_of(&self.ids())
    }

    /// Every link's index, for [`Links::rows_of`].
    pub fn ids(&self) -> Vec<u32> {
        self.table.indices().collect()
    }

    /// The rows of the links at `ids` (those still there).
    pub fn rows_of(&self, ids: &[u32]) -> Vec<LinkRow> {
        ids.iter()
            .filter(|&&li| self.table.contains_index(li))
            .map(|&li| self.row(li))
            .collect()
    }
}
