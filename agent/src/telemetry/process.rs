//! The standard `process_*` metrics of every Prometheus exporter (the names and meanings of
//! the official client libraries' process collector), read from `/proc/self` when a scrape
//! asks: CPU seconds, resident and virtual memory, open and maximum file descriptors, start
//! time and threads. Own code rather than a crate: five small files read into the registry,
//! where the client libraries' collectors would bring their own registry and encoder.
//!
//! Cost per scrape: four small reads and one listing of `/proc/self/fd` (a few µs per hundred
//! fds), nothing per sample.

use std::fs;

use super::{
    PROCESS_CPU, PROCESS_MAX_FDS, PROCESS_OPEN_FDS, PROCESS_RESIDENT, PROCESS_START_TIME,
    PROCESS_THREADS, PROCESS_VIRTUAL, SelfMetrics,
};

/// The fields of `/proc/self/stat` used here (proc(5) numbering).
#[derive(Debug, PartialEq)]
struct Stat {
    /// utime + stime, clock ticks.
    cpu_ticks: u64,
    threads: u64,
    /// Clock ticks after boot.
    start_ticks: u64,
    vsize_bytes: u64,
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After ")": field 3 (state) is index 0, so field N is index N - 3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: num(14)? + num(15)?,
        threads: num(20)?,
        start_ticks: num(22)?,
        vsize_bytes: num(23)?,
        rss_pages: num(24)?,
    })
}

/// The soft "Max open files" of `/proc/<pid>/limits`; None for "unlimited".
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` of `/proc/stat`: the boot time, seconds since the epoch.
fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|&v| v > 0)
}

/// Sets the `process_*` families from `/proc/self`. What cannot be read is left as it was (a
/// `/proc` without a file is a broken host, not a reason to fail a scrape).
// Counts of ticks, pages and fds fit an f64's 53 bits exactly for any real process.
#[allow(clippy::cast_precision_loss)]
pub fn refresh(metrics: &SelfMetrics) {
    let ticks = sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64;
    let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
    if let Some(stat) = fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse_stat)
    {
        metrics
            .float_counter(PROCESS_CPU, &[])
            .set(stat.cpu_ticks as f64 / ticks);
        metrics.gauge(PROCESS_THREADS, &[]).set(stat.threads as f64);
        metrics
            .gauge(PROCESS_VIRTUAL, &[])
            .set(stat.vsize_bytes as f64);
        metrics
            .gauge(PROCESS_RESIDENT, &[])
            .set(stat.rss_pages.saturating_mul(page) as f64);
        if let Some(boot) = fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(parse_btime)
        {
            metrics
                .gauge(PROCESS_START_TIME, &[])
                .set(boot as f64 + stat.start_ticks as f64 / ticks);
        }
    }
    if let Ok(fds) = fs::read_dir("/proc/self/fd") {
        // The listing's own fd is among them, as in the client libraries' collectors.
        metrics.gauge(PROCESS_OPEN_FDS, &[]).set(fds.count() as f64);
    }
    if let Some(max) = fs::read_to_string("/proc/self/limits")
        .ok()
        .as_deref()
        .and_then(parse_max_fds)
    {
        metrics.gauge(PROCESS_MAX_FDS, &[]).set(max as f64);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp, clippy::cast_precision_loss)]
mod tests {
    use super::*;
    use crate::telemetry::Sample;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 \
                    123456 987654321 2500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 300,
                threads: 7,
                start_ticks: 123_456,
                vsize_bytes: 987_654_321,
                rss_pages: 2500,
            })
        );
        assert_eq!(parse_stat("12 (x) S 1"), None);
    }

    #[test]
    fn limits_and_btime() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            20000                20000                files\n";
        assert_eq!(parse_max_fds(limits), Some(20000));
        assert_eq!(
            parse_max_fds("Max open files            unlimited            unlimited  files\n"),
            None
        );
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1764000000\nprocesses 9\n"),
            Some(1_764_000_000)
        );
    }

    /// Against this test process: the values agree with what the test reads itself.
    #[test]
    fn refresh_reads_this_process() {
        let m = SelfMetrics::new();
        let files: Vec<_> = (0..5).map(|_| tempfile::tempfile().unwrap()).collect();
        refresh(&m);
        let mut got = std::collections::BTreeMap::new();
        m.visit(|f| {
            for (_, s) in f.series() {
                let v = match s {
                    Sample::Gauge(v) => v,
                    Sample::Counter(n) => n as f64,
                };
                got.insert(f.name(), (f.kind(), v));
            }
        });
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as f64;
        assert!((got[PROCESS_OPEN_FDS].1 - open).abs() <= 2.0, "{got:?}");
        assert!(got[PROCESS_OPEN_FDS].1 >= 5.0 + 3.0, "{got:?}");
        let mut soft = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid out-pointer.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut soft) },
            0
        );
        assert_eq!(got[PROCESS_MAX_FDS].1, soft.rlim_cur as f64);
        assert!(got[PROCESS_RESIDENT].1 > 1e6, "{got:?}");
        assert!(got[PROCESS_VIRTUAL].1 >= got[PROCESS_RESIDENT].1, "{got:?}");
        assert!(got[PROCESS_THREADS].1 >= 1.0, "{got:?}");
        assert_eq!(got[PROCESS_CPU].0, crate::telemetry::Kind::FloatCounter);
        assert!(got[PROCESS_CPU].1 >= 0.0, "{got:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = got[PROCESS_START_TIME].1;
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
        drop(files);
    }
}
