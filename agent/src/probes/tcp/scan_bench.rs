//! Cost of the host scans per interval, before and after issue 10 (bench/scan.sh runs it on a
//! loaded host; `cargo test` alone skips it). "Before" is the code as it was, kept here verbatim
//! so that both run side by side on the same host in one run: every interval, a walk of every
//! process's fd table for sockets whose owner cannot be found, and a stat of every process's
//! network namespace.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::Instant,
};

use super::{netns::Namespaces, owners};

/// `owners::scan` before issue 10 (a path per fd, `read_link`).
fn scan_before(wanted: &HashSet<u64>) -> usize {
    let mut found: HashMap<u64, u32> = HashMap::new();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut pids: Vec<u32> = proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.as_os_str().as_encoded_bytes();
            let Some(ino) = t
                .strip_prefix(b"socket:[")
                .and_then(|r| r.strip_suffix(b"]"))
                .and_then(|r| std::str::from_utf8(r).ok()?.parse().ok())
            else {
                continue;
            };
            if wanted.contains(&ino) {
                found.entry(ino).or_insert(pid);
            }
        }
        if found.len() == wanted.len() {
            break;
        }
    }
    found.len()
}

/// `netns::discover` before issue 10: a stat of every process's namespace, every refresh.
fn discover_before() -> HashMap<u64, PathBuf> {
    let mut found = HashMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(meta) = std::fs::metadata(&path) {
            found.entry(meta.ino()).or_insert(path);
        }
    };
    add(PathBuf::from("/proc/self/ns/net"));
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            if name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
                add(entry.path().join("ns/net"));
            }
        }
    }
    for pins in ["/run/netns", "/run/docker/netns"] {
        if let Ok(dir) = std::fs::read_dir(pins) {
            for entry in dir.flatten() {
                add(entry.path());
            }
        }
    }
    found
}

/// CPU time of this thread (user + system), in ms: on a shared machine wall time mostly
/// measures the other tenants.
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// Mean (wall ms, CPU ms) of `n` runs of `f`.
fn mean_ms(n: u32, mut f: impl FnMut()) -> (f64, f64) {
    let (t, c) = (Instant::now(), thread_cpu_ms());
    for _ in 0..n {
        f();
    }
    let n = f64::from(n);
    (
        t.elapsed().as_secs_f64() * 1e3 / n,
        (thread_cpu_ms() - c) / n,
    )
}

#[test]
#[ignore = "a benchmark: bench/scan.sh runs it on a loaded host"]
fn scan_cost() {
    let unowned: HashSet<u64> = std::env::var("GOPHER_SCAN_BENCH_UNOWNED")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.lines().filter_map(|l| l.parse().ok()).collect())
        .unwrap_or_default();
    let intervals: u32 = std::env::var("GOPHER_SCAN_BENCH_INTERVALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .as_encoded_bytes()
                .iter()
                .all(u8::is_ascii_digit)
        })
        .count();
    let namespaces = discover_before().len();
    let mut fds = 0u64;
    let mut buf = [0u8; 64];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
            owners::for_each_fd_link(pid, &mut buf, |_| fds += 1);
        }
    }

    // Owners: the same unfindable sockets asked for every interval.
    let walk_before = mean_ms(3, || assert_eq!(scan_before(&unowned), 0));
    let walk_after = mean_ms(3, || assert!(owners::scan(&unowned).is_empty()));
    let mut resolver = owners::Resolver::default();
    let owners_after = mean_ms(intervals, || {
        assert!(resolver.resolve(unowned.iter().copied()).is_empty());
    });

    // Namespaces: steady state (no process or namespace born or gone).
    let ns_before = mean_ms(5, || assert!(!discover_before().is_empty()));
    let mut ns = Namespaces::default();
    let first = mean_ms(1, || {
        ns.refresh();
    });
    let incremental = mean_ms(20, || {
        ns.refresh();
    });
    let full = mean_ms(3, || {
        ns.force_full_walk();
        ns.refresh();
    });
    // At a 5 s interval one refresh in six is a full walk (every 30 s).
    let amortised = (
        (5.0 * incremental.0 + full.0) / 6.0,
        (5.0 * incremental.1 + full.1) / 6.0,
    );
    let pair = |(wall, cpu): (f64, f64)| format!("{{\"wall_ms\":{wall:.2},\"cpu_ms\":{cpu:.2}}}");
    let out = format!(
        "{{\"processes\":{processes},\"fds\":{fds},\"namespaces\":{namespaces},\"namespaces_opened\":{},\
         \"unowned\":{},\"intervals\":{intervals},\"owner_walks_after\":{},\
         \"owner_walk_before\":{},\"owner_walk_after\":{},\
         \"owner_interval_before\":{},\"owner_interval_after\":{},\
         \"netns_interval_before\":{},\"netns_first_refresh\":{},\"netns_incremental\":{},\
         \"netns_full\":{},\"netns_interval_after\":{}}}",
        ns.by_inode.len(),
        unowned.len(),
        resolver.walks(),
        pair(walk_before),
        pair(walk_after),
        pair(walk_before),
        pair(owners_after),
        pair(ns_before),
        pair(first),
        pair(incremental),
        pair(full),
        pair(amortised),
    );
    println!("{out}");
    if let Ok(path) = std::env::var("GOPHER_SCAN_BENCH_OUT") {
        std::fs::write(path, out).unwrap();
    }
}
