//! Network namespaces: which exist, and one sock_diag socket inside each.
//!
//! sock_diag answers only for the namespace its socket lives in, so the agent keeps one socket
//! per namespace, created by a short-lived thread that `setns()`s into it (a socket stays in the
//! namespace it was created in). Sockets of vanished namespaces are closed, because an open
//! socket would keep a dead namespace alive. The socket is also the namespace's handle for the
//! socket iterator (`iter.rs` gets the namespace back from it with `SIOCGSKNS`).
//!
//! Discovery follows change: `/proc` is listed every refresh (one cheap directory read), but
//! `/proc/<pid>/ns/net` is looked at only for pids new in the last [`YOUNG_REFRESHES`] refreshes
//! (a container runtime forks, then the child unshares: a pid first seen in the host namespace
//! may move at once), so a node with 50 k processes costs 50 k stats once, not every interval.
//! A namespace is closed as soon as the last
//! process known in it exits and no pin (`/run/netns`, …) holds it. What a known pid cannot
//! tell us without a stat, a `setns()`/`unshare()` into another namespace by a running process,
//! is caught by a full re-walk every [`FULL_WALK_EVERY`].
//!
//! A namespace that exists but cannot be opened (pin file that is not a namespace, setns or
//! socket refused) is reported once per failure episode (a [`Failure`] for the caller to log
//! and count), kept in [`Namespaces::unreachable`] so that the caller knows its dump is
//! incomplete, and retried at the next full re-walk.

use rustc_hash::FxHashMap as HashMap;
use std::{
    fs::{File, OpenOptions},
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// SO_NETNS_COOKIE (Linux 5.14): the same cookie `bpf_get_netns_cookie` returns.
const SO_NETNS_COOKIE: i32 = 71;
/// How often every known process's namespace is looked at again, and unreachable ones retried.
pub const FULL_WALK_EVERY: Duration = Duration::from_secs(30);
/// Refreshes after the first that look at a new pid's namespace again.
pub const YOUNG_REFRESHES: u8 = 2;
/// `ip netns add` and CNI plugins pin namespaces in /run/netns, Docker in /run/docker/netns; a
/// pinned namespace may have no process left in it while its sockets still close.
const PIN_DIRS: [&str; 2] = ["/run/netns", "/run/docker/netns"];

pub struct Namespace {
    pub inode: u64,
    pub cookie: u64,
    pub diag: OwnedFd,
}

/// A namespace that could not be opened, newly so at this refresh.
#[derive(Debug)]
pub struct Failure {
    pub inode: u64,
    pub path: PathBuf,
    /// `open` (the namespace file), `setns` (refused, or not a namespace), `socket` (sock_diag
    /// socket inside it).
    pub reason: &'static str,
    pub error: io::Error,
}

/// Where a namespace can be opened from.
#[derive(Debug, Clone)]
enum Source {
    Pid(u32),
    Path(PathBuf),
}

impl Source {
    fn path(&self) -> PathBuf {
        match self {
            Self::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            Self::Path(p) => p.clone(),
        }
    }
}

pub struct Namespaces {
    pub by_inode: HashMap<u64, Namespace>,
    /// Netns cookie → inode of the namespaces opened so far: close events name their namespace
    /// by cookie, thousands a second under churn, on a node with hundreds of namespaces. An
    /// entry whose inode left `by_inode` is stale and ignored (then dropped at a refresh).
    by_cookie: HashMap<u64, u64>,
    /// Namespaces that exist but could not be opened: inode → path tried.
    unreachable: HashMap<u64, PathBuf>,
    /// pid → its namespace inode (0: none readable, e.g. a zombie) and how many more refreshes
    /// look at it again.
    pids: HashMap<u32, (u64, u8)>,
    pin_dirs: Vec<PathBuf>,
    last_full: Option<Instant>,
    /// `/proc/<pid>/ns/net` stats done so far (the cost a refresh is proportional to).
    stats: u64,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self::with_pin_dirs(PIN_DIRS.iter().map(PathBuf::from).collect())
    }
}

