//! systemd's notification protocol (sd_notify(3)), spoken directly: one datagram per state
//! change to the unix socket named by `$NOTIFY_SOCKET`. Outside systemd (no such variable) every
//! call is a no-op, so the agent behaves the same when run by hand or in a container.
//!
//! The unit is `Type=notify`: `READY=1` is sent once /metrics is served, so that `systemctl
//! start` returns only when the agent can be scraped; `STOPPING=1` when shutdown begins; and,
//! with `WatchdogSec=`, `WATCHDOG=1` at half the period systemd asks for (`$WATCHDOG_USEC`), as
//! sd_watchdog_enabled(3) recommends, so one late tick does not get the agent killed.
//!
//! The pings are proof of progress, not of a timer: each one is sent only while every loop
//! registered with [`Liveness`] (ingest, the /metrics server, each probe's supervisor, the Kafka
//! sink) has beaten within its bound. A stuck loop means no ping, a `STATUS=` line and an error
//! naming it, and systemd restarts the agent after `WatchdogSec`.
//!
//! Our own, not the `sd-notify` crate: that one reads `$NOTIFY_SOCKET` on every call (a test can
//! aim it at its own socket only by changing the process environment, unsound once threads run)
//! and ends every assignment with a newline, where this sends what the tests pin, byte for byte.

