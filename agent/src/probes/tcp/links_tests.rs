use super::super::policy::SrttHistogram;
use super::*;
use std::net::IpAddr;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(port: u16) -> Key {
    Key::new(1, 42, ROLE_CLIENT, ip("127.0.0.1"), ip("127.0.0.1"), port)
}

fn tx(n: u64) -> Counters {
    Counters {
        bytes_acked: n,
        srtt_us: 100,
        ..Counters::default()
    }
}

struct T {
    l: Links,
    t0: Instant,
}

impl T {
    fn new(policy: Policy) -> Self {
        let t0 = Instant::now();
        Self {
            l: Links::new(policy, t0, 1_000_000),
            t0,
        }
    }

    fn at(&self, s: u64) -> Instant {
        self.t0 + Duration::from_secs(s)
    }

    /// One dump of sockets opened since the probe started (counted from zero).
    fn dump(&mut self, socks: &[(u64, Key, Counters)], failed: &[u32]) {
        let now = self.at(0);
        self.l.begin_dump();
        for (cookie, k, c) in socks {
            if self.l.update(*cookie, c, now) == Seen::New {
                self.l
                    .track(*cookie, *k, "curl", c, &Counters::default(), now);
            }
        }
        self.l.end_dump(&failed.iter().copied().collect(), now);
    }

    fn close(&mut self, cookie: u64, k: Key, c: Counters) {
        let now = self.at(0);
        if !self.l.close(cookie, &c, now) {
            self.l
                .close_new(cookie, k, "curl", &c, &Counters::default(), now);
        }
    }

    fn rows(&self) -> Vec<LinkRow> {
        let mut r = self.l.rows();
        r.sort_by(|a, b| a.key.cmp(&b.key));
        r
    }

    fn one(&self) -> (u64, u64) {
        let r = self.rows();
        assert_eq!(r.len(), 1, "{r:?}");
        (r[0].tx_bytes, r[0].link_count)
    }
}

fn t() -> T {
    T::new(Policy::default())
}

#[test]
fn live_and_closed_sockets_sum_per_link() {
    let mut t = t();
    t.dump(&[(1, key(80), tx(100)), (2, key(80), tx(50))], &[]);
    t.close(1, key(80), tx(120));
    t.dump(&[(2, key(80), tx(70))], &[]);
    assert_eq!(t.one(), (190, 1));
    assert_eq!(t.rows()[0].process_name, "curl");
}

#[test]
fn a_socket_missing_from_one_dump_is_not_banked() {
    let mut t = t();
    t.dump(&[(1, key(80), tx(100))], &[]);
    t.dump(&[], &[]);
    t.dump(&[(1, key(80), tx(150))], &[]);
    assert_eq!(t.one(), (150, 1));
}

#[test]
fn incomplete_dumps_say_nothing_about_absence() {
    let mut t = t();
    t.dump(&[(1, key(80), tx(100))], &[]);
    for _ in 1..5 {
        t.dump(&[], &[1]);
    }
    assert_eq!(t.one(), (100, 1));
    // A failure elsewhere says nothing about namespace 1's sockets either way.
    t.dump(&[], &[7]);
    t.dump(&[], &[7]);
    assert_eq!(t.one(), (100, 0));
}

#[test]
fn vanished_sockets_keep_their_counters_and_late_events_add_only_the_rest() {
    let mut t = t();
    t.dump(&[(1, key(80), tx(100))], &[]);
    t.dump(&[], &[]);
    t.dump(&[], &[]);
    assert_eq!(t.one(), (100, 0));
    t.close(1, key(80), tx(130));
    assert_eq!(t.one(), (130, 0));
}

#[test]
fn a_vanished_socket_that_reappears_is_not_counted_twice() {
    let mut t = t();
    t.dump(&[(1, key(80), tx(100))], &[]);
    t.dump(&[], &[]);
    t.dump(&[], &[]);
    t.dump(&[(1, key(80), tx(140))], &[]);
    assert_eq!(t.one(), (140, 1));
    t.close(1, key(80), tx(150));
    assert_eq!(t.one(), (150, 0));
}

#[test]
fn a_socket_keeps_its_first_link() {
    let mut t = t();
    t.dump(&[(1, key(80), tx(10))], &[]);
    let mut moved = key(80);
    moved.tgid = 7;
    t.dump(&[(1, moved, tx(20))], &[]);
    t.close(1, moved, tx(20));
    let rows = t.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].key.tgid, 42);
    assert_eq!(rows[0].tx_bytes, 20);
}