fn ns_inode(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

impl Namespaces {
    pub fn with_pin_dirs(pin_dirs: Vec<PathBuf>) -> Self {
        Self {
            by_inode: HashMap::default(),
            by_cookie: HashMap::default(),
            unreachable: HashMap::default(),
            pids: HashMap::default(),
            pin_dirs,
            last_full: None,
            stats: 0,
        }
    }

    /// Every network namespace reachable through a process or a pinned namespace file, with
    /// where to open it. Stats only pids not seen before unless `full`.
    fn discover(&mut self, full: bool) -> HashMap<u64, Source> {
        let mut listed: Vec<u32> = std::fs::read_dir("/proc")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        listed.sort_unstable();
        self.pids.retain(|pid, _| listed.binary_search(pid).is_ok());
        if full {
            for (_, look_again) in self.pids.values_mut() {
                *look_again = (*look_again).max(1);
            }
        }
        // At the first walk every process is as old as the agent knows.
        let young = if self.pids.is_empty() {
            1
        } else {
            YOUNG_REFRESHES + 1
        };
        let mut found: HashMap<u64, Source> = HashMap::default();
        if let Ok(own) = ns_inode(Path::new("/proc/self/ns/net")) {
            found.insert(own, Source::Path(PathBuf::from("/proc/self/ns/net")));
        }
        for pid in listed {
            let entry = self.pids.entry(pid).or_insert((0, young));
            if entry.1 > 0 {
                entry.1 -= 1;
                entry.0 = ns_inode(&Source::Pid(pid).path()).unwrap_or(0);
                self.stats += 1;
            }
            let ino = entry.0;
            if ino != 0 {
                found.entry(ino).or_insert(Source::Pid(pid));
            }
        }
        // Pins are few: stat them all, so that a re-pinned name is seen at once.
        for pins in &self.pin_dirs {
            if let Ok(dir) = std::fs::read_dir(pins) {
                for entry in dir.flatten() {
                    if let Ok(ino) = ns_inode(&entry.path()) {
                        found.entry(ino).or_insert(Source::Path(entry.path()));
                    }
                }
            }
        }
        found
    }

    /// Opens sockets in new namespaces and closes those of vanished ones. Returns the
    /// namespaces that newly failed to open, for the caller to log and count; a process that exits between
    /// discovery and open is not a failure.
    pub fn refresh(&mut self) -> Vec<Failure> {
        let full = self
            .last_full
            .is_none_or(|t| t.elapsed() >= FULL_WALK_EVERY);
        if full {
            self.last_full = Some(Instant::now());
        }
        let current = self.discover(full);
        self.by_inode.retain(|ino, _| current.contains_key(ino));
        let by_inode = &self.by_inode;
        self.by_cookie.retain(|_, ino| by_inode.contains_key(ino));
        self.unreachable.retain(|ino, _| current.contains_key(ino));
        let mut failures = Vec::new();
        for (ino, source) in current {
            if self.by_inode.contains_key(&ino) || (!full && self.unreachable.contains_key(&ino)) {
                continue;
            }
            let path = source.path();
            match open_in(&path) {
                Ok(diag) => {
                    if self.unreachable.remove(&ino).is_some() {
                        tracing::info!(path = %path.display(), netns = ino, "network namespace reachable again");
                    }
                    let cookie = netns_cookie(&diag).unwrap_or(0);
                    if cookie != 0 {
                        self.by_cookie.insert(cookie, ino);
                    }
                    self.by_inode.insert(
                        ino,
                        Namespace {
                            inode: ino,
                            cookie,
                            diag,
                        },
                    );
                }
                Err((_, e))
                    if matches!(source, Source::Pid(_))
                        && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) =>
                {
                    // The process exited: its namespace is found again through another
                    // process next time, or is gone.
                    if let Source::Pid(pid) = source {
                        self.pids.remove(&pid);
                    }
                }
                Err((reason, error)) => {
                    if self.unreachable.insert(ino, path.clone()).is_none() {
                        failures.push(Failure {
                            inode: ino,
                            path,
                            reason,
                            error,
                        });
                    }
                }
            }
        }
        failures
    }

    /// Namespaces known to exist whose sockets are not dumped: while any is, a dump is
    /// incomplete.
    pub fn unreachable(&self) -> impl Iterator<Item = u64> + '_ {
        self.unreachable.keys().copied()
    }

    /// Makes the next refresh a full re-walk (benchmarks).
    #[cfg(test)]
    pub fn force_full_walk(&mut self) {
        self.last_full = None;
    }

    /// `/proc/<pid>/ns/net` stats done so far.
    #[cfg(test)]
    pub fn stats(&self) -> u64 {
        self.stats
    }

    pub fn inode_of_cookie(&self, cookie: u64) -> Option<u64> {
        let ino = *self.by_cookie.get(&cookie)?;
        // Its namespace may have been dropped since (a failed dump closes its socket).
        self.by_inode
            .get(&ino)
            .filter(|ns| ns.cookie == cookie)
            .map(|ns| ns.inode)
    }
}

/// Creates a sock_diag socket inside the namespace at `path`; on failure, which step failed.
pub(crate) fn open_in(path: &Path) -> Result<OwnedFd, (&'static str, io::Error)> {
    // O_NONBLOCK: a FIFO left in a pin directory must not hang the probe.
    let ns: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| ("open", e))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid fd affects only this short-lived thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(("setns", io::Error::last_os_error()));
            }
            super::diag::open().map_err(|e| ("socket", e))
        })
        .join()
        .unwrap_or_else(|_| Err(("setns", io::Error::other("netns thread panicked"))))
    })
}

