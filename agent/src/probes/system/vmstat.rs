//! `system_vmstat`: virtual-memory event counters from /proc/vmstat, one row.

use super::{Collect, Field, counter, put};
use crate::imdb::Row;

pub(crate) struct Vmstat;

impl Collect for Vmstat {
    const TABLE: &'static str = "system_vmstat";
    const DESCRIPTION: &'static str =
        "Host virtual-memory event counters from /proc/vmstat (gala-gopher system_vmstat)";
    const FIELDS: &'static [Field] = FIELDS;
    const FILES: &'static [&'static str] = &["/proc/vmstat"];

    fn new() -> Self {
        Self
    }

    fn collect(&mut self, texts: &[String], out: &mut Vec<Row>) -> Result<(), &'static str> {
        out.push(parse(texts.first().map_or("", String::as_str))?);
        Ok(())
    }
}

/// Field names are the kernel's. A source also matches its per-zone variants
/// (`<src>_normal`, `<src>_dma32`, ...), which are summed: `pgalloc` only exists per zone, and
/// older kernels split `allocstall`, `pgsteal_kswapd` and `pgscan_kswapd` by zone as well.
const FIELDS: &[Field] = &[
    counter(
        "pgpgin",
        "pgpgin",
        "Data read from block devices into memory, KiB",
    ),
    counter(
        "pgpgout",
        "pgpgout",
        "Data written from memory to block devices, KiB",
    ),
    counter("pswpin", "pswpin", "Pages swapped in from swap space"),
    counter("pswpout", "pswpout", "Pages swapped out to swap space"),
    counter(
        "pgfault",
        "pgfault",
        "Page faults, minor and major (events)",
    ),
    counter(
        "pgmajfault",
        "pgmajfault",
        "Major page faults, which had to read from disk (events)",
    ),
    counter(
        "pgalloc",
        "pgalloc",
        "Pages allocated, summed over memory zones",
    ),
    counter("pgfree", "pgfree", "Pages freed"),
    counter(
        "pgactivate",
        "pgactivate",
        "Pages moved from the inactive to the active list",
    ),
    counter(
        "pgdeactivate",
        "pgdeactivate",
        "Pages moved from the active to the inactive list",
    ),
    counter(
        "pgscan_kswapd",
        "pgscan_kswapd",
        "Pages scanned for reclaim by the kswapd background threads",
    ),
    counter(
        "pgscan_direct",
        "pgscan_direct",
        "Pages scanned for reclaim directly by allocating tasks",
    ),
    counter(
        "pgsteal_kswapd",
        "pgsteal_kswapd",
        "Pages reclaimed by the kswapd background threads",
    ),
    counter(
        "pgsteal_direct",
        "pgsteal_direct",
        "Pages reclaimed directly by allocating tasks",
    ),
    counter(
        "allocstall",
        "allocstall",
        "Allocations that stalled to reclaim memory directly (events)",
    ),
    counter(
        "compact_stall",
        "compact_stall",
        "Allocations that stalled to compact memory directly (events)",
    ),
    counter(
        "oom_kill",
        "oom_kill",
        "Processes killed by the out-of-memory killer",
    ),
    counter(
        "thp_fault_alloc",
        "thp_fault_alloc",
        "Transparent huge pages allocated to satisfy a page fault",
    ),
    counter(
        "workingset_refault_file",
        "workingset_refault_file",
        "Evicted file pages that were needed again soon after (thrashing indicator, pages)",
    ),
];

/// Memory zone names that may follow a counter's name in /proc/vmstat.
const ZONES: &[&str] = &["dma", "dma32", "normal", "highmem", "movable", "device"];

/// Which field a /proc/vmstat name feeds, if any.
fn field_of(name: &str) -> Option<usize> {
    FIELDS.iter().position(|f| {
        name == f.src
            || name
                .strip_prefix(f.src)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|zone| ZONES.contains(&zone))
    })
}

/// One row from /proc/vmstat's `name value` lines; `Err` when no known name is present.
pub(crate) fn parse(text: &str) -> Result<Row, &'static str> {
    // None: not seen; Some(None): the sum overflowed, which only garbage does (no value then,
    // rather than a wrapped one).
    let mut sums: [Option<Option<u64>>; FIELDS.len()] = [None; FIELDS.len()];
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        let (Some(name), Some(n), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let (Some(i), Ok(n)) = (field_of(name), n.parse::<u64>()) else {
            continue;
        };
        sums[i] = Some(match sums[i] {
            None => Some(n),
            Some(sum) => sum.and_then(|s| s.checked_add(n)),
        });
    }
    if sums.iter().all(Option::is_none) {
        return Err("/proc/vmstat has none of the expected counters");
    }
    let mut row = Vmstat::blank_row();
    for (slot, sum) in row.values.iter_mut().zip(sums) {
        if let Some(Some(v)) = sum {
            put(slot, v);
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::system::tests::{check_row, value};

    const SAMPLE: &str = include_str!("testdata/vmstat");

    #[test]
    fn real_sample() {
        let row = parse(SAMPLE).unwrap();
        check_row::<Vmstat>(&row);
        let v = |n| value::<Vmstat>(&row, n);
        assert_eq!(v("pgpgin"), "7271793");
        assert_eq!(v("pgpgout"), "16798096");
        assert_eq!(v("pgfault"), "89999997");
        assert_eq!(v("pgmajfault"), "14070");
        assert_eq!(v("pswpin"), "0");
        // Zones: dma 0, dma32 0, normal 143844266, movable 0, device 0.
        assert_eq!(v("pgalloc"), "143844266");
        assert_eq!(v("allocstall"), "0");
        assert_eq!(v("workingset_refault_file"), "1524585");
        assert!(row.values.iter().all(|v| !v.is_empty()), "{row:?}");
    }

    #[test]
    fn zone_variants_are_summed_and_lookalikes_are_not() {
        let text = "pgsteal_kswapd_dma 1\npgsteal_kswapd_normal 10\npgsteal_kswapd_movable 100\n\
                    pgscan_direct 5\npgscan_direct_throttle 1000\nallocstall 7\n";
        let row = parse(text).unwrap();
        assert_eq!(value::<Vmstat>(&row, "pgsteal_kswapd"), "111");
        assert_eq!(value::<Vmstat>(&row, "pgscan_direct"), "5");
        assert_eq!(value::<Vmstat>(&row, "allocstall"), "7");
        assert_eq!(
            value::<Vmstat>(&row, "oom_kill"),
            "",
            "absent on this kernel"
        );
    }

    #[test]
    fn garbage() {
        assert!(parse("").is_err());
        assert!(parse("nr_free_pages 12\n").is_err(), "only gauges known");
        let row = parse(
            "pgfault -1\npgfree 1 2\npgalloc_dma 18446744073709551615\npgalloc_normal 1\n\
             pgalloc_movable 3\n",
        )
        .unwrap();
        assert_eq!(value::<Vmstat>(&row, "pgfault"), "");
        assert_eq!(value::<Vmstat>(&row, "pgfree"), "");
        assert_eq!(value::<Vmstat>(&row, "pgalloc"), "", "overflowing sum");
    }
}