#[test]
fn a_stale_dump_does_not_revive_a_closed_socket() {
    let mut t = t();
    t.close(1, key(80), tx(10));
    t.dump(&[(1, key(80), tx(10))], &[]);
    assert_eq!(t.one(), (10, 0));
}

#[test]
fn idle_links_are_pruned_on_the_monotonic_clock_unless_told_never() {
    let mut t = t();
    t.close(1, key(80), tx(10));
    t.dump(&[(2, key(81), tx(5))], &[]);
    t.l.prune(t.at(10), None);
    assert_eq!(t.rows().len(), 2);
    // A clock reading before the last change (what a wall-clock step back would look like
    // on a wall clock) prunes nothing.
    t.l.prune(t.t0, Some(Duration::from_secs(5)));
    assert_eq!(t.rows().len(), 2);
    t.l.prune(t.at(10), Some(Duration::from_secs(5)));
    let rows = t.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].key.server_port, 81);
}

#[test]
fn u32_counters_are_widened_across_a_wrap() {
    let mut t = t();
    let c = |segs: u32, retrans: u32| Counters {
        segs_out: segs,
        segs_in: segs,
        total_retrans: retrans,
        ..Counters::default()
    };
    t.dump(&[(1, key(80), c(u32::MAX - 100, u32::MAX))], &[]);
    t.dump(&[(1, key(80), c(199, 4))], &[]);
    let r = &t.rows()[0];
    let expected = u64::from(u32::MAX - 100) + 300;
    assert_eq!((r.packets_out, r.packets_in), (expected, expected));
    assert_eq!(r.retran_packets, u64::from(u32::MAX) + 5);
    // Closed after one more wrap-free step: still exact.
    t.close(1, key(80), c(299, 5));
    let r = &t.rows()[0];
    assert_eq!(r.packets_out, expected + 100);
    assert_eq!(r.retran_packets, u64::from(u32::MAX) + 6);
}

#[test]
fn a_socket_older_than_the_probe_counts_from_its_first_reading() {
    let mut t = t();
    let now = t.at(0);
    let first = Counters {
        bytes_acked: 1_000_000,
        bytes_received: 5_000,
        segs_out: 700,
        srtt_us: 50,
        ..Counters::default()
    };
    t.l.begin_dump();
    assert_eq!(t.l.update(9, &first, now), Seen::New);
    t.l.track(9, key(80), "old", &first, &first, now);
    let r = &t.rows()[0];
    assert_eq!(
        (r.tx_bytes, r.rx_bytes, r.packets_out, r.link_count),
        (0, 0, 0, 1)
    );
    assert_eq!(r.rtt_us, 50);
    let later = Counters {
        bytes_acked: 1_000_300,
        segs_out: 703,
        ..first
    };
    t.dump(&[(9, key(80), later)], &[]);
    let r = &t.rows()[0];
    assert_eq!((r.tx_bytes, r.packets_out), (300, 3));
    assert_eq!(r.start_ms, 1_000_000, "counters started with the probe");
}

#[test]
fn deltas_carry_only_what_changed_and_what_was_forgotten() {
    let mut t = t();
    t.dump(&[(1, key(80), tx(10)), (2, key(81), tx(10))], &[]);
    assert_eq!(t.l.take_delta().changed.len(), 2);
    t.dump(&[(1, key(80), tx(10)), (2, key(81), tx(10))], &[]);
    let d = t.l.take_delta();
    assert!(d.changed.is_empty() && d.removed.is_empty(), "{d:?}");
    t.dump(&[(1, key(80), tx(15)), (2, key(81), tx(10))], &[]);
    let d = t.l.take_delta();
    assert_eq!(d.changed.len(), 1);
    assert_eq!(
        (d.changed[0].key.server_port, d.changed[0].tx_bytes),
        (80, 15)
    );
    t.close(2, key(81), tx(10));
    t.l.prune(t.at(100), Some(Duration::from_secs(5)));
    let d = t.l.take_delta();
    assert_eq!(d.removed, vec![key(81).link_key()]);
    // The closed link changed (link_count 0) before it was forgotten; the delta says both.
    assert!(d.changed.is_empty(), "a forgotten link has no row: {d:?}");
    assert_eq!(t.rows().len(), 1);
}

fn server(client: &str, port: u16) -> Key {
    Key::new(1, 42, ROLE_SERVER, ip(client), ip("127.0.0.1"), port)
}

