//! `system_disk`: block-device I/O counters from /proc/diskstats, one row per device
//! (partitions included), sizes in bytes and times in seconds.
//!
//! Unused virtual devices (loop, ram and zram devices that have completed no I/O) are left
//! out: a host has dozens of them and they only add empty series. The kernel prints the time
//! columns as 32-bit milliseconds on most versions, so they wrap after 49.7 days of
//! accumulated time; Prometheus treats the wrap as a counter reset.

use super::{Collect, Field, counter, gauge, key, put, put_ratio};
use crate::imdb::Row;

pub(crate) struct Disk;

impl Collect for Disk {
    const TABLE: &'static str = "system_disk";
    const DESCRIPTION: &'static str = "Block-device I/O from /proc/diskstats, per device";
    const FIELDS: &'static [Field] = FIELDS;
    const FILES: &'static [&'static str] = &["/proc/diskstats"];

    fn new() -> Self {
        Self
    }

    fn collect(&mut self, texts: &[String], out: &mut Vec<Row>) -> Result<(), &'static str> {
        parse(texts.first().map_or("", String::as_str), out)
    }
}

/// How a diskstats column becomes a value.
#[derive(Clone, Copy)]
enum Unit {
    Count,
    /// 512-byte sectors (the unit of diskstats whatever the device's sector size) → bytes.
    Sectors,
    /// Milliseconds → seconds.
    Millis,
}

/// For each field after the key: the diskstats column (0 = first number after the name).
const COLUMNS: [(usize, Unit); 14] = [
    (0, Unit::Count),
    (1, Unit::Count),
    (2, Unit::Sectors),
    (3, Unit::Millis),
    (4, Unit::Count),
    (5, Unit::Count),
    (6, Unit::Sectors),
    (7, Unit::Millis),
    (8, Unit::Count),
    (9, Unit::Millis),
    (10, Unit::Millis),
    (11, Unit::Count),
    (13, Unit::Sectors),
    (15, Unit::Count),
];

const FIELDS: &[Field] = &[
    key(
        "disk",
        "Block device name as the kernel knows it (sda, nvme0n1p1, dm-0, ...)",
    ),
    counter("reads_completed", "", "Read requests completed"),
    counter(
        "reads_merged",
        "",
        "Adjacent read requests merged into one before being issued",
    ),
    counter("read_bytes", "", "Data read, bytes"),
    counter(
        "read_time_seconds",
        "",
        "Time read requests took, summed over requests, seconds",
    ),
    counter("writes_completed", "", "Write requests completed"),
    counter(
        "writes_merged",
        "",
        "Adjacent write requests merged into one before being issued",
    ),
    counter("written_bytes", "", "Data written, bytes"),
    counter(
        "write_time_seconds",
        "",
        "Time write requests took, summed over requests, seconds",
    ),
    gauge(
        "io_in_progress",
        "",
        "Requests issued to the device and not yet completed",
    ),
    counter(
        "io_time_seconds",
        "",
        "Time the device had at least one request in flight (busy time), seconds",
    ),
    counter(
        "io_weighted_time_seconds",
        "",
        "Time requests spent in flight, weighted by the number in flight (queue depth x time), seconds",
    ),
    counter(
        "discards_completed",
        "",
        "Discard (trim) requests completed (Linux 4.18+)",
    ),
    counter("discarded_bytes", "", "Data discarded, bytes (Linux 4.18+)"),
    counter(
        "flushes_completed",
        "",
        "Cache flush requests completed (Linux 5.5+)",
    ),
];

/// Whether a device is an unused loop/ram/zram device (see the module comment).
fn unused_virtual(name: &str, reads: Option<u64>, writes: Option<u64>) -> bool {
    ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p))
        && reads.unwrap_or(0) == 0
        && writes.unwrap_or(0) == 0
}

