//! `hold`: many idle loopback connections with both ends in this process, kept open until the
//! process is killed (`bench/scale.py` measures what idle links cost the agent).
//!
//! The agent keys a link by (process, role, client address, server address, server port), not
//! by the client port, so connections only make distinct links if their (client address,
//! server port) pairs differ. Each connection therefore binds its own source address,
//! 127.1.0.0 + index (127.1.x.y, then 127.2.x.y…: all of 127/8 is local), and they go
//! round-robin over this process's listeners on 127.0.0.1. One connection is two links: the
//! client end's and the server end's.
//!
//! A process may hold at most 20,000 files here (hard limit), and one connection costs two
//! (both ends are here), so the script runs several `hold` processes with disjoint port ranges
//! and source indexes. The soft limit is raised to the hard one first.
//!
//! Prints one JSON line once every connection is accepted, then sleeps until killed.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// First source address: connection `i` binds `SRC_BASE + src_first + i`.
const SRC_BASE: u32 = u32::from_be_bytes([127, 1, 0, 0]);

/// Parses `A-B` (inclusive) or a single port.
pub fn parse_ports(s: &str) -> Result<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a
        .trim()
        .parse()
        .with_context(|| format!("port range {s:?}"))?;
    let b: u16 = b
        .trim()
        .parse()
        .with_context(|| format!("port range {s:?}"))?;
    if a == 0 || b < a {
        bail!("port range {s:?}: expected FIRST-LAST with 0 < FIRST <= LAST");
    }
    Ok((a, b))
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit with cur <= max.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(lim.rlim_cur)
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data, so all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    sa
}

/// A blocking connection from `src` (port chosen by the kernel at connect time) to `dst`.
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> Result<TcpStream> {
    // SAFETY: plain socket(2) call; the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // Without it, bind(addr, 0) reserves an ephemeral port per socket, and 28k ports run out
    // long before 50k connections; with it the port is picked at connect(), per 4-tuple.
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value is a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            raw,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt(IP_BIND_ADDRESS_NO_PORT)");
    }
    let sa = sockaddr(SocketAddrV4::new(src, 0));
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sa` is a valid sockaddr_in of `len` bytes.
    if unsafe { libc::bind(raw, (&raw const sa).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bind {src}"));
    }
    let da = sockaddr(dst);
    // SAFETY: `da` is a valid sockaddr_in of `len` bytes.
    if unsafe { libc::connect(raw, (&raw const da).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("connect {src} -> {dst}"));
    }
    Ok(TcpStream::from(fd))
}

/// Accepts on every (non-blocking) listener until `want` connections are in, or `stop`.
fn accept_all(listeners: &[TcpListener], want: usize, stop: &AtomicBool) -> Result<Vec<TcpStream>> {
    let mut got = Vec::with_capacity(want);
    while got.len() < want && !stop.load(Ordering::Relaxed) {
        let before = got.len();
        for l in listeners {
            loop {
                match l.accept() {
                    Ok((s, _)) => got.push(s),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("accept"),
                }
            }
        }
        if got.len() == before {
            thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(got)
}

/// Listens on `ports`, opens `conns` connections to them from source indexes `src_first..`,
/// prints the ready line, and holds everything until killed.
pub fn hold(ports: (u16, u16), conns: usize, src_first: u32) -> Result<()> {
    let t0 = Instant::now();
    let nofile = raise_nofile()?;
    let nports = usize::from(ports.1 - ports.0) + 1;
    let need = nports + 2 * conns + 16;
    if need as u64 > nofile {
        bail!("{conns} connections and {nports} listeners need ~{need} files, limit is {nofile}");
    }
    // 127.1.0.0 + index must stay inside 127/8.
    if u64::from(src_first) + conns as u64 > (1 << 24) - (1 << 16) {
        bail!("source indexes run past 127.255.255.255");
    }
    let listeners = (ports.0..=ports.1)
        .map(|p| {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, p))
                .with_context(|| format!("listening on 127.0.0.1:{p}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .collect::<Result<Vec<_>>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    // The listeners stay open with the connections, as a real server's do: the agent tells a
    // server socket that predates it from a client by the listener on its port.
    let acceptor = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || accept_all(&listeners, conns, &stop).map(|s| (listeners, s)))
    };
    let mut clients = Vec::with_capacity(conns);
    for i in 0..conns {
        let src = Ipv4Addr::from(SRC_BASE + src_first + i as u32);
        let port = ports.0 + (i % nports) as u16;
        match connect_from(src, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
            Ok(s) => clients.push(s),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e.context(format!("connection {i} of {conns}")));
            }
        }
    }
    let (listeners, servers) = match acceptor.join() {
        Ok(r) => r?,
        Err(_) => bail!("accept thread panicked"),
    };
    println!(
        "{{\"hold\":\"ready\",\"pid\":{},\"listeners\":{nports},\"conns\":{},\"accepted\":{},\
         \"src_first\":{src_first},\"seconds\":{:.3}}}",
        std::process::id(),
        clients.len(),
        servers.len(),
        t0.elapsed().as_secs_f64()
    );
    std::io::stdout().flush().ok();
    // Idle until killed: no reads, no writes, no timers.
    loop {
        thread::park();
        std::hint::black_box((&clients, &servers, &listeners));
    }
}
