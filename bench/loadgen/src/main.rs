//! Loopback TCP load for the gopher benchmark (`bench/run.sh`).
//!
//! Three loads, each with its server and its clients in this one process, over 127.0.0.1:
//!
//! * `rr`: N persistent connections, each doing a `size`-byte write then a `size`-byte read
//!   (the server echoes), as fast as it can. One op = one round trip.
//! * `churn`: connect, write a few bytes, read the reply, close, repeatedly; the server (a
//!   thread per client thread) accepts, replies and closes. One op = one connection.
//! * `bulk`: one connection streaming 64 KiB writes that the server reads and discards.
//!   One op = one 64 KiB write.
//!
//! Prints one JSON line: load, ops, seconds, `ops_per_sec`, bytes, this process's CPU time
//! (`cpu_ns`: user + sys from `getrusage(RUSAGE_SELF)`, client and server threads), and the
//! whole machine's busy CPU time over the same window from `/proc/stat` (`sys_cpu_ns`, and per
//! CPU in `cpu_busy_ns`): user + nice + system + irq + softirq, so it also holds what a probe
//! costs in the kernel and in its agent, wherever they run. Steal and idle are left out.
//! With `--watch-pid PID`, also the CPU time of that process (the agent or bpftrace) over the
//! window (`watch_cpu_ns`, null without it): the sum of its threads' `schedstat` run times (ns),
//! since `/proc/PID/stat` counts in 10 ms ticks, which at a few seconds and ~1 % of a core is
//! ±40 % of the figure. When a thread went away during the window (its time leaves the sum) or
//! the ticks show more than the sum (a thread born and gone within it), the ticks are used.
//! Pin it with `taskset` to get comparable numbers; `bench/run.sh` does.
//!
//! `churn` also prints its listener's `port` and `server_rx_bytes`, the bytes its server read
//! over every connection it accepted (stragglers after the deadline included): the exact figure
//! the agent's server-role `rx_bytes` for that port must show (`bench/scale.py` checks it).
//!
//! `hold` (see `hold.rs`) is different: it opens many idle connections and keeps them until
//! killed, for `bench/scale.py`.

mod hold;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Loopback TCP load for the gopher benchmark")]
struct Cli {
    /// Also report the CPU time (user + sys, all threads) this process uses during the
    /// measurement: the agent or bpftrace under test.
    #[arg(long, global = true, value_name = "PID")]
    watch_pid: Option<u32>,
    #[command(subcommand)]
    load: Load,
}