/// Appends one row per device line ("major minor name n0 n1 ..."); `Err` when there is none
/// (a host without block devices still lists loop devices, so that means garbage).
pub(crate) fn parse(text: &str, out: &mut Vec<Row>) -> Result<(), &'static str> {
    let mut lines = 0;
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        let (Some(major), Some(minor), Some(name)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if major.parse::<u32>().is_err() || minor.parse::<u32>().is_err() {
            continue;
        }
        let mut n = [None::<u64>; 17];
        for (slot, w) in n.iter_mut().zip(words) {
            *slot = w.parse().ok();
        }
        // Kernels since 2.6.25 print at least 11 numbers; fewer is a partition line of 2.6.24
        // and older (4 numbers) or garbage.
        if n[10].is_none() {
            continue;
        }
        lines += 1;
        if unused_virtual(name, n[0], n[4]) {
            continue;
        }
        let mut row = Disk::blank_row();
        put(&mut row.values[0], name);
        for (slot, &(col, unit)) in row.values[1..].iter_mut().zip(&COLUMNS) {
            let Some(v) = n[col] else { continue };
            match unit {
                Unit::Count => put(slot, v),
                Unit::Sectors => {
                    if let Some(bytes) = v.checked_mul(512) {
                        put(slot, bytes);
                    }
                }
                Unit::Millis => put_ratio(slot, v, 1000),
            }
        }
        out.push(row);
    }
    if lines == 0 {
        return Err("/proc/diskstats has no device lines");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::system::tests::{check_row, value};

    const SAMPLE: &str = include_str!("testdata/diskstats");

    fn rows(text: &str) -> Vec<Row> {
        let mut out = Vec::new();
        parse(text, &mut out).unwrap();
        out
    }

    #[test]
    fn real_sample_skips_unused_virtual_devices() {
        let rows = rows(SAMPLE);
        let names: Vec<_> = rows.iter().map(|r| r.values[0].as_str()).collect();
        assert_eq!(names, ["vda"], "loop0-7 and zram0 never did I/O");
        check_row::<Disk>(&rows[0]);
        // 254 0 vda 308806 14061 14543586 349407 35302 79302 33596192 861456 0 61276 1232278
        //           19904 77 5525832 19458 1748 1955
        let v = |n| value::<Disk>(&rows[0], n);
        assert_eq!(v("reads_completed"), "308806");
        assert_eq!(v("reads_merged"), "14061");
        assert_eq!(v("read_bytes"), (14_543_586u64 * 512).to_string());
        assert_eq!(v("read_time_seconds"), "349.407");
        assert_eq!(v("writes_completed"), "35302");
        assert_eq!(v("written_bytes"), (33_596_192u64 * 512).to_string());
        assert_eq!(v("write_time_seconds"), "861.456");
        assert_eq!(v("io_in_progress"), "0");
        assert_eq!(v("io_time_seconds"), "61.276");
        assert_eq!(v("io_weighted_time_seconds"), "1232.278");
        assert_eq!(v("discards_completed"), "19904");
        assert_eq!(v("discarded_bytes"), (5_525_832u64 * 512).to_string());
        assert_eq!(v("flushes_completed"), "1748");
    }

    #[test]
    fn used_loop_devices_and_partitions_are_kept() {
        let text = "   7       0 loop0 5 0 40 1 0 0 0 0 0 4 1 0 0 0 0\n\
                    8       0 sda 10 0 80 1 20 0 160 2 1 3 3\n\
                    8       1 sda1 10 0 80 1 20 0 160 2 0 3 3\n\
                    1       0 ram0 0 0 0 0 0 0 0 0 0 0 0\n";
        let rows = rows(text);
        let names: Vec<_> = rows.iter().map(|r| r.values[0].as_str()).collect();
        assert_eq!(names, ["loop0", "sda", "sda1"]);
        // 4.x kernel: 11 numbers, no discard or flush columns.
        assert_eq!(value::<Disk>(&rows[1], "discards_completed"), "");
        assert_eq!(value::<Disk>(&rows[1], "flushes_completed"), "");
        assert_eq!(value::<Disk>(&rows[1], "io_in_progress"), "1");
        assert_eq!(value::<Disk>(&rows[1], "written_bytes"), "81920");
    }

    #[test]
    fn garbage() {
        let mut out = Vec::new();
        assert!(parse("", &mut out).is_err());
        assert!(
            parse("8 0 sda 1 2 3 4\n", &mut out).is_err(),
            "too few columns"
        );
        assert!(parse("x y sda 1 2 3 4 5 6 7 8 9 10 11\n", &mut out).is_err());
        let rows = rows("8 0 sda 1 2 36028797018963968 x 5 6 7 8 9 10 11\n");
        assert_eq!(value::<Disk>(&rows[0], "read_bytes"), "", "overflow");
        assert_eq!(value::<Disk>(&rows[0], "read_time_seconds"), "");
        assert_eq!(value::<Disk>(&rows[0], "writes_completed"), "5");
    }
}
