//! `system_cpu`: CPU time by mode from /proc/stat, one row for all CPUs (`cpu="cpu"`) and one
//! per online CPU (`cpu="cpu0"`, ...), in seconds.

use rustc_hash::FxHashMap;

use super::{Collect, Field, counter, key, put, put_ratio};
use crate::imdb::Row;

pub(crate) struct Cpu {
    /// Ticks per second of /proc/stat's numbers (USER_HZ).
    hz: u64,
    /// Highest value reported so far per CPU and mode. proc(5) warns that iowait can go down
    /// (and idle with it, on some NO_HZ kernels); Prometheus would read any decrease as a
    /// counter reset and show a huge spike, so a counter never goes below what was reported.
    floor: FxHashMap<String, [u64; MODES]>,
}

impl Collect for Cpu {
    const TABLE: &'static str = "system_cpu";
    const DESCRIPTION: &'static str =
        "CPU time by mode from /proc/stat, for all CPUs together (cpu=\"cpu\") and each CPU";
    const FIELDS: &'static [Field] = FIELDS;
    const FILES: &'static [&'static str] = &["/proc/stat"];

    fn new() -> Self {
        Self::with_hz(clock_ticks())
    }

    fn collect(&mut self, texts: &[String], out: &mut Vec<Row>) -> Result<(), &'static str> {
        let before = out.len();
        for (name, ticks) in parse(texts.first().map_or("", String::as_str)) {
            let floor = match self.floor.get_mut(name) {
                Some(f) => f,
                None => self.floor.entry(name.to_owned()).or_insert([0; MODES]),
            };
            let mut row = Self::blank_row();
            put(&mut row.values[0], name);
            for (i, t) in ticks.iter().enumerate() {
                if let Some(t) = *t {
                    floor[i] = floor[i].max(t);
                    put_ratio(&mut row.values[i + 1], floor[i], self.hz);
                }
            }
            out.push(row);
        }
        if out.len() == before {
            return Err("/proc/stat has no cpu lines");
        }
        Ok(())
    }
}

impl Cpu {
    pub(crate) fn with_hz(hz: u64) -> Self {
        Self {
            hz,
            floor: FxHashMap::default(),
        }
    }
}

/// USER_HZ, the unit of /proc/stat's CPU times (100 on every mainstream architecture).
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

/// Modes in /proc/stat column order.
const MODES: usize = 10;

const FIELDS: &[Field] = &[
    key(
        "cpu",
        "CPU: \"cpu\" for all CPUs together, \"cpuN\" for CPU number N",
    ),
    counter(
        "user_seconds",
        "user",
        "Time spent in user mode (guest time included), seconds",
    ),
    counter(
        "nice_seconds",
        "nice",
        "Time spent in user mode at low priority (nice > 0), seconds",
    ),
    counter(
        "system_seconds",
        "system",
        "Time spent in kernel mode, seconds",
    ),
    counter("idle_seconds", "idle", "Time spent idle, seconds"),
    counter(
        "iowait_seconds",
        "iowait",
        "Time spent idle with I/O outstanding, seconds",
    ),
    counter(
        "irq_seconds",
        "irq",
        "Time spent servicing hardware interrupts, seconds",
    ),
    counter(
        "softirq_seconds",
        "softirq",
        "Time spent servicing software interrupts, seconds",
    ),
    counter(
        "steal_seconds",
        "steal",
        "Time the hypervisor gave to other guests while this CPU wanted to run, seconds",
    ),
    counter(
        "guest_seconds",
        "guest",
        "Time spent running a guest's virtual CPU (also counted in user), seconds",
    ),
    counter(
        "guest_nice_seconds",
        "guest_nice",
        "Time spent running a low-priority guest's virtual CPU (also counted in nice), seconds",
    ),
];