#[test]
fn links_beyond_the_cap_fold_into_one_row_per_process_role_and_server() {
    let mut t = T::new(Policy {
        max_series: 2,
        ..Policy::default()
    });
    let socks: Vec<_> = (1..=5u64)
        .map(|i| (i, server(&format!("10.0.0.{i}"), 80), tx(i * 100)))
        .collect();
    t.dump(&socks, &[]);
    let rows = t.rows();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let agg = rows
        .iter()
        .find(|r| r.key.client_ip == ip("0.0.0.0"))
        .expect("aggregate row");
    assert_eq!((agg.link_count, agg.tx_bytes), (3, 300 + 400 + 500));
    assert_eq!(t.l.aggregated, 3);
    // Closed sockets of an aggregated link stay there; a freed slot takes new links again.
    t.close(3, server("10.0.0.3", 80), tx(350));
    t.close(1, server("10.0.0.1", 80), tx(100));
    t.l.prune(t.at(100), Some(Duration::from_secs(5)));
    t.dump(&[(6, server("10.0.0.6", 80), tx(1))], &[]);
    let rows = t.rows();
    assert!(
        rows.iter().any(|r| r.key.client_ip == ip("10.0.0.6")),
        "{rows:?}"
    );
}

#[test]
fn past_the_aggregate_budget_overflow_goes_to_one_row_per_role() {
    let mut t = T::new(Policy {
        max_series: 1,
        ..Policy::default()
    });
    let budget = t.l.policy().max_aggregates();
    let n = u64::from(budget) + 6;
    let socks: Vec<_> = (0..n)
        .map(|i| (i + 1, key(1000 + i as u16), tx(1)))
        .collect();
    t.dump(&socks, &[]);
    let rows = t.rows();
    assert_eq!(rows.len() as u32, 1 + budget + 1);
    let all = rows.iter().find(|r| r.key.server_port == 0).unwrap();
    assert_eq!((all.link_count, all.tx_bytes, all.key.tgid), (5, 5, 0));
    assert!(rows.len() as u32 <= t.l.policy().max_rows());
}

#[test]
fn server_links_clients_aggregate_by_prefix_and_filters_leave_sockets_out() {
    let mut t = T::new(Policy {
        client_prefix_v4: 24,
        ..Policy::default()
    });
    t.dump(
        &[
            (1, server("10.0.0.1", 80), tx(1)),
            (2, server("10.0.0.2", 80), tx(2)),
            (3, server("10.0.1.1", 80), tx(4)),
            (
                4,
                Key::new(1, 42, ROLE_CLIENT, ip("10.0.0.9"), ip("10.0.0.1"), 80),
                tx(8),
            ),
        ],
        &[],
    );
    let rows = t.rows();
    let by_client = |c: &str, role: u8| {
        rows.iter()
            .find(|r| r.key.client_ip == ip(c) && r.key.role == role)
            .map(|r| (r.link_count, r.tx_bytes))
    };
    assert_eq!(by_client("10.0.0.0", ROLE_SERVER), Some((2, 3)));
    assert_eq!(by_client("10.0.1.0", ROLE_SERVER), Some((1, 4)));
    assert_eq!(
        by_client("10.0.0.9", ROLE_CLIENT),
        Some((1, 8)),
        "client links keep theirs"
    );

    let cidrs = toml::from_str("exclude_cidrs = \"10.0.0.0/24\"").unwrap();
    let policy = crate::probes::tcp::params::policy(&cidrs);
    let mut t = T::new(policy.unwrap());
    t.dump(
        &[
            (1, server("10.0.0.1", 80), tx(1)),
            (2, server("10.0.9.1", 80), tx(2)),
        ],
        &[],
    );
    assert_eq!(t.one(), (2, 1));
    assert_eq!(t.l.excluded, 1);
    t.dump(
        &[
            (1, server("10.0.0.1", 80), tx(5)),
            (2, server("10.0.9.1", 80), tx(2)),
        ],
        &[],
    );
    assert_eq!(t.l.excluded, 1, "an excluded socket is decided once");
    t.close(1, server("10.0.0.1", 80), tx(9));
    assert_eq!(t.one(), (2, 1));
}

