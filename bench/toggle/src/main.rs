//! Round-trip latency of gopher's control channel (`bench/control.sh`).
//!
//! Against a running agent whose `tcp` probe and one extension probe are on, repeats N rounds of
//! `SetProbe` off → on for each of them over one tonic channel, timing each call from request to
//! answer (the agent answers once the change is applied), plus a no-op `SetProbe` (the switch it
//! already has) and a `ListProbes`. After each step, untimed, it checks that the change really
//! happened without asking the agent:
//!
//! * tcp: `bpftool cgroup show <cgroup2 mount>` lists none of the `gopher_` programs the agent had
//!   attached (off), or at least one new one (on: the sock_ops program; the connect and release
//!   hooks too on kernels where it cannot record owners). Programs of other agents on the host that
//!   were there before are told apart by their IDs.
//! * extension: the pid the agent reported is gone from `/proc` (off), or the new one is there and
//!   is not a zombie (on).
//!
//! One untimed round comes first (it also learns which attached programs are this agent's).
//! Prints a Markdown table (p50 / p95 / max per operation) on stdout, progress on stderr.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use gopher_api::control_v1::{
    self as pb, RunState, Switch, probe_control_client::ProbeControlClient,
};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(about = "Times SetProbe off/on round trips of a running gopher agent")]
struct Args {
    /// The agent's control address.
    #[arg(long, default_value = "http://127.0.0.1:8889")]
    addr: String,
    /// Timed rounds (each: tcp off, no-op, tcp on, extension off, extension on, list).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// The native probe with cgroup eBPF programs.
    #[arg(long, default_value = "tcp")]
    tcp: String,
    /// The extension probe.
    #[arg(long, default_value = "tbench")]
    ext: String,
    /// How long to wait for both probes to run before the first round.
    #[arg(long, default_value_t = 30)]
    wait_seconds: u64,
    /// Untimed pause before each timed step (0: back to back).
    #[arg(long, default_value_t = 0)]
    settle_ms: u64,
}