use std::{
    ffi::OsStr,
    io,
    os::unix::{
        ffi::OsStrExt as _,
        net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

use crate::supervise::{Liveness, Stuck};

/// Where notifications go; `None` inside means "not supervised by systemd".
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` of this process. A socket
    /// that cannot be used is logged and notifications are off: systemd then times the start
    /// out, which points at the cause better than the agent refusing to run.
    pub fn from_env() -> Self {
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    /// [`Self::from_env`] with the environment passed in (testable without touching the
    /// process environment, which is not thread-safe to change).
    pub fn from_vars(
        socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> Self {
        let target = socket.filter(|s| !s.is_empty()).and_then(|path| {
            match address(path).and_then(|addr| Ok((UnixDatagram::unbound()?, addr))) {
                Ok(target) => Some(target),
                Err(e) => {
                    tracing::warn!(socket = ?path, "NOTIFY_SOCKET unusable, not notifying systemd: {e}");
                    None
                }
            }
        });
        // The watchdog settings may have been inherited from a parent that systemd watches:
        // they are ours only when WATCHDOG_PID is absent or names this process.
        let ours = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(own_pid));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && ours && target.is_some())
            .map(Duration::from_micros);
        Self { target, watchdog }
    }

    /// True when `$NOTIFY_SOCKET` was set and usable.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The interval at which to send `WATCHDOG=1`: half the period systemd expects.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|period| period / 2)
    }

    /// Sends one notification (newline-separated `KEY=VALUE` assignments). Failures are logged,
    /// never fatal: losing a notification must not take the monitoring down.
    pub fn notify(&self, state: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
            tracing::warn!(state, "notifying systemd failed: {e}");
        }
    }

    /// `READY=1`: the agent serves /metrics.
    pub fn ready(&self) {
        self.notify(&format!(
            "READY=1\nSTATUS=serving /metrics\nMAINPID={}",
            std::process::id()
        ));
    }

    /// `STOPPING=1`: shutdown has begun (probes are being stopped, Kafka flushed).
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping");
    }

    /// Starts the watchdog pings on the current tokio runtime, if systemd asked for them: one
    /// per interval while no loop of `liveness` is stuck. They come from the runtime that runs
    /// those loops, so a wedged runtime stops them too. The task ends when the runtime does.
    pub fn spawn_watchdog(
        self: &std::sync::Arc<Self>,
        liveness: Liveness,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let interval = self.watchdog_interval()?;
        let this = std::sync::Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut was_stuck = false;
            loop {
                tick.tick().await;
                let stuck = liveness.stuck();
                if stuck.is_empty() {
                    if was_stuck {
                        tracing::warn!("every loop makes progress again; watchdog pings resume");
                        this.notify("STATUS=serving /metrics");
                    }
                    this.notify("WATCHDOG=1");
                } else {
                    let list = describe(&stuck);
                    // Every tick: the journal shows how long it has lasted until systemd acts.
                    tracing::error!(stuck = %list, "loops stuck; not feeding the systemd watchdog");
                    this.notify(&format!("STATUS=stuck: {list}"));
                }
                was_stuck = !stuck.is_empty();
            }
        }))
    }
}

/// `ingest (75s), probe tcp (61s)`.
fn describe(stuck: &[Stuck]) -> String {
    stuck
        .iter()
        .map(|s| format!("{} ({}s)", s.name, s.since.as_secs()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `NOTIFY_SOCKET` value as a socket address: a path, or `@name` for the abstract namespace.
fn address(path: &OsStr) -> io::Result<SocketAddr> {
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        return SocketAddr::from_abstract_name(name);
    }
    if bytes.first() != Some(&b'/') {
        // vsock: addresses and relative paths are not something systemd gives a service.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "expected an absolute path or @abstract name",
        ));
    }
    SocketAddr::from_pathname(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::Arc;

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn listener() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, path, socket)
    }

    #[test]
    fn ready_and_stopping_reach_a_real_socket() {
        let (_dir, path, socket) = listener();
        let n = Notifier::from_vars(Some(path.as_os_str()), None, None, 1);
        assert!(n.enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready();
        let ready = recv(&socket);
        assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
        assert!(
            ready
                .lines()
                .any(|l| l == format!("MAINPID={}", std::process::id())),
            "{ready:?}"
        );
        n.stopping();
        assert_eq!(recv(&socket).lines().next(), Some("STOPPING=1"));
    }

    #[test]
    fn abstract_socket_names_work() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("gopher-notify-test-{}", std::process::id());
        let socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::from_vars(Some(OsStr::new(&format!("@{name}"))), None, None, 1);
        n.notify("STATUS=hello");
        assert_eq!(recv(&socket), "STATUS=hello");
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_pings_at_half_the_period() {
        let (_dir, path, socket) = listener();
        // 2 s period: pings every second, the first one at once.
        let n = Arc::new(Notifier::from_vars(
            Some(path.as_os_str()),
            Some("2000000"),
            Some("42"),
            42,
        ));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        let task = n.spawn_watchdog(Liveness::new()).unwrap();
        // Paused clock: the sleep advances time from timer to timer, running the pings due.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        socket.set_nonblocking(true).unwrap();
        let mut pings = 0;
        let mut buf = [0u8; 64];
        while let Ok(n) = socket.recv(&mut buf) {
            assert_eq!(&buf[..n], b"WATCHDOG=1");
            pings += 1;
        }
        task.abort();
        // Ticks at 0, 1, 2 and 3 s of paused time.
        assert_eq!(pings, 4, "one ping per half period");
    }

    /// Every datagram waiting on `socket`, without blocking.
    fn drain(socket: &UnixDatagram) -> Vec<String> {
        socket.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        socket.set_nonblocking(false).unwrap();
        got
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_loop_stops_the_pings_until_it_moves_again() {
        let (_dir, path, socket) = listener();
        let n = Arc::new(Notifier::from_vars(
            Some(path.as_os_str()),
            Some("2000000"),
            None,
            1,
        ));
        let live = Liveness::new();
        let busy = live.register("ingest", Duration::from_millis(2500));
        let stalled = live.register("web", Duration::from_millis(2500));
        // `ingest` beats every half second throughout; `web` beats until 2 s, then stops.
        let beating = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                busy.beat();
            }
        });
        let task = n.spawn_watchdog(live.clone()).unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stalled.beat();
        }
        // Ticks at 0, 1 and 2 s (web beat at 2 s): three pings.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(drain(&socket), ["WATCHDOG=1"; 3]);
        // Pings go on while web is within its 2.5 s bound (ticks at 3 and 4 s), then stop.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let got = drain(&socket);
        let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
        assert_eq!(pings, 2, "{got:?}");
        assert!(
            got.last().unwrap().starts_with("STATUS=stuck: web ("),
            "{got:?}"
        );
        assert!(!got.iter().any(|m| m.contains("ingest")), "{got:?}");
        // web moves again: pings resume at the next tick.
        stalled.beat();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let got = drain(&socket);
        assert!(got.iter().any(|m| m == "WATCHDOG=1"), "{got:?}");
        task.abort();
        beating.abort();
    }

    #[test]
    fn watchdog_of_another_process_or_without_socket_is_ignored() {
        let (_dir, path, _socket) = listener();
        let other = Notifier::from_vars(Some(path.as_os_str()), Some("2000000"), Some("7"), 42);
        assert_eq!(other.watchdog_interval(), None);
        let unsupervised = Notifier::from_vars(None, Some("2000000"), None, 42);
        assert!(!unsupervised.enabled());
        assert_eq!(unsupervised.watchdog_interval(), None);
        // No socket: a no-op, not an error.
        unsupervised.ready();
        let bad = Notifier::from_vars(Some(OsStr::new("relative/path")), None, None, 1);
        assert!(!bad.enabled());
    }
}
