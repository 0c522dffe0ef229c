//! Which link a new socket goes to (a submodule of `links.rs`, whose fields it reads; kept
//! apart so that each file does one job): the filters, the client prefix of server links, the
//! series cap and its aggregate rows, and the memo of each role's last link that spares a
//! churn of one client pool the lookups.

use std::time::Instant;

use super::{AGGREGATE, Key, Link, Links, ROLE_SERVER, octets};

/// A socket's key as given (`raw`), the key of the individual link it went to, and that link.
#[derive(Clone, Copy)]
pub(super) struct LastLink {
    pub(super) raw: Key,
    pub(super) key: Key,
    pub(super) li: u32,
}

impl Links {
    /// The link a new socket's key leads to (filters, client aggregation, the cap), or None
    /// when the filters leave it out.
    pub(super) fn link_for(&mut self, raw: Key, comm: &str, now: Instant) -> Option<u32> {
        // Closes come in runs of the same link (a client pool hammering one service): a key
        // equal to the last one of its role, whose link is still there, was admitted and
        // keyed to it (unless the filters look at the process name, which the key does not
        // hold).
        let memo = usize::from(raw.role == ROLE_SERVER);
        if let Some(m) = &self.last_link[memo]
            && m.raw == raw
            && self.table.contains_index(m.li)
            && self.table.get(m.li).key == m.key
            && !self.policy.filters_processes()
        {
            return Some(m.li);
        }
        if !self.policy.admits(raw.port, raw.peer(), comm) {
            self.excluded += 1;
            return None;
        }
        let mut key = raw;
        if key.role == ROLE_SERVER {
            key.client = octets(self.policy.client_of_server_link(key.client_ip()));
        }
        let li = if let Some(li) = self.table.find(&key) {
            li
        } else if self.individual < self.policy.max_series {
            self.individual += 1;
            self.create(key, comm, 0, now)
        } else {
            return Some(self.aggregate_for(key, comm, now));
        };
        self.last_link[memo] = Some(LastLink { raw, key, li });
        Some(li)
    }

    /// The aggregate link of a new socket over the series cap.
    fn aggregate_for(&mut self, key: Key, comm: &str, now: Instant) -> u32 {
        // Over the cap: one row per process, role and server, the client address unspecified.
        self.aggregated += 1;
        let agg = Key {
            client: [0; 16],
            ..key
        };
        if let Some(li) = self.table.find(&agg) {
            return li;
        }
        let agg = if self.aggregates < self.policy.max_aggregates() {
            agg
        } else {
            // Even those are too many: one row per role and family.
            let all = Key {
                server: [0; 16],
                netns: 0,
                tgid: 0,
                port: 0,
                ..agg
            };
            if let Some(li) = self.table.find(&all) {
                return li;
            }
            all
        };
        self.aggregates += 1;
        self.create(agg, comm, AGGREGATE, now)
    }

    fn create(&mut self, key: Key, comm: &str, flags: u8, now: Instant) -> u32 {
        let name = self
            .names
            .entry(key.tgid)
            .or_insert_with(|| (Box::from(""), 0));
        if name.0.is_empty() && key.tgid != 0 {
            name.0 = Box::from(comm);
        }
        name.1 += 1;
        let now = self.secs(now);
        self.table.insert(Link {
            key,
            rx: 0,
            tx: 0,
            segs_in: 0,
            segs_out: 0,
            retrans: 0,
            srtt: 0,
            send_rsts: 0,
            receive_rsts: 0,
            live: 0,
            lost: 0,
            changed_s: now,
            created_s: now,
            flags,
        })
    }
}
