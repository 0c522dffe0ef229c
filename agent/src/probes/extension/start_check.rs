//! `switch = "auto"`: a shell command decides whether the observed service is there, and is
//! asked again every interval (gala-gopher asked once, at boot). Present → the probe starts;
//! gone → it stops. A check that fails (times out, cannot start, prints no number) changes
//! nothing, is counted and logged; each probe's check runs on its own task, so a hanging one
//! never delays another probe.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::JoinHandle};

use super::{
    process,
    reader::{LineReader, Next},
};
use crate::{
    probes::{Manager, manager::State, settings::CheckType},
    telemetry::{START_CHECK_FAILURES, SelfMetrics},
};

/// Longest first line read from a count-type check.
const MAX_CHECK_LINE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartCheck {
    pub probe: String,
    pub command: String,
    pub kind: CheckType,
    pub interval: Duration,
    pub timeout: Duration,
    /// Where the check runs (the config file's directory); `None` = the agent's.
    pub workdir: Option<PathBuf>,
    /// The user it runs as, with no capabilities; `None` = the agent's.
    pub user: Option<String>,
}

#[derive(Debug)]
pub enum CheckError {
    Timeout(Duration),
    Spawn(std::io::Error),
    /// Count type: the first line is missing or not a number.
    BadOutput(String),
    /// Exit type: the shell was killed by a signal, so there is no exit status to go by.
    Killed(String),
}

impl CheckError {
    /// Every value [`CheckError::reason`] can return.
    pub const REASONS: [&'static str; 4] = ["timeout", "spawn", "bad_output", "killed"];

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Spawn(_) => "spawn",
            Self::BadOutput(_) => "bad_output",
            Self::Killed(_) => "killed",
        }
    }
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout(t) => write!(f, "no answer within {t:?}; killed"),
            Self::Spawn(e) => write!(f, "cannot run it: {e}"),
            Self::BadOutput(why) => write!(f, "{why}"),
            Self::Killed(how) => write!(f, "{how}"),
        }
    }
}

/// Count type, read as gala-gopher read it (`atoi` of the first line): leading blanks, an
/// optional sign, digits. No output or a line that does not start with a number counts as 0,
/// i.e. absent, so that `pgrep nginx` (which prints nothing once nginx is gone) stops the probe.
pub fn count_says_present(first_line: &[u8]) -> Result<bool, CheckError> {
    let text = String::from_utf8_lossy(first_line);
    let t = text.trim_start();
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let has_digit = digits.bytes().next().is_some_and(|b| b.is_ascii_digit());
    let positive = has_digit
        && !negative
        && digits
            .bytes()
            .take_while(u8::is_ascii_digit)
            .any(|b| b != b'0');
    Ok(positive)
}

/// Runs the check once: `Ok(true)` when the service is present.
pub async fn evaluate(
    command: &str,
    kind: CheckType,
    timeout: Duration,
    workdir: Option<&Path>,
    user: Option<&str>,
) -> Result<bool, CheckError> {
    let mut cmd = process::shell(command);
    if let Some(dir) = workdir {
        cmd.current_dir(dir);
    }
    super::user::apply(&mut cmd, user).map_err(CheckError::Spawn)?;
    cmd.stderr(Stdio::null()).stdout(match kind {
        CheckType::Count => Stdio::piped(),
        CheckType::Exit => Stdio::null(),
    });
    let mut child = cmd.spawn().map_err(CheckError::Spawn)?;
    let Some(pgid) = child.id() else {
        return Err(CheckError::Killed(
            "vanished before it could be watched".into(),
        ));
    };
    // Whatever happens below, nothing of the check outlives it.
    let _guard = process::GroupGuard::new(pgid);
    let stdout = child.stdout.take();
    let work = async {
        let first = match stdout {
            Some(out) => {
                let mut lines = LineReader::new(out, MAX_CHECK_LINE);
                let first = match lines.next().await {
                    Ok(Next::Line(l)) => Ok(l.to_vec()),
                    Ok(Next::TooLong) => Err(CheckError::BadOutput(format!(
                        "the first output line is longer than {MAX_CHECK_LINE} bytes"
                    ))),
                    // No output is a count of 0 (atoi of nothing), as in gala-gopher.
                    Ok(Next::Eof) => Ok(Vec::new()),
                    Err(e) => Err(CheckError::BadOutput(format!("reading its output: {e}"))),
                };
                // Closing the pipe ends a check that would go on printing (SIGPIPE), as pclose did.
                drop(lines);
                Some(first)
            }
            None => None,
        };
        let status = child.wait().await;
        (first, status)
    };
    let (first, status) = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| CheckError::Timeout(timeout))?;
    match (kind, first) {
        (CheckType::Count, Some(first)) => count_says_present(&first?),
        (CheckType::Count, None) => Err(CheckError::BadOutput("no output pipe".into())),
        (CheckType::Exit, _) => match status {
            Ok(s) if s.code().is_some() => Ok(s.success()),
            Ok(s) => Err(CheckError::Killed(process::describe(s))),
            Err(e) => Err(CheckError::Killed(format!("exit status unknown: {e}"))),
        },
    }
}

