//! `switch = "auto"`: a shell command decides whether the observed service is there, and is
//! asked again every interval (gala-gopher asked once, at boot). Present → the probe starts;
//! gone → it stops. A check that fails (times out, cannot start, prints no number) changes
//! nothing, is counted and logged; each probe's check runs on its own task, so a hanging one
//! never delays another probe.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

use super::{
    process,
    reader::{LineReader, Next},
};
use crate::{
    config::CheckType,
    probes::Manager,
    selfmetrics::{START_CHECK_FAILURES, SelfMetrics},
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

/// Count type: the first whitespace-separated word of the first line, as a number, > 0.
pub fn count_says_present(first_line: &[u8]) -> Result<bool, CheckError> {
    let text = String::from_utf8_lossy(first_line);
    let word = text.split_whitespace().next().ok_or_else(|| {
        CheckError::BadOutput("the first output line is empty; expected a count".into())
    })?;
    word.parse::<f64>().map(|n| n > 0.0).map_err(|_| {
        let mut shown = word.to_owned();
        shown.truncate(40);
        CheckError::BadOutput(format!("expected a count, found {shown:?}"))
    })
}

/// Runs the check once: `Ok(true)` when the service is present.
pub async fn evaluate(
    command: &str,
    kind: CheckType,
    timeout: Duration,
    workdir: Option<&Path>,
) -> Result<bool, CheckError> {
    let mut cmd = process::shell(command);
    if let Some(dir) = workdir {
        cmd.current_dir(dir);
    }
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
                    Ok(Next::Eof) => {
                        Err(CheckError::BadOutput("no output; expected a count".into()))
                    }
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
        loop {
            let outcome = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return,
                r = evaluate(&check.command, check.kind, check.timeout, check.workdir.as_deref()) => r,
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
        assert_eq!(count_says_present(b"").unwrap_err().reason(), "bad_output");
        assert_eq!(
            count_says_present(b"yes").unwrap_err().reason(),
            "bad_output"
        );
    }

    #[tokio::test]
    async fn count_and_exit_checks() {
        assert!(evaluate("echo 2", CheckType::Count, T, None).await.unwrap());
        assert!(
            !evaluate("echo 0; exit 1", CheckType::Count, T, None)
                .await
                .unwrap()
        );
        assert!(evaluate("yes 1", CheckType::Count, T, None).await.unwrap());
        assert_eq!(
            evaluate("true", CheckType::Count, T, None)
                .await
                .unwrap_err()
                .reason(),
            "bad_output"
        );
        assert!(evaluate("exit 0", CheckType::Exit, T, None).await.unwrap());
        assert!(!evaluate("exit 3", CheckType::Exit, T, None).await.unwrap());
        assert_eq!(
            evaluate("kill -9 $$", CheckType::Exit, T, None)
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
        let e = evaluate(&cmd, CheckType::Exit, Duration::from_millis(300), None)
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