#[derive(Subcommand)]
enum Load {
    /// Request/response over persistent connections (ping-pong echo).
    Rr {
        /// Number of persistent connections (one client thread and one server thread each).
        #[arg(long, default_value_t = 16)]
        conns: usize,
        /// Bytes per request and per response.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Measurement length in seconds.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Connect, write, read the reply, close, repeatedly.
    Churn {
        /// Concurrent client threads.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Bytes written per connection (and echoed back).
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// Measurement length in seconds.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Idle connections held until killed (both ends here); prints a ready line.
    Hold {
        /// Listen on 127.0.0.1 ports FIRST-LAST.
        #[arg(long, value_name = "FIRST-LAST")]
        ports: String,
        /// Connections to open, round-robin over the ports (two links each).
        #[arg(long)]
        conns: usize,
        /// Connection i binds source address 127.1.0.0 + SRC_FIRST + i.
        #[arg(long, default_value_t = 0)]
        src_first: u32,
    },
    /// One connection streaming large writes.
    Bulk {
        /// Bytes per write.
        #[arg(long, default_value_t = 64 * 1024)]
        size: usize,
        /// Measurement length in seconds.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
}

/// Counters shared by the client threads.
#[derive(Default)]
struct Totals {
    ops: AtomicU64,
    bytes: AtomicU64,
}

/// CPU time (user + sys) this process has used so far, in nanoseconds.
fn cpu_ns() -> Result<u64> {
    // SAFETY: rusage is plain old data, so all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    let tv_ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
    Ok(tv_ns(usage.ru_utime) + tv_ns(usage.ru_stime))
}

/// Busy CPU time per CPU from `/proc/stat`, in nanoseconds: the "cpu" total first, then cpu0...
fn busy_ns() -> Result<Vec<u64>> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    let ns_per_tick = 1_000_000_000 / hz as u64;
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    stat.lines()
        .filter(|l| l.starts_with("cpu"))
        .map(|l| {
            let f = l
                .split_whitespace()
                .skip(1)
                .map(str::parse::<u64>)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing /proc/stat line {l:?}"))?;
            // user nice system idle iowait irq softirq steal ...
            if f.len() < 7 {
                bail!("short /proc/stat line {l:?}");
            }
            Ok((f[0] + f[1] + f[2] + f[5] + f[6]) * ns_per_tick)
        })
        .collect()
}

/// CPU time (user + sys, all threads) process `pid` has used so far, in nanoseconds.
/// CPU time of a process: its threads' run times (ns) from `schedstat`, and its total in ticks.
struct PidCpu {
    threads: std::collections::HashMap<u32, u64>,
    ticks_ns: u64,
}

impl PidCpu {
    fn read(pid: u32) -> Result<Self> {
        let mut threads = std::collections::HashMap::new();
        let dir = format!("/proc/{pid}/task");
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let entry = entry.with_context(|| format!("reading {dir}"))?;
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            // A thread that exits while we look is simply not counted (see `since`).
            let Ok(s) = std::fs::read_to_string(entry.path().join("schedstat")) else {
                continue;
            };
            let ns = s
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .with_context(|| format!("malformed {dir}/{tid}/schedstat"))?;
            threads.insert(tid, ns);
        }
        Ok(Self {
            threads,
            ticks_ns: pid_ticks_ns(pid)?,
        })
    }

    /// CPU time spent between `earlier` and `self` (see the module doc).
    fn since(&self, earlier: &Self) -> u64 {
        let ticks = self.ticks_ns.saturating_sub(earlier.ticks_ns);
        if earlier
            .threads
            .keys()
            .any(|t| !self.threads.contains_key(t))
        {
            return ticks;
        }
        let precise: u64 = self
            .threads
            .iter()
            .map(|(t, ns)| ns.saturating_sub(earlier.threads.get(t).copied().unwrap_or(0)))
            .sum();
        // Ticks are sampled: allow them two ticks over before taking them instead.
        if ticks > precise + 20_000_000 {
            ticks
        } else {
            precise
        }
    }
}

fn pid_ticks_ns(pid: u32) -> Result<u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    // After ')': state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    // utime(14) stime(15).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        f.get(i)
            .context("short /proc/PID/stat")?
            .parse::<u64>()
            .context("parsing /proc/PID/stat")
    };
    Ok((tick(11)? + tick(12)?) * (1_000_000_000 / hz as u64))
}

fn listen() -> Result<(TcpListener, SocketAddr)> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a listener on 127.0.0.1")?;
    let addr = listener.local_addr().context("listener address")?;
    Ok((listener, addr))
}

/// Reads until `buf` is full. `Ok(false)` on a clean EOF before the first byte.
fn read_full(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Echo server for one connection: read `size` bytes, write them back, until EOF.
fn echo(mut stream: TcpStream, size: usize) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; size];
    while read_full(&mut stream, &mut buf)? {
        stream.write_all(&buf)?;
    }
    Ok(())
}

/// Outcome of a run: what the clients did inside the measured window.
struct Run {
    ops: u64,
    bytes: u64,
    seconds: f64,
    cpu_ns: u64,
    /// Busy time over the window, machine-wide first, then per CPU.
    busy_ns: Vec<u64>,
    /// `churn` only: its listener's port and what its server read in all (see the module doc).
    server: Option<(u16, Arc<AtomicU64>)>,
    /// CPU time of the watched process over the window.
    watch_ns: Option<u64>,
}

/// Starts `clients` client threads running `client` until `seconds` have passed, measuring
/// wall time and process CPU time around them. Each client counts into `totals`.
fn measure<F>(
    watch: Option<u32>,
    clients: usize,
    seconds: f64,
    totals: &Arc<Totals>,
    client: F,
) -> Result<Run>
where
    F: Fn(&AtomicBool, &Totals) -> Result<()> + Send + Sync + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let client = Arc::new(client);
    let watch0 = watch.map(PidCpu::read).transpose()?;
    let busy0 = busy_ns()?;
    let cpu0 = cpu_ns()?;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, totals, client) =
                (Arc::clone(&stop), Arc::clone(totals), Arc::clone(&client));
            thread::spawn(move || client(&stop, &totals))
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    // Snapshot at the deadline, so the stragglers' last op does not skew the rate.
    let (ops, bytes) = (
        totals.ops.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed),
    );
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_ns()?;
    let busy1 = busy_ns()?;
    let watch1 = watch.map(PidCpu::read).transpose()?;
    let busy = busy1
        .iter()
        .zip(&busy0)
        .map(|(b1, b0)| b1.saturating_sub(*b0))
        .collect();
    for h in handles {
        match h.join() {
            Ok(r) => r.context("client thread")?,
            Err(_) => bail!("client thread panicked"),
        }
    }
    Ok(Run {
        ops,
        bytes,
        seconds: elapsed,
        cpu_ns: cpu1 - cpu0,
        busy_ns: busy,
        watch_ns: match (watch0, watch1) {
            (Some(a), Some(b)) => Some(b.since(&a)),
            _ => None,
        },
        server: None,
    })
}