/// The `cpu` and `cpuN` lines of /proc/stat: name and ticks per mode (`None` where the kernel
/// prints fewer columns or a column is not a number).
pub(crate) fn parse(text: &str) -> impl Iterator<Item = (&str, [Option<u64>; MODES])> {
    text.lines().filter_map(|line| {
        let mut words = line.split_ascii_whitespace();
        let name = words.next()?;
        let n = name.strip_prefix("cpu")?;
        if !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut ticks = [None; MODES];
        for (slot, w) in ticks.iter_mut().zip(words) {
            *slot = w.parse().ok();
        }
        Some((name, ticks))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::system::tests::{check_row, value};

    const SAMPLE: &str = include_str!("testdata/stat");

    fn rows(cpu: &mut Cpu, text: &str) -> Vec<Row> {
        let mut out = Vec::new();
        cpu.collect(&[text.to_owned()], &mut out).unwrap();
        out
    }

    #[test]
    fn real_sample_in_seconds() {
        let rows = rows(&mut Cpu::with_hz(100), SAMPLE);
        let names: Vec<_> = rows.iter().map(|r| r.values[0].as_str()).collect();
        assert_eq!(names, ["cpu", "cpu0", "cpu1"]);
        for r in &rows {
            check_row::<Cpu>(r);
        }
        // cpu  265510 0 81501 267908 1741 0 16124 1424 0 0
        let v = |n| value::<Cpu>(&rows[0], n);
        assert_eq!(v("user_seconds"), "2655.1");
        assert_eq!(v("nice_seconds"), "0");
        assert_eq!(v("system_seconds"), "815.01");
        assert_eq!(v("idle_seconds"), "2679.08");
        assert_eq!(v("iowait_seconds"), "17.41");
        assert_eq!(v("softirq_seconds"), "161.24");
        assert_eq!(v("steal_seconds"), "14.24");
        assert_eq!(v("guest_nice_seconds"), "0");
        // cpu1 131711 0 56338 111761 1088 0 15609 709 0 0
        assert_eq!(value::<Cpu>(&rows[2], "system_seconds"), "563.38");
    }

    #[test]
    fn other_clock_rates() {
        let rows = rows(&mut Cpu::with_hz(1000), "cpu 1500 1 0 0\n");
        assert_eq!(value::<Cpu>(&rows[0], "user_seconds"), "1.5");
        assert_eq!(value::<Cpu>(&rows[0], "nice_seconds"), "0.001");
        // An old kernel without steal/guest columns.
        assert_eq!(value::<Cpu>(&rows[0], "steal_seconds"), "");
    }

    #[test]
    fn counters_never_go_back() {
        let mut cpu = Cpu::with_hz(100);
        rows(&mut cpu, "cpu0 100 0 0 500 70 0 0 0 0 0\n");
        let second = rows(&mut cpu, "cpu0 110 0 0 520 60 0 0 0 0 0\n");
        assert_eq!(value::<Cpu>(&second[0], "iowait_seconds"), "0.7", "held");
        assert_eq!(value::<Cpu>(&second[0], "idle_seconds"), "5.2");
        assert_eq!(value::<Cpu>(&second[0], "user_seconds"), "1.1");
        let third = rows(&mut cpu, "cpu0 110 0 0 530 90 0 0 0 0 0\n");
        assert_eq!(value::<Cpu>(&third[0], "iowait_seconds"), "0.9");
    }

    #[test]
    fn other_stat_lines_are_ignored() {
        let rows = rows(
            &mut Cpu::with_hz(100),
            "intr 1 2 3\nctxt 5\ncpufreq 1\ncpu7 1 2 3 4 5 6 7 8 9 10 11\n",
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].values[0], "cpu7");
        assert_eq!(value::<Cpu>(&rows[0], "guest_nice_seconds"), "0.1");
        let mut out = Vec::new();
        assert!(
            Cpu::with_hz(100)
                .collect(&["ctxt 1\n".to_owned()], &mut out)
                .is_err()
        );
    }
}