/// The steady-state cost the issue budgets: one socket per link, 100 k of each.
#[test]
fn state_per_link_stays_small() {
    let mut t = T::new(Policy {
        max_series: 200_000,
        ..Policy::default()
    });
    let n = 100_000u64;
    let socks: Vec<_> = (0..n)
        .map(|i| {
            let client = format!("127.{}.{}.{}", 1 + i / 62_500, i / 250 % 250, i % 250 + 1);
            (i + 1, server(&client, 500 + (i % 500) as u16), tx(i))
        })
        .collect();
    t.dump(&socks, &[]);
    t.dump(&socks, &[]);
    assert_eq!(t.l.sizes(), (n as usize, n as usize));
    let per_link = t.l.heap_bytes() as u64 / n;
    println!("link state: {per_link} bytes per link");
    assert!(per_link <= 200, "{per_link} bytes per link");
}

fn rtt(us: u32) -> Counters {
    Counters {
        srtt_us: us,
        ..Counters::default()
    }
}

/// Per-bucket counts of the one row's `srtt` histogram, and its sum.
fn hist(t: &T) -> (Option<[u32; 13]>, u64) {
    let r = t.rows();
    assert_eq!(r.len(), 1, "{r:?}");
    (r[0].srtt_hist, r[0].srtt_sum_us)
}

fn all_links() -> T {
    T::new(Policy {
        srtt_histogram: SrttHistogram::All,
        ..Policy::default()
    })
}

#[test]
fn srtt_histogram_follows_each_live_socket() {
    let mut t = all_links();
    // 50 is in the first bucket (bounds are inclusive), 51 in the second, 300 ms above all.
    t.dump(
        &[
            (1, key(80), rtt(50)),
            (2, key(80), rtt(51)),
            (3, key(80), rtt(300_000)),
        ],
        &[],
    );
    let mut want = [0; 13];
    want[0] = 1;
    want[1] = 1;
    want[12] = 1;
    assert_eq!(hist(&t), (Some(want), 300_101));
    // A socket's new reading moves it between buckets; the others stay.
    t.dump(
        &[
            (1, key(80), rtt(2_000)),
            (2, key(80), rtt(51)),
            (3, key(80), rtt(300_000)),
        ],
        &[],
    );
    want[0] = 0;
    want[5] = 1;
    assert_eq!(hist(&t), (Some(want), 302_051));
    // Closed and vanished sockets leave it: counts always sum to link_count.
    t.close(3, key(80), rtt(280_000));
    t.dump(&[(1, key(80), rtt(2_000))], &[]);
    t.dump(&[(1, key(80), rtt(2_000))], &[]);
    let mut one = [0; 13];
    one[5] = 1;
    assert_eq!(hist(&t), (Some(one), 2_000));
    assert_eq!(t.rows()[0].link_count, 1);
    // No live socket: no histogram (the mean gauge keeps the last one's RTT).
    t.close(1, key(80), rtt(1_900));
    assert_eq!(hist(&t), (None, 0));
    assert_eq!(t.rows()[0].rtt_us, 1_900);
    // A socket joining the empty link starts from empty buckets.
    t.dump(&[(4, key(80), rtt(10))], &[]);
    let mut first = [0; 13];
    first[0] = 1;
    assert_eq!(hist(&t), (Some(first), 10));
}

#[test]
fn by_default_only_links_of_two_or_more_connections_carry_the_srtt_histogram() {
    let mut t = t();
    t.dump(&[(1, key(80), rtt(2_000))], &[]);
    assert_eq!(hist(&t), (None, 2_000));
    assert_eq!(t.rows()[0].rtt_us, 2_000);
    t.dump(&[(1, key(80), rtt(2_000)), (2, key(80), rtt(60))], &[]);
    let mut two = [0; 13];
    two[1] = 1;
    two[5] = 1;
    assert_eq!(hist(&t), (Some(two), 2_060));
    let mut off = T::new(Policy {
        srtt_histogram: SrttHistogram::Off,
        ..Policy::default()
    });
    off.dump(&[(1, key(80), rtt(2_000)), (2, key(80), rtt(60))], &[]);
    assert_eq!(hist(&off).0, None);
}

