//! Per-program eBPF cost as self-metrics: the tcp probe's programs' kernel run time and run
//! count (`bpf_prog_info`), read back from the real agent while the kernel's statistics are on.
//! The test turns them on the way that leaves no trace on the host: a `BPF_ENABLE_STATS`
//! file descriptor, which keeps them on only while it is open (unlike the
//! `kernel.bpf_stats_enabled` sysctl an operator would set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::time::Duration;

use common::{Agent, Sample, is_root, require};

/// `BPF_ENABLE_STATS` (linux/bpf.h) with `BPF_STATS_RUN_TIME`: statistics stay on while the
/// returned fd is open. None when the kernel refuses (no privilege, kernel < 5.8).
fn enable_bpf_stats() -> Option<OwnedFd> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    // union bpf_attr { struct { __u32 type; } enable_stats; ... }; BPF_STATS_RUN_TIME = 0.
    let attr = [0u8; 128];
    // SAFETY: bpf(2) reads `size` bytes of `attr`, which is that long and zeroed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: a new fd the kernel just gave us, owned from here.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Connections of our own, so that the sock_ops program (and, with the connect hooks, the
/// connect and sock_release ones) run.
fn connections(n: usize) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        }
    });
    for _ in 0..n {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
    }
    server.join().unwrap();
}

fn per_program(samples: &[Sample], name: &str) -> Vec<(String, f64)> {
    samples
        .iter()
        .filter(|s| s.name == name && s.label("probe") == "tcp")
        .map(|s| (s.label("program").to_owned(), s.value))
        .collect()
}

#[test]
fn each_tcp_program_reports_its_run_time_and_count() {
    if !require(is_root(), "root (the tcp probe's eBPF)") {
        return;
    }
    let Some(_stats) = enable_bpf_stats() else {
        require(false, "BPF_ENABLE_STATS (kernel >= 5.8, CAP_SYS_ADMIN)");
        return;
    };
    let agent = Agent::start("[[probes]]\nname = \"tcp\"\nswitch = \"on\"\ninterval = 1\n");
    // The destroy hook: one run per socket, so two per connection with both ends here.
    let destroy = |v: &[(String, f64)]| {
        v.iter()
            .find(|(p, _)| p.starts_with("gopher_tcp_dest"))
            .map(|(_, n)| *n)
    };
    let before = agent.wait_for(Duration::from_secs(30), "run stats", |s| {
        destroy(&per_program(s, "gopher_ebpf_program_runs_total")).is_some()
    });
    connections(50);
    let after = agent.wait_for(Duration::from_secs(30), "destroy runs counted", |s| {
        let runs = destroy(&per_program(s, "gopher_ebpf_program_runs_total")).unwrap_or(0.0);
        let was = destroy(&per_program(&before, "gopher_ebpf_program_runs_total")).unwrap_or(0.0);
        // 50 connections of ours, both ends here; the host's others only add to that.
        runs >= was + 100.0
    });
    let runs = per_program(&after, "gopher_ebpf_program_runs_total");
    let seconds = per_program(&after, "gopher_ebpf_program_run_seconds_total");
    // Every attached program has both series: the connect and release hooks too.
    for hook in ["gopher_connect4", "gopher_sock_rel", "gopher_tcp_dest"] {
        assert!(
            runs.iter().any(|(p, n)| p.starts_with(hook) && *n > 0.0),
            "{hook}: {runs:?}"
        );
    }
    for (program, n) in &runs {
        let secs = seconds
            .iter()
            .find(|(p, _)| p == program)
            .unwrap_or_else(|| panic!("no run time for {program}: {seconds:?}"))
            .1;
        // Time follows count: a program that ran took time, and well under 1 ms a run.
        if *n > 0.0 {
            assert!(
                secs > 0.0 && secs / n < 1e-3,
                "{program}: {secs} s / {n} runs"
            );
        }
    }
}