fn rr(watch: Option<u32>, conns: usize, size: usize, seconds: f64) -> Result<Run> {
    let (listener, addr) = listen()?;
    let server = thread::spawn(move || -> Result<()> {
        for _ in 0..conns {
            let (stream, _) = listener.accept().context("accept")?;
            thread::spawn(move || echo(stream, size));
        }
        Ok(())
    });
    // Connect everything before the clock starts: only the ping-pong is measured.
    let streams = (0..conns)
        .map(|_| {
            let s = TcpStream::connect(addr).context("connect")?;
            s.set_nodelay(true)?;
            Ok(s)
        })
        .collect::<Result<Vec<_>>>()?;
    match server.join() {
        Ok(r) => r?,
        Err(_) => bail!("accept thread panicked"),
    }
    let streams = Arc::new(std::sync::Mutex::new(streams));
    let totals = Arc::new(Totals::default());
    measure(watch, conns, seconds, &totals, move |stop, totals| {
        let mut stream = streams
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .pop()
            .context("no stream left")?;
        let mut buf = vec![0x5au8; size];
        while !stop.load(Ordering::Relaxed) {
            stream.write_all(&buf)?;
            if !read_full(&mut stream, &mut buf)? {
                bail!("server closed the connection");
            }
            totals.ops.fetch_add(1, Ordering::Relaxed);
            totals.bytes.fetch_add(2 * size as u64, Ordering::Relaxed);
        }
        stream.shutdown(Shutdown::Both).ok();
        Ok(())
    })
}

fn churn(watch: Option<u32>, clients: usize, size: usize, seconds: f64) -> Result<Run> {
    let (listener, addr) = listen()?;
    let server_rx = Arc::new(AtomicU64::new(0));
    // Server threads, one per client thread (one alone capped the rate near 10 k/s), each:
    // accept, read the request, reply, close (first). Each counts what it read before
    // replying, so once every client has seen its reply and EOF the count is final.
    for _ in 0..clients.max(1) {
        let listener = listener.try_clone().context("cloning the listener")?;
        let rx = Arc::clone(&server_rx);
        thread::spawn(move || -> Result<()> {
            let mut buf = vec![0u8; size];
            loop {
                let (mut stream, _) = listener.accept().context("accept")?;
                stream.set_nodelay(true).ok();
                if matches!(read_full(&mut stream, &mut buf), Ok(true)) {
                    rx.fetch_add(size as u64, Ordering::Relaxed);
                    stream.write_all(&buf).ok();
                }
            }
        });
    }
    let totals = Arc::new(Totals::default());
    let mut run = measure(watch, clients, seconds, &totals, move |stop, totals| {
        let mut buf = vec![0x5au8; size];
        while !stop.load(Ordering::Relaxed) {
            let mut stream = TcpStream::connect(addr).context("connect")?;
            stream.set_nodelay(true)?;
            stream.write_all(&buf)?;
            if !read_full(&mut stream, &mut buf)? {
                bail!("server closed before replying");
            }
            // Wait for the server's close so that it, not us, holds the TIME_WAIT: otherwise
            // tens of thousands of client TIME_WAITs a second exhaust the ephemeral ports.
            let mut eof = [0u8; 1];
            while stream.read(&mut eof)? > 0 {}
            drop(stream);
            totals.ops.fetch_add(1, Ordering::Relaxed);
            totals.bytes.fetch_add(2 * size as u64, Ordering::Relaxed);
        }
        Ok(())
    })?;
    run.server = Some((addr.port(), server_rx));
    Ok(run)
}