/// How long a failed probe whose service stays present waits before it is started again.
const RETRY_FAILED_AFTER: Duration = Duration::from_mins(5);

/// Runs the check every interval and starts or stops the probe when the answer changes,
/// until `shutdown` turns true.
pub fn spawn_auto(
    manager: Manager,
    check: StartCheck,
    metrics: Arc<SelfMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let failures = CheckError::REASONS.map(|reason| {
            metrics.counter(
                START_CHECK_FAILURES,
                &[("probe", check.probe.as_str()), ("reason", reason)],
            )
        });
        let name = check.probe.as_str();
        let mut present = false;
        let mut failing: Option<&'static str> = None;
        let mut failed_since: Option<Instant> = None;
        loop {
            let outcome = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return,
                r = evaluate(&check.command, check.kind, check.timeout, check.workdir.as_deref(), check.user.as_deref()) => r,
            };
            match outcome {
                Ok(now) => {
                    if failing.take().is_some() {
                        tracing::info!(probe = %name, "start check answers again");
                    }
                    if now && !present {
                        tracing::info!(probe = %name, "start check: service present; starting the probe");
                        if let Err(e) = manager.start(name) {
                            tracing::error!(probe = %name, "cannot start: {e:#}");
                        }
                    } else if !now && present {
                        tracing::info!(probe = %name, "start check: service gone; stopping the probe");
                        let _ = manager.stop(name).await;
                    } else if now && matches!(manager.state(name), Some((State::Failed, _))) {
                        // A probe that gave up while its service stays present is tried again
                        // after a cool-down: a passing cause (an interpreter moved by a package
                        // upgrade) must not end its monitoring until the service restarts.
                        let since = *failed_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= RETRY_FAILED_AFTER {
                            failed_since = None;
                            tracing::info!(probe = %name, "start check: service present; retrying the failed probe");
                            if let Err(e) = manager.start(name) {
                                tracing::error!(probe = %name, "cannot start: {e:#}");
                            }
                        }
                    } else {
                        failed_since = None;
                    }
                    present = now;
                }
                Err(e) => {
                    let reason = e.reason();
                    if let Some(i) = CheckError::REASONS.iter().position(|r| *r == reason) {
                        failures[i].inc();
                    }
                    if failing == Some(reason) {
                        tracing::debug!(probe = %name, command = %check.command, "start check failed again: {e}");
                    } else {
                        tracing::warn!(probe = %name, command = %check.command, reason, "start check failed: {e}; probe left as it is");
                    }
                    failing = Some(reason);
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return,
                () = tokio::time::sleep(check.interval) => {}
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn counts_follow_gala_gopher() {
        assert!(count_says_present(b"3").unwrap());
        assert!(count_says_present(b"  2 /var/run/x.pid").unwrap());
        assert!(!count_says_present(b"0").unwrap());
        assert!(!count_says_present(b"-1").unwrap());
        assert!(!count_says_present(b"").unwrap());
        assert!(!count_says_present(b"0.5").unwrap());
        assert!(count_says_present(b"12abc").unwrap());
        assert!(!count_says_present(b"000").unwrap());
        assert!(!count_says_present(b"yes").unwrap());
    }

    #[tokio::test]
    async fn count_and_exit_checks() {
        assert!(
            evaluate("echo 2", CheckType::Count, T, None, None)
                .await
                .unwrap()
        );
        assert!(
            !evaluate("echo 0; exit 1", CheckType::Count, T, None, None)
                .await
                .unwrap()
        );
        assert!(
            evaluate("yes 1", CheckType::Count, T, None, None)
                .await
                .unwrap()
        );
        // No output counts as 0 (gala-gopher's atoi), so a vanished service stops its probe.
        assert!(
            !evaluate("true", CheckType::Count, T, None, None)
                .await
                .unwrap()
        );
        assert!(
            evaluate("exit 0", CheckType::Exit, T, None, None)
                .await
                .unwrap()
        );
        assert!(
            !evaluate("exit 3", CheckType::Exit, T, None, None)
                .await
                .unwrap()
        );
        assert_eq!(
            evaluate("kill -9 $$", CheckType::Exit, T, None, None)
                .await
                .unwrap_err()
                .reason(),
            "killed"
        );
    }

    #[tokio::test]
    async fn a_hanging_check_times_out_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = format!("echo $$ > {}; sleep 100", pidfile.display());
        let start = std::time::Instant::now();
        let e = evaluate(
            &cmd,
            CheckType::Exit,
            Duration::from_millis(300),
            None,
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(e.reason(), "timeout");
        assert!(start.elapsed() < Duration::from_secs(3));
        let pgid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while process::group_alive(pgid) {
            assert!(
                std::time::Instant::now() < deadline,
                "check group still alive"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