fn netns_cookie(fd: &OwnedFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_namespace_with_a_cookie() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let mut ns = Namespaces::default();
        ns.refresh();
        let me = ns.by_inode.get(&own).expect("own namespace");
        assert_ne!(me.cookie, 0);
        assert_eq!(ns.inode_of_cookie(me.cookie), Some(own));
    }

    /// Namespaces found through processes only, after a first refresh; None (a skip) when not
    /// root, since `unshare -n` needs it (a failure under `GOPHER_STRICT_TESTS`).
    fn watching_processes_only() -> Option<Namespaces> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("GOPHER_STRICT_TESTS").is_none(),
                "unshare -n needs root"
            );
            eprintln!("skipped: unshare -n needs root");
            return None;
        }
        let mut ns = Namespaces::with_pin_dirs(Vec::new());
        ns.refresh();
        Some(ns)
    }

    fn child_in_own_netns() -> std::process::Child {
        let mut child = std::process::Command::new("unshare")
            .args(["-n", "sleep", "60"])
            .spawn()
            .expect("unshare");
        // unshare(2) happens before exec: wait until the child's namespace differs from ours.
        let own = ns_inode(Path::new("/proc/self/ns/net")).unwrap();
        let path = Source::Pid(child.id()).path();
        for _ in 0..200 {
            if ns_inode(&path).is_ok_and(|i| i != own) {
                return child;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("child never entered its own namespace");
    }

    #[test]
    fn a_namespace_whose_last_process_exits_is_closed_without_re_walking_every_process() {
        let Some(mut ns) = watching_processes_only() else {
            return;
        };
        let first = ns.stats();
        let mut child = child_in_own_netns();
        let ino = ns_inode(&Source::Pid(child.id()).path()).unwrap();
        let before = ns.stats();
        ns.refresh();
        assert!(ns.by_inode.contains_key(&ino), "new namespace opened");
        let stats_for_new = ns.stats() - before;
        assert!(
            stats_for_new < first / 2 || first < 20,
            "a refresh stats new pids only: {stats_for_new} stats, {first} at the first walk"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        ns.refresh();
        assert!(
            !ns.by_inode.contains_key(&ino),
            "the namespace of an exited process is closed at the next refresh"
        );
    }

    #[test]
    fn a_new_process_that_unshares_after_it_was_first_seen_is_looked_at_again() {
        let Some(mut ns) = watching_processes_only() else {
            return;
        };
        let own = ns_inode(Path::new("/proc/self/ns/net")).unwrap();
        // Like a container runtime: fork first, unshare a moment later in the same pid.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 0.5; exec unshare -n sleep 60"])
            .spawn()
            .unwrap();
        let path = Source::Pid(child.id()).path();
        ns.refresh(); // sees the child still in our namespace
        let mut moved = None;
        for _ in 0..300 {
            moved = ns_inode(&path).ok().filter(|&i| i != own);
            if moved.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        ns.refresh();
        let known = moved.is_some_and(|ino| ns.by_inode.contains_key(&ino));
        let _ = child.kill();
        let _ = child.wait();
        assert!(moved.is_some(), "the child never unshared");
        assert!(
            known,
            "the young pid's new namespace is found before a full re-walk"
        );
    }

    #[test]
    fn a_namespace_that_cannot_be_opened_is_reported_once_and_kept_unreachable() {
        let dir = std::env::temp_dir().join(format!("gopher-pins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A stale pin: `ip netns add` creates the file, then bind-mounts the namespace on it; a
        // lost mount leaves a plain file that setns refuses.
        let stale = dir.join("stale");
        std::fs::write(&stale, b"").unwrap();
        let ino = ns_inode(&stale).unwrap();
        let mut ns = Namespaces::with_pin_dirs(vec![dir.clone()]);
        let failures = ns.refresh();
        let f = failures
            .iter()
            .find(|f| f.inode == ino)
            .expect("the stale pin is reported");
        assert_eq!(f.reason, "setns");
        assert_eq!(f.path, stale);
        assert_eq!(f.error.raw_os_error(), Some(libc::EINVAL));
        assert!(ns.unreachable().any(|i| i == ino));
        assert!(
            ns.refresh().iter().all(|f| f.inode != ino),
            "reported once, not every interval"
        );
        assert!(ns.unreachable().any(|i| i == ino), "still unreachable");
        std::fs::remove_file(&stale).unwrap();
        ns.refresh();
        assert!(ns.unreachable().all(|i| i != ino), "gone once unpinned");
        std::fs::remove_dir(&dir).unwrap();
    }
}