/// One timed operation's samples.
struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            samples: Vec::new(),
        }
    }

    /// Nearest-rank percentile, in milliseconds.
    fn pct(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_unstable();
        if s.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
        ms(s[rank.clamp(1, s.len()) - 1])
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Bench {
    client: ProbeControlClient<Channel>,
    cgroup: PathBuf,
    tcp: String,
    ext: String,
    /// This agent's attached `gopher_` programs, learnt when tcp comes on.
    ours: BTreeSet<u32>,
}

impl Bench {
    async fn set(&mut self, name: &str, switch: Switch) -> Result<(Duration, pb::Probe)> {
        let req = pb::SetProbeRequest {
            name: name.to_owned(),
            switch: Some(switch as i32),
            interval_seconds: None,
            params: None,
        };
        let t0 = Instant::now();
        let p = self
            .client
            .set_probe(req)
            .await
            .with_context(|| format!("SetProbe {name} {switch:?}"))?
            .into_inner();
        Ok((t0.elapsed(), p))
    }

    /// tcp off, timed; then none of this agent's programs may stay attached.
    async fn tcp_off(&mut self) -> Result<Duration> {
        let before = gopher_progs(&self.cgroup)?;
        let (d, p) = self.set(&self.tcp.clone(), Switch::Off).await?;
        ensure!(
            p.state == RunState::Stopped as i32,
            "tcp off: state {}",
            p.state
        );
        let after = gopher_progs(&self.cgroup)?;
        if self.ours.is_empty() {
            // First step: the agent started with tcp on; its programs are the ones that left.
            self.ours = before.difference(&after).copied().collect();
            ensure!(
                !self.ours.is_empty(),
                "tcp off: only {} gopher_ programs left {} (before {before:?}, after {after:?})",
                self.ours.len(),
                self.cgroup.display()
            );
        }
        let left: Vec<_> = self.ours.intersection(&after).collect();
        ensure!(left.is_empty(), "tcp off: programs {left:?} still attached");
        Ok(d)
    }

    /// tcp on, timed; then at least one new `gopher_` program must be attached.
    async fn tcp_on(&mut self) -> Result<Duration> {
        let before = gopher_progs(&self.cgroup)?;
        let (d, p) = self.set(&self.tcp.clone(), Switch::On).await?;
        ensure!(
            p.state == RunState::Running as i32,
            "tcp on: state {} ({})",
            p.state,
            p.reason
        );
        let after = gopher_progs(&self.cgroup)?;
        self.ours = after.difference(&before).copied().collect();
        ensure!(
            !self.ours.is_empty(),
            "tcp on: {} new gopher_ programs on {} (before {before:?}, after {after:?})",
            self.ours.len(),
            self.cgroup.display()
        );
        Ok(d)
    }

    /// Extension off, timed; then the process it had must be gone.
    async fn ext_off(&mut self) -> Result<Duration> {
        let pid = self.running_pid().await?;
        let (d, p) = self.set(&self.ext.clone(), Switch::Off).await?;
        ensure!(
            p.state == RunState::Stopped as i32,
            "ext off: state {}",
            p.state
        );
        ensure!(
            p.pid.is_none(),
            "ext off: agent still reports pid {:?}",
            p.pid
        );
        ensure!(!alive(pid), "ext off: pid {pid} still in /proc");
        Ok(d)
    }

    /// Extension on, timed; then the pid it answers with must be a live process.
    async fn ext_on(&mut self) -> Result<Duration> {
        let (d, p) = self.set(&self.ext.clone(), Switch::On).await?;
        ensure!(
            p.state == RunState::Running as i32,
            "ext on: state {} ({})",
            p.state,
            p.reason
        );
        let pid = p.pid.context("ext on: no pid in the answer")?;
        ensure!(alive(pid), "ext on: pid {pid} not in /proc");
        Ok(d)
    }

    async fn running_pid(&mut self) -> Result<u32> {
        let p = self
            .client
            .get_probe(pb::GetProbeRequest {
                name: self.ext.clone(),
            })
            .await?
            .into_inner();
        let pid = p.pid.context("extension probe has no pid")?;
        ensure!(alive(pid), "extension pid {pid} not in /proc before off");
        Ok(pid)
    }

    /// The switch the probe already has: the agent changes nothing.
    async fn noop(&mut self) -> Result<Duration> {
        let (d, p) = self.set(&self.tcp.clone(), Switch::On).await?;
        ensure!(
            p.state == RunState::Running as i32,
            "no-op: state {}",
            p.state
        );
        Ok(d)
    }

    async fn list(&mut self) -> Result<Duration> {
        let t0 = Instant::now();
        let n = self
            .client
            .list_probes(pb::ListProbesRequest {})
            .await?
            .into_inner()
            .probes
            .len();
        let d = t0.elapsed();
        ensure!(n >= 2, "ListProbes: {n} probes");
        Ok(d)
    }

    /// Until both probes run (the agent was just started).
    async fn wait_running(&mut self, limit: Duration) -> Result<()> {
        let began = Instant::now();
        loop {
            let probes = self
                .client
                .list_probes(pb::ListProbesRequest {})
                .await?
                .into_inner()
                .probes;
            let running = |n: &str| {
                probes
                    .iter()
                    .any(|p| p.name == n && p.state == RunState::Running as i32)
            };
            if running(&self.tcp) && running(&self.ext) {
                return Ok(());
            }
            if began.elapsed() > limit {
                bail!(
                    "{} and {} not both running after {limit:?}",
                    self.tcp,
                    self.ext
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The cgroup2 mount point, from /proc/mounts (unified: /sys/fs/cgroup; hybrid: …/unified).
fn cgroup2() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
        })
        .context("no cgroup2 mount in /proc/mounts")
}

/// IDs of the `gopher_` programs attached to `cgroup`, as `bpftool cgroup show` lists them
/// (`ID AttachType AttachFlags Name`, the flags column possibly empty: the name is last).
fn gopher_progs(cgroup: &Path) -> Result<BTreeSet<u32>> {
    let out = Command::new("bpftool")
        .arg("cgroup")
        .arg("show")
        .arg(cgroup)
        .output()
        .context("running bpftool")?;
    ensure!(
        out.status.success(),
        "bpftool cgroup show {}: {}",
        cgroup.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let id = f.first()?.parse().ok()?;
            f.last()?.starts_with("gopher_").then_some(id)
        })
        .collect())
}

/// The process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = ProbeControlClient::connect(args.addr.clone())
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let mut b = Bench {
        client,
        cgroup: cgroup2()?,
        tcp: args.tcp,
        ext: args.ext,
        ours: BTreeSet::new(),
    };
    b.wait_running(Duration::from_secs(args.wait_seconds))
        .await?;
    // Untimed round: warms the channel and learns this agent's program IDs.
    b.tcp_off().await?;
    b.tcp_on().await?;
    b.ext_off().await?;
    b.ext_on().await?;
    let mut s = [
        Series::new("tcp off"),
        Series::new("tcp on"),
        Series::new("extension off"),
        Series::new("extension on"),
        Series::new("no-op SetProbe"),
        Series::new("ListProbes"),
    ];
    let settle = Duration::from_millis(args.settle_ms);
    for round in 1..=args.rounds {
        for (i, series) in s.iter_mut().enumerate() {
            tokio::time::sleep(settle).await;
            let d = match i {
                0 => b.tcp_off().await?,
                1 => b.tcp_on().await?,
                2 => b.ext_off().await?,
                3 => b.ext_on().await?,
                4 => b.noop().await?,
                _ => b.list().await?,
            };
            series.samples.push(d);
        }
        eprintln!(
            "toggle-bench: round {round}/{}: tcp off {:.1} on {:.1}, ext off {:.1} on {:.1} ms \
             ({} programs)",
            args.rounds,
            ms(s[0].samples[round - 1]),
            ms(s[1].samples[round - 1]),
            ms(s[2].samples[round - 1]),
            ms(s[3].samples[round - 1]),
            b.ours.len()
        );
    }
    println!("| operation | p50 ms | p95 ms | max ms |");
    println!("|---|---:|---:|---:|");
    for x in &s {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} |",
            x.name,
            x.pct(50.0),
            x.pct(95.0),
            x.pct(100.0)
        );
    }
    Ok(())
}
