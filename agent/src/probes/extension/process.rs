//! Child processes in process groups of their own, so that stopping one ends everything it
//! started (a shell, the interpreter it runs, the helpers that one forks).

use std::{
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

/// `/bin/sh -c <command>` (gala-gopher ran commands through popen, i.e. the shell), stdin from
/// /dev/null, leader of a new process group. Output handles are the caller's choice.
pub fn shell(command: &str) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .process_group(0)
        // If the agent drops a child without reaping it, tokio kills and reaps it.
        .kill_on_drop(true);
    cmd
}

/// Sends `signal` to every process of the group; a group that is gone is not an error.
pub fn signal_group(pgid: u32, signal: i32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        // kill(0 or -1) would hit the agent's own group or every process: never.
        return;
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether any process of the group is still alive. Zombies do not count: in containers whose
/// init never reaps, orphaned members linger as zombies and must not hold up a stop.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(id) = i32::try_from(pgid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    if unsafe { libc::kill(-id, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .any(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|stat| live_member(&stat, pgid))
                .unwrap_or(false)
        })
}

/// From `/proc/<pid>/stat`: is this process in group `pgid` and not a zombie?
fn live_member(stat: &str, pgid: u32) -> Option<bool> {
    // The command name is in parentheses and may contain anything, so parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let _ppid = fields.next()?;
    let pgrp: u32 = fields.next()?.parse().ok()?;
    Some(pgrp == pgid && state != "Z" && state != "X")
}

/// Ends the whole group: SIGTERM (and SIGCONT, so that a stopped process can act on it), then
/// SIGKILL after `grace`. Reaps `child` (the group leader) and returns its status if it could.
pub async fn terminate_group(child: &mut Child, pgid: u32, grace: Duration) -> Option<ExitStatus> {
    let mut status = reap(child);
    if status.is_none() || group_alive(pgid) {
        signal_group(pgid, libc::SIGTERM);
        signal_group(pgid, libc::SIGCONT);
        if !wait_gone(child, pgid, grace, &mut status).await {
            tracing::debug!(pgid, "process group outlived SIGTERM; sending SIGKILL");
            signal_group(pgid, libc::SIGKILL);
            wait_gone(child, pgid, Duration::from_secs(2), &mut status).await;
        }
    }
    if status.is_none() {
        status = tokio::time::timeout(Duration::from_secs(1), child.wait())
            .await
            .ok()
            .and_then(Result::ok);
    }
    status
}

fn reap(child: &mut Child) -> Option<ExitStatus> {
    child.try_wait().ok().flatten()
}

/// Polls (backing off from 5 ms to 50 ms) until the leader is reaped and no live member is left.
async fn wait_gone(
    child: &mut Child,
    pgid: u32,
    limit: Duration,
    status: &mut Option<ExitStatus>,
) -> bool {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        if status.is_none() {
            *status = reap(child);
        }
        if status.is_some() && !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// SIGKILLs the group when dropped unless disarmed: a probe future dropped mid-way (aborted
/// task, runtime shutdown) must not leave its processes behind.
pub struct GroupGuard {
    pgid: u32,
    armed: bool,
}

impl GroupGuard {
    pub fn new(pgid: u32) -> Self {
        Self { pgid, armed: true }
    }

    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, libc::SIGKILL);
        }
    }
}

/// "exited with status 3", "killed by signal 9 (SIGKILL)".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => match signal_name(sig) {
            Some(name) => format!("killed by signal {sig} ({name})"),
            None => format!("killed by signal {sig}"),
        },
        None => format!("ended ({status})"),
    }
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;

    #[test]
    fn stat_lines_are_parsed_after_the_command_name() {
        let stat = "42 (a) b) Z 1 7 7 0";
        assert_eq!(live_member(stat, 7), Some(false));
        let stat = "42 (x) S 1 7 7 0";
        assert_eq!(live_member(stat, 7), Some(true));
        assert_eq!(live_member(stat, 8), Some(false));
        assert_eq!(live_member("garbage", 7), None);
    }

    #[test]
    fn statuses_read_well() {
        assert_eq!(
            describe(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGSEGV)),
            "killed by signal 11 (SIGSEGV)"
        );
    }

    #[tokio::test]
    async fn terminating_a_group_ends_its_background_members() {
        let mut child = shell("sleep 100 & echo $!; wait")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pgid = child.id().unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
            .await
            .unwrap();
        let sleeper: u32 = line.trim().parse().unwrap();
        assert!(group_alive(pgid));
        let status = terminate_group(&mut child, pgid, Duration::from_secs(5)).await;
        assert!(status.is_some());
        assert!(!group_alive(pgid));
        let stat = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
        assert!(live_member(&stat, pgid) != Some(true), "{stat}");
    }

    #[tokio::test]
    async fn a_group_ignoring_sigterm_is_killed_after_the_grace() {
        let mut child = shell("trap '' TERM; echo ready; while :; do sleep 0.05; done")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pgid = child.id().unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
            .await
            .unwrap();
        let start = Instant::now();
        let status = terminate_group(&mut child, pgid, Duration::from_millis(300)).await;
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL));
        assert!(!group_alive(pgid));
    }
}