#[test]
fn resets_count_on_the_live_or_just_closed_sockets_link() {
    use gopher_common::{RST_RECEIVED, RST_SENT};
    let mut t = t();
    let now = t.at(0);
    t.dump(&[(1, key(80), tx(10)), (2, key(81), tx(10))], &[]);
    // Live socket: its link.
    assert!(t.l.reset(1, RST_RECEIVED, now));
    // Closed (tracked, then closed): the tombstone still knows the link.
    t.close(2, key(81), tx(10));
    assert!(t.l.reset(2, RST_SENT, now));
    // Closed without ever being seen live.
    t.close(3, key(81), tx(5));
    assert!(t.l.reset(3, RST_SENT | RST_RECEIVED, now));
    // Unknown socket: not attributable.
    assert!(!t.l.reset(99, RST_SENT, now));
    let r = t.rows();
    let by_port = |p: u16| r.iter().find(|x| x.key.server_port == p).unwrap();
    assert_eq!((by_port(80).send_rsts, by_port(80).receive_rsts), (0, 1));
    assert_eq!((by_port(81).send_rsts, by_port(81).receive_rsts), (2, 1));
    // A tombstone lasts a few dumps; the counts stay.
    for _ in 0..5 {
        t.dump(&[(1, key(80), tx(10))], &[]);
    }
    assert!(!t.l.reset(2, RST_SENT, now));
    let r = t.rows();
    let p81 = r.iter().find(|x| x.key.server_port == 81).unwrap();
    assert_eq!((p81.send_rsts, p81.receive_rsts), (2, 1));
}

#[test]
fn sockets_listed_in_another_order_or_fewer_are_still_found() {
    let mut t = t();
    let all: Vec<_> = (1..=6u64).map(|i| (i, key(80), tx(i))).collect();
    t.dump(&all, &[]);
    assert_eq!(t.one(), (21, 6));
    // Reversed, with two gone in between and every counter moved: each found once.
    let mut next: Vec<_> = all
        .iter()
        .filter(|s| s.0 != 2 && s.0 != 5)
        .map(|&(c, k, _)| (c, k, tx(c * 10)))
        .collect();
    next.reverse();
    t.dump(&next, &[]);
    t.dump(&next, &[]);
    assert_eq!(t.l.sizes().0, 6, "missing twice is not yet gone");
    assert_eq!(t.one().0, 10 + 30 + 40 + 60 + 2 + 5);
}

#[test]
fn only_links_whose_last_socket_left_are_pruned_and_a_returning_one_is_kept() {
    let mut t = t();
    t.dump(&[(1, key(80), tx(1)), (2, key(81), tx(1))], &[]);
    t.close(1, key(80), tx(1));
    // Port 80's link is idle, then takes a socket again before the window passes.
    t.dump(&[(2, key(81), tx(1)), (3, key(80), tx(1))], &[]);
    t.l.prune(t.at(100), Some(Duration::from_secs(5)));
    assert_eq!(t.rows().len(), 2);
    // Both lose their sockets; only then, and after the window, are they forgotten.
    t.close(2, key(81), tx(1));
    t.close(3, key(80), tx(1));
    t.l.prune(t.at(0), Some(Duration::from_secs(5)));
    assert_eq!(t.rows().len(), 2);
    t.l.prune(t.at(100), Some(Duration::from_secs(5)));
    assert!(t.rows().is_empty());
}

#[test]
fn a_run_of_one_link_is_keyed_right_after_its_link_was_pruned_and_its_slot_reused() {
    let mut t = t();
    t.close(1, key(80), tx(10));
    t.close(2, key(80), tx(5));
    assert_eq!(t.one(), (15, 0));
    // Link 80 is forgotten and a server link takes its slot (the client role's last link
    // still names the slot): a socket of 80 again gets a link of its own.
    t.l.take_delta_with(true);
    t.l.prune(t.at(10), Some(Duration::from_secs(5)));
    assert!(t.rows().is_empty());
    let server = Key::new(1, 42, ROLE_SERVER, ip("127.0.0.1"), ip("127.0.0.1"), 81);
    t.close(3, server, tx(7));
    t.close(4, key(80), tx(1));
    let r = t.rows();
    let by_port = |p: u16| r.iter().find(|x| x.key.server_port == p).unwrap().tx_bytes;
    assert_eq!((by_port(80), by_port(81), r.len()), (1, 7, 2));
}

#[test]
fn a_process_filter_is_asked_for_every_socket_of_a_run() {
    let mut policy = Policy::default();
    policy.processes.exclude = vec!["nc".to_owned()];
    let mut t = T::new(policy);
    let now = t.at(0);
    let zero = Counters::default();
    t.l.close_new(1, key(80), "curl", &tx(10), &zero, now);
    // Same key (a tgid reused by another program): the filter decides, not the last link.
    t.l.close_new(2, key(80), "nc", &tx(5), &zero, now);
    assert_eq!(t.one(), (10, 0));
    assert_eq!(t.l.excluded, 1);
}
