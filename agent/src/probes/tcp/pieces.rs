//! The tcp probe's delta on its way to the store, in pieces.
//!
//! A row in transit is a vector of values (about 500 bytes with its strings), several times
//! its packed form in the store. The first delta of a run holds every link: at 100 k links,
//! sent at once, that was 50 MB for a moment, and glibc kept most of it. Sent in pieces that
//! are built only when sent, and each only once the store took the one before, a delta of any
//! size holds a piece or two in that form. The store sees one delta (`Batch::TableDelta`'s
//! `more`): a replace ends with the last piece, which also refreshes the rest.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{
    collector::Collector,
    delta,
    links::{LinkKey, LinkRow},
    to_row,
};
use crate::{imdb::Batch, telemetry::Counter};

/// Rows per piece: about 2 MB in transit.
pub const PIECE: usize = 4096;
/// How long a piece waits at most for the store to take the one before it.
const PIECE_WAIT: Duration = Duration::from_secs(1);

/// An interval's rows: every link's (by index, built piece by piece), or the changed ones.
pub enum Rows {
    All(Vec<u32>),
    Changed(Vec<LinkRow>),
}

/// Sends an interval's delta in pieces of [`PIECE`] rows (see [`Batch::TableDelta`]'s `more`),
/// each built when it is sent and sent once the store has taken the one before (bounded by
/// [`PIECE_WAIT`]), so that only a piece or two are in memory in their fat form. The last
/// piece refreshes the rest; `replace` starts with the first and ends with the last. Err when
/// the store is gone.
pub async fn send_delta(
    tx: &mpsc::Sender<Batch>,
    state: &Collector,
    rows: Rows,
    removed: &[LinkKey],
    replace: bool,
    rows_sent: &Counter,
) -> Result<(), ()> {
    let (ids, mut changed) = match rows {
        Rows::All(ids) => (ids, Vec::new().into_iter()),
        Rows::Changed(rows) => (Vec::new(), rows.into_iter()),
    };
    let total = ids.len() + changed.len();
    let mut sent = 0;
    loop {
        let end = (sent + PIECE).min(total);
        let piece = if ids.is_empty() {
            changed.by_ref().take(end - sent).map(to_row).collect()
        } else {
            state.rows_of(&ids[sent..end])
        };
        let (first, more) = (sent == 0, end < total);
        let removed = if first { removed } else { &[] };
        let batch = delta(piece, removed, !more, replace && first, more);
        rows_sent.add(batch.len() as u64);
        tx.send(batch).await.map_err(|_| ())?;
        if !more {
            return Ok(());
        }
        sent = end;
        let deadline = tokio::time::Instant::now() + PIECE_WAIT;
        while tx.capacity() < tx.max_capacity() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        sync::Arc,
    };

    use super::*;
    use crate::{
        imdb::{Limits, Store},
        probes::tcp::{TABLE, key, links::ROLE_CLIENT, policy::Policy, table_meta},
        telemetry::{PROBE_ROWS, SelfMetrics},
    };

    fn row(port: u16) -> LinkRow {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        LinkRow {
            key: key(1, None, ROLE_CLIENT, lo, 1, lo, port).link_key(),
            process_name: "curl".into(),
            link_count: 1,
            rx_bytes: u64::from(port),
            tx_bytes: 0,
            packets_in: 0,
            packets_out: 0,
            retran_packets: 0,
            lost_packets: 0,
            rtt_us: 0,
            start_ms: 0,
            send_rsts: 0,
            receive_rsts: 0,
            srtt_hist: None,
            srtt_sum_us: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_delta_goes_in_paced_pieces_and_replaces_an_earlier_run() {
        let metrics = Arc::new(SelfMetrics::new());
        let state = Collector::new(&metrics, Policy::default());
        let mut store = Store::new(Limits::default());
        store.register(table_meta(&Policy::default())).unwrap();
        // A record an earlier run of the probe left.
        let earlier = delta(vec![to_row(row(60_000))], &[], true, true, false);
        assert_eq!(store.apply(earlier, 1), 0);
        let n = 2 * PIECE + 5;
        let (tx, mut rx) = mpsc::channel(64);
        let store_task = tokio::spawn(async move {
            let mut pieces = Vec::new();
            while let Some(batch) = rx.recv().await {
                let Batch::TableDelta {
                    upserts,
                    refresh_rest,
                    replace,
                    more,
                    ..
                } = &batch
                else {
                    panic!("not a delta: {batch:?}");
                };
                let piece = (upserts.len(), *replace, *more, *refresh_rest);
                let records = store.record_counts()[0].1;
                // A slow store (below PIECE_WAIT): the next piece is sent once this one is
                // taken, the one after only once the next is taken: never two queued.
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(rx.len() <= 1, "{} pieces queued", rx.len());
                pieces.push((piece, records));
                store.apply(batch, 2);
            }
            (pieces, store)
        });
        let rows = (0..n).map(|i| row(i as u16 + 1)).collect();
        let sent = metrics.counter(PROBE_ROWS, &[("probe", "tcp")]);
        send_delta(&tx, &state, Rows::Changed(rows), &[], true, &sent)
            .await
            .unwrap();
        drop(tx);
        let (pieces, store) = store_task.await.unwrap();
        assert_eq!(
            pieces,
            vec![
                // (rows, replace, more, refresh_rest), records before it
                ((PIECE, true, true, false), 1),
                ((PIECE, false, true, false), PIECE + 1),
                ((5, false, false, true), 2 * PIECE + 1),
            ],
            "the earlier run's record stays visible until the last piece"
        );
        assert_eq!(store.record_counts(), vec![(TABLE.to_owned(), n)]);
        assert_eq!(sent.get(), n as u64);
    }
}