fn bulk(watch: Option<u32>, size: usize, seconds: f64) -> Result<Run> {
    let (listener, addr) = listen()?;
    thread::spawn(move || -> Result<()> {
        let (mut stream, _) = listener.accept().context("accept")?;
        let mut buf = vec![0u8; 256 * 1024];
        while stream.read(&mut buf)? > 0 {}
        Ok(())
    });
    let stream = TcpStream::connect(addr).context("connect")?;
    let stream = Arc::new(std::sync::Mutex::new(Some(stream)));
    let totals = Arc::new(Totals::default());
    measure(watch, 1, seconds, &totals, move |stop, totals| {
        let mut stream = stream
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .take()
            .context("no stream")?;
        let buf = vec![0x5au8; size];
        while !stop.load(Ordering::Relaxed) {
            stream.write_all(&buf)?;
            totals.ops.fetch_add(1, Ordering::Relaxed);
            totals.bytes.fetch_add(size as u64, Ordering::Relaxed);
        }
        Ok(())
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (name, run) = match cli.load {
        Load::Rr {
            conns,
            size,
            seconds,
        } => {
            if conns == 0 || size == 0 {
                bail!("--conns and --size must be positive");
            }
            ("rr", rr(cli.watch_pid, conns, size, seconds)?)
        }
        Load::Churn {
            clients,
            size,
            seconds,
        } => {
            if clients == 0 || size == 0 {
                bail!("--clients and --size must be positive");
            }
            ("churn", churn(cli.watch_pid, clients, size, seconds)?)
        }
        Load::Hold {
            ports,
            conns,
            src_first,
        } => return hold::hold(hold::parse_ports(&ports)?, conns, src_first),
        Load::Bulk { size, seconds } => {
            if size == 0 {
                bail!("--size must be positive");
            }
            ("bulk", bulk(cli.watch_pid, size, seconds)?)
        }
    };
    let ops_per_sec = run.ops as f64 / run.seconds;
    let cpu_ns_per_op = if run.ops == 0 {
        0.0
    } else {
        run.cpu_ns as f64 / run.ops as f64
    };
    let sys_cpu_ns = run.busy_ns.first().copied().unwrap_or(0);
    let per_cpu: Vec<String> = run.busy_ns.iter().skip(1).map(u64::to_string).collect();
    let watch = run
        .watch_ns
        .map_or_else(|| "null".to_owned(), |n| n.to_string());
    let server = run.server.as_ref().map_or_else(String::new, |(port, rx)| {
        format!(
            ",\"port\":{port},\"server_rx_bytes\":{}",
            rx.load(Ordering::Relaxed)
        )
    });
    println!(
        "{{\"load\":\"{name}\",\"ops\":{},\"seconds\":{:.6},\"ops_per_sec\":{ops_per_sec:.1},\
         \"bytes\":{},\"cpu_ns\":{},\"cpu_ns_per_op\":{cpu_ns_per_op:.1},\
         \"sys_cpu_ns\":{sys_cpu_ns},\"cpu_busy_ns\":[{}],\"watch_cpu_ns\":{watch}{server}}}",
        run.ops,
        run.seconds,
        run.bytes,
        run.cpu_ns,
        per_cpu.join(",")
    );
    // Server and client threads may still be blocked in accept/read: don't wait for them.
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::PidCpu;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    #[test]
    fn a_process_cpu_time_is_read_to_the_nanosecond() {
        let pid = std::process::id();
        let a = PidCpu::read(pid).expect("read");
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let b = PidCpu::read(pid).expect("read");
        let ns = b.since(&a);
        assert!((150_000_000..400_000_000).contains(&ns), "{ns} ns");
        // Not a multiple of a tick: the threads' own run times, not the 10 ms ticks.
        assert_ne!(ns % 10_000_000, 0, "{ns} ns");
    }

    #[test]
    fn a_thread_gone_during_the_window_falls_back_to_ticks() {
        let a = PidCpu {
            threads: HashMap::from([(1, 100), (2, 500)]),
            ticks_ns: 0,
        };
        let b = PidCpu {
            threads: HashMap::from([(1, 300)]),
            ticks_ns: 10_000_000,
        };
        assert_eq!(b.since(&a), 10_000_000);
        let c = PidCpu {
            threads: HashMap::from([(1, 300), (2, 600), (3, 50)]),
            ticks_ns: 0,
        };
        assert_eq!(c.since(&a), 350);
    }
}
