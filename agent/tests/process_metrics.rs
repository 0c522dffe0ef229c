//! The standard `process_*` families and `gopher_build_info{version,revision}` of the real
//! agent, read through the reference parser and checked against `/proc/<agent pid>` and `git`,
//! read independently here.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::float_cmp
)]

mod common;

use std::process::Command;

use common::{Agent, Sample};

fn value(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .value
}

/// The process's user + system time in clock ticks (proc(5) fields 14 and 15).
fn cpu_ticks(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    f[14 - 3].parse::<f64>().unwrap() + f[15 - 3].parse::<f64>().unwrap()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

#[test]
fn process_metrics_match_proc_and_build_info_names_the_revision() {
    let agent = Agent::start("[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\n");
    let pid = agent.pid();
    // The CPU counter has the kernel's tick granularity: an agent that has not yet run a full
    // tick (10 ms) reads 0, which says nothing. Scrapes cost it some: wait for one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cpu_ticks(pid) < 1.0 && std::time::Instant::now() < deadline {
        agent.scrape().unwrap();
    }
    let samples = agent.scrape().unwrap();

    // Start time: boot time plus the process's start in ticks (proc(5)), seconds since epoch.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let started_at = btime + fields[22 - 3].parse::<f64>().unwrap() / clock_ticks();
    assert!(
        (value(&samples, "process_start_time_seconds") - started_at).abs() < 0.02,
        "{samples:?}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let max: f64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l["Max open files".len()..].split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(value(&samples, "process_max_fds"), max);
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    let reported = value(&samples, "process_open_fds");
    assert!((reported - open).abs() <= 4.0, "{reported} vs {open}");
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count() as f64;
    assert!(
        (value(&samples, "process_threads") - threads).abs() <= 2.0,
        "{threads}"
    );
    let rss = value(&samples, "process_resident_memory_bytes");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let vm_rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    // Same pages, read a moment apart: within 25 %.
    assert!(
        (rss - vm_rss_kib * 1024.0).abs() < 0.25 * vm_rss_kib * 1024.0,
        "{rss} vs {vm_rss_kib} KiB"
    );
    assert!(value(&samples, "process_virtual_memory_bytes") >= rss);
    // CPU: utime + stime, in seconds, only growing.
    let cpu = value(&samples, "process_cpu_seconds_total");
    let ticks = (fields[14 - 3].parse::<f64>().unwrap() + fields[15 - 3].parse::<f64>().unwrap())
        / clock_ticks();
    assert!(
        cpu > 0.0 && cpu <= ticks + 0.5,
        "{cpu} vs {ticks} read after"
    );
    let again = value(&agent.scrape().unwrap(), "process_cpu_seconds_total");
    assert!(again >= cpu, "{again} < {cpu}");

    // The revision is the commit this tree's HEAD names, as git says it here.
    let info = samples
        .iter()
        .find(|s| s.name == "gopher_build_info")
        .unwrap();
    assert_eq!(info.label("version"), env!("CARGO_PKG_VERSION"));
    let head = Command::new("git")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success());
    match head {
        Some(out) if std::env::var_os("GOPHER_REVISION").is_none() => {
            assert_eq!(
                info.label("revision"),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        _ => assert!(!info.label("revision").is_empty()),
    }
}
