//! Extension probes: any program that prints `|table|v1|…|vN|` lines.
//!
//! Each run is `sh -c "<command> <param>"` in a process group of its own (stdin /dev/null).
//! Stdout is read line by line ([`reader`]), parsed ([`line`]) and checked against the table
//! definitions; good rows go to the store in batches through the bounded rows channel, so a
//! probe that prints faster than the agent ingests is slowed down by its own full pipe instead
//! of growing the agent's memory. Stderr lines are logged under the probe's name. The run
//! ends (with the exit status and last stderr line as the error) when the program exits; the
//! [`Manager`](super::Manager) restarts it. Stopping ends the whole process group.

pub mod line;
mod params;
pub mod process;
pub mod reader;
pub mod start_check;
pub mod user;

pub use params::runtime_param;

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    io::AsyncRead,
    sync::{mpsc, watch},
};

use self::{
    line::{MAX_LINE_BYTES, Parsed, Rejection},
    reader::{LineReader, Next},
};
use super::{Probe, ProbeContext, ProbeFuture};
use crate::{
    imdb::{Batch, Row, TableMeta},
    telemetry::{Counter, PROBE_LINES_IGNORED, PROBE_ROWS, PROBE_ROWS_REJECTED, SelfMetrics},
};

/// Every table a probe may write, by name.
pub type Catalog = HashMap<String, Arc<TableMeta>>;

/// A batch goes to the store once it holds this many rows or bytes, or when no further line
/// is waiting in the pipe. With the rows channel's capacity this bounds what a flooding probe
/// can hold in flight.
const MAX_BATCH_ROWS: usize = 256;
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// After the program exits, its remaining output is read for at most this long.
const EXIT_DRAIN: Duration = Duration::from_secs(2);
/// Stderr lines beyond this are skipped (a note is logged instead).
const MAX_STDERR_LINE: usize = 1024;
/// The last stderr line is kept, this long at most, for the failure reason.
const MAX_REASON_LINE: usize = 200;
/// Rate limits on the probe's log lines (stderr, rejected rows): a burst per window, then a
/// count of what was left out.
const LOG_BURST: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// One `[[extend_probes]]` entry, ready to run.
pub struct ExtensionProbe {
    name: String,
    command: String,
    /// From the entry's meta file; registered in the store by the caller.
    tables: Vec<TableMeta>,
    /// All tables the store knows; set once registration is done. Until then (and in unit
    /// tests) the probe's own tables are used.
    catalog: OnceLock<Arc<Catalog>>,
    stop_grace: Duration,
    /// Where the command runs (the config file's directory, so relative paths in it work).
    workdir: Option<PathBuf>,
    /// The user it runs as, with no capabilities ([`user`]); `None`: the agent's.
    user: Option<String>,
}

impl ExtensionProbe {
    /// `command` and `param` are joined with a space, as gala-gopher did.
    pub fn new(
        name: &str,
        command: &str,
        param: &str,
        tables: Vec<TableMeta>,
        stop_grace: Duration,
    ) -> Self {
        let command = if param.trim().is_empty() {
            command.to_owned()
        } else {
            format!("{command} {param}")
        };
        Self {
            name: name.to_owned(),
            command,
            tables,
            catalog: OnceLock::new(),
            stop_grace,
            workdir: None,
            user: None,
        }
    }

    /// Runs the command in `dir` instead of the agent's working directory, and as `user` (no
    /// capabilities) instead of the agent's.
    #[must_use]
    pub fn in_dir_as(mut self, dir: Option<PathBuf>, user: Option<String>) -> Self {
        (self.workdir, self.user) = (dir, user);
        self
    }

    /// Gives the probe every registered table (tables from meta directories included).
    pub fn set_catalog(&self, catalog: Arc<Catalog>) {
        let _ = self.catalog.set(catalog);
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    fn current_catalog(&self) -> Arc<Catalog> {
        self.catalog.get().map_or_else(
            || {
                Arc::new(
                    self.tables
                        .iter()
                        .map(|t| (t.name.clone(), Arc::new(t.clone())))
                        .collect(),
                )
            },
            Arc::clone,
        )
    }
}

impl Probe for ExtensionProbe {
    fn name(&self) -> &str {
        &self.name
    }

    fn tables(&self) -> Vec<TableMeta> {
        self.tables.clone()
    }

    fn run(&self, ctx: ProbeContext) -> ProbeFuture {
        let spec = Spec {
            name: self.name.clone(),
            command: self.command.clone(),
            catalog: self.current_catalog(),
            stop_grace: self.stop_grace,
            workdir: self.workdir.clone(),
            user: self.user.clone(),
        };
        Box::pin(run(spec, ctx))
    }
}

struct Spec {
    name: String,
    command: String,
    catalog: Arc<Catalog>,
    stop_grace: Duration,
    workdir: Option<PathBuf>,
    user: Option<String>,
}

async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // An error means the manager is gone: stop as well.
    let _ = stop.wait_for(|s| *s).await;
}

async fn run(spec: Spec, mut ctx: ProbeContext) -> anyhow::Result<()> {
    let mut cmd = process::shell(&spec.command);
    if let Some(dir) = &spec.workdir {
        cmd.current_dir(dir);
    }
    let user = spec.user.as_deref();
    user::apply(&mut cmd, user).with_context(|| format!("running as user {user:?}"))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `sh -c {:?}`", spec.command))?;
    let pgid = child
        .id()
        .context("the probe process vanished before it could be watched")?;
    let mut guard = process::GroupGuard::new(pgid);
    tracing::info!(probe = %spec.name, pid = pgid, command = %spec.command, "extension probe started");
    ctx.state.running_as(pgid);
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let last_stderr = Arc::new(Mutex::new(String::new()));
    let stderr_task = tokio::spawn(log_stderr(
        spec.name.clone(),
        stderr,
        Arc::clone(&last_stderr),
    ));

    let mut intake = Intake::new(&spec.name, Arc::clone(&spec.catalog), &ctx.metrics);
    let mut lines = LineReader::new(stdout, MAX_LINE_BYTES);
    let pumping = pump(&mut lines, &mut intake, &ctx.rows);
    tokio::pin!(pumping);
    let mut exited = None;
    let drain_until = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain_until);
    let output_ended = loop {
        tokio::select! {
            biased;
            () = stop_requested(&mut ctx.stop) => break false,
            end = &mut pumping => break match end {
                PumpEnd::Closed => false,
                PumpEnd::Eof => true,
                PumpEnd::Error(e) => {
                    tracing::warn!(probe = %spec.name, "reading the probe's output: {e}");
                    true
                }
            },
            status = child.wait(), if exited.is_none() => {
                // Normally end of output follows at once. A helper that left the process group
                // may hold stdout open, though: read what is there, but do not wait for ever.
                exited = Some(status);
                drain_until.as_mut().reset(tokio::time::Instant::now() + EXIT_DRAIN);
            }
            () = &mut drain_until, if exited.is_some() => break true,
        }
    };
    // Stdout is closed: the program is exiting (or closed it on purpose; then wait for exit).
    let status = match exited {
        Some(status) if output_ended => Some(status),
        _ if output_ended => tokio::select! {
            biased;
            () = stop_requested(&mut ctx.stop) => None,
            status = child.wait() => Some(status),
        },
        _ => None,
    };
    // Whatever is left of the group (background helpers) goes with it.
    let reaped = process::terminate_group(&mut child, pgid, spec.stop_grace).await;
    guard.disarm();
    let mut stderr_task = stderr_task;
    if tokio::time::timeout(Duration::from_secs(1), &mut stderr_task)
        .await
        .is_err()
    {
        stderr_task.abort();
    }
    let Some(status) = status else {
        tracing::info!(probe = %spec.name, "extension probe stopped");
        return Ok(());
    };
    let status = match status {
        Ok(s) => process::describe(s),
        Err(e) => reaped.map_or_else(|| format!("exit status unknown ({e})"), process::describe),
    };
    let last = last_stderr
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if last.is_empty() {
        anyhow::bail!("{status}");
    }
    anyhow::bail!("{status}; last stderr line: {last}")
}

enum PumpEnd {
    Eof,
    /// The rows channel is closed: the agent is shutting down.
    Closed,
    Error(std::io::Error),
}

/// Reads lines into row batches until end of output. Awaiting the channel when it is full is
/// the backpressure: nothing is read meanwhile, the pipe fills and the probe blocks in write().
async fn pump<R: AsyncRead + Unpin>(
    lines: &mut LineReader<R>,
    intake: &mut Intake,
    rows: &mpsc::Sender<Batch>,
) -> PumpEnd {
    let mut batch: Vec<Row> = Vec::new();
    let mut bytes = 0;
    loop {
        let next = lines.next().await;
        let end = match next {
            Ok(Next::Line(l)) => {
                if let Some(row) = intake.line(l) {
                    bytes += row_bytes(&row);
                    batch.push(row);
                }
                None
            }
            Ok(Next::TooLong) => {
                intake.reject(&Rejection::TooLong {
                    limit: MAX_LINE_BYTES,
                });
                None
            }
            Ok(Next::Eof) => Some(PumpEnd::Eof),
            Err(e) => Some(PumpEnd::Error(e)),
        };
        let full = batch.len() >= MAX_BATCH_ROWS || bytes >= MAX_BATCH_BYTES;
        if !batch.is_empty() && (full || end.is_some() || !lines.line_ready()) {
            if rows
                .send(Batch::Rows(std::mem::take(&mut batch)))
                .await
                .is_err()
            {
                return PumpEnd::Closed;
            }
            bytes = 0;
        }
        if let Some(end) = end {
            return end;
        }
    }
}

/// Rough heap cost of a row, for batch sizing.
fn row_bytes(row: &Row) -> usize {
    row.table.len()
        + row
            .values
            .iter()
            .map(|v| v.as_str().len() + std::mem::size_of::<crate::imdb::Value>())
            .sum::<usize>()
}

/// Turns lines into rows for one probe, counting and (rate-limited) logging what it refuses.
pub struct Intake {
    probe: String,
    catalog: Arc<Catalog>,
    rejected: [Counter; Rejection::REASONS.len()],
    ignored: Counter,
    accepted: Counter,
    log: LogLimiter,
}

impl Intake {
    pub fn new(probe: &str, catalog: Arc<Catalog>, metrics: &SelfMetrics) -> Self {
        let rejected = Rejection::REASONS.map(|reason| {
            metrics.counter(PROBE_ROWS_REJECTED, &[("probe", probe), ("reason", reason)])
        });
        Self {
            probe: probe.to_owned(),
            catalog,
            rejected,
            ignored: metrics.counter(PROBE_LINES_IGNORED, &[("probe", probe)]),
            accepted: metrics.counter(PROBE_ROWS, &[("probe", probe)]),
            log: LogLimiter::new(LOG_BURST, LOG_WINDOW),
        }
    }

    /// The row this line carries, if it is a good one.
    pub fn line(&mut self, bytes: &[u8]) -> Option<Row> {
        let parsed = line::parse_line(bytes).and_then(|p| match p {
            Parsed::Ignored => Ok(None),
            Parsed::Row { table, values } => {
                let meta = self
                    .catalog
                    .get(table)
                    .ok_or_else(|| Rejection::UnknownTable(table.to_owned()))?;
                line::to_row(meta, &values).map(Some)
            }
        });
        match parsed {
            Ok(Some(row)) => {
                self.accepted.inc();
                Some(row)
            }
            Ok(None) => {
                self.ignored.inc();
                None
            }
            Err(r) => {
                self.reject(&r);
                None
            }
        }
    }

    pub fn reject(&mut self, why: &Rejection) {
        let i = Rejection::REASONS
            .iter()
            .position(|r| *r == why.reason())
            .unwrap_or_default();
        self.rejected[i].inc();
        if let Some(suppressed) = self.log.allow(Instant::now()) {
            if suppressed > 0 {
                tracing::warn!(probe = %self.probe, "{suppressed} more rejected rows were not logged");
            }
            tracing::warn!(probe = %self.probe, reason = why.reason(), "row rejected: {why}");
        }
    }
}

/// Logs the probe's stderr, line by line, under its name; keeps the last line for the failure
/// reason.
async fn log_stderr<R: AsyncRead + Unpin>(probe: String, stderr: R, last: Arc<Mutex<String>>) {
    let mut lines = LineReader::new(stderr, MAX_STDERR_LINE);
    let mut limiter = LogLimiter::new(LOG_BURST, LOG_WINDOW);
    loop {
        let text = match lines.next().await {
            Ok(Next::Line(l)) => String::from_utf8_lossy(l).trim_end().to_owned(),
            Ok(Next::TooLong) => format!("(a stderr line longer than {MAX_STDERR_LINE} bytes)"),
            Ok(Next::Eof) | Err(_) => return,
        };
        if text.is_empty() {
            continue;
        }
        let mut end = text.len().min(MAX_REASON_LINE);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].clone_into(&mut last.lock().unwrap_or_else(PoisonError::into_inner));
        if let Some(suppressed) = limiter.allow(Instant::now()) {
            if suppressed > 0 {
                tracing::warn!(probe = %probe, "{suppressed} stderr lines were not logged (rate limit)");
            }
            tracing::warn!(probe = %probe, "stderr: {text}");
        }
    }
}

/// Allows `burst` messages per `window`; then says how many it held back.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log this message, after noting that `n` were held back since the last one
    /// logged. `None`: hold it back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window)
        {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::imdb::{FieldMeta, FieldType};

    fn catalog() -> Arc<Catalog> {
        let meta = TableMeta {
            name: "t".into(),
            description: String::new(),
            fields: ["k", "v"]
                .iter()
                .zip([FieldType::Key, FieldType::Gauge])
                .map(|(n, ty)| FieldMeta {
                    name: (*n).into(),
                    ty,
                    description: String::new(),
                })
                .collect(),
            max_records: None,
        };
        Arc::new([("t".to_owned(), Arc::new(meta))].into_iter().collect())
    }

    fn rendered(m: &SelfMetrics) -> String {
        let mut s = String::new();
        m.render(&mut s);
        s
    }

    #[test]
    fn limiter_allows_a_burst_per_window_and_counts_the_rest() {
        let mut l = LogLimiter::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(2));
    }

    #[test]
    fn intake_counts_per_reason() {
        let m = SelfMetrics::new();
        let mut i = Intake::new("p", catalog(), &m);
        assert_eq!(i.line(b"|t|a||").unwrap().values, ["a", ""]);
        assert!(i.line(b"hello").is_none());
        assert!(i.line(b"|nope|a|1|").is_none());
        assert!(i.line(b"|t|a|").is_none());
        assert!(i.line(b"|t|a|x|").is_none());
        assert!(i.line(b"|t|a|1").is_none());
        let out = rendered(&m);
        for want in [
            "gopher_probe_rows_total{probe=\"p\"} 1\n",
            "gopher_probe_lines_ignored_total{probe=\"p\"} 1\n",
            "gopher_probe_rows_rejected_total{probe=\"p\",reason=\"unknown_table\"} 1\n",
            "gopher_probe_rows_rejected_total{probe=\"p\",reason=\"field_count\"} 1\n",
            "gopher_probe_rows_rejected_total{probe=\"p\",reason=\"bad_value\"} 1\n",
            "gopher_probe_rows_rejected_total{probe=\"p\",reason=\"malformed\"} 1\n",
            "gopher_probe_rows_rejected_total{probe=\"p\",reason=\"too_long\"} 0\n",
        ] {
            assert!(out.contains(want), "{want} missing from\n{out}");
        }
    }

    /// Runs `command` as a probe that may fail once; returns the manager and the rows channel.
    fn supervised(command: &str) -> (super::super::Manager, mpsc::Receiver<Batch>) {
        use super::super::{Manager, Policy};
        let (tx, rx) = mpsc::channel(16);
        let policy = Policy {
            max_quick_failures: 1,
            ..Policy::default()
        };
        let m = Manager::with_policy(tx, Arc::new(SelfMetrics::new()), Duration::ZERO, policy);
        let probe = ExtensionProbe::new("p", command, "", Vec::new(), Duration::from_secs(1));
        probe.set_catalog(catalog());
        m.add(Arc::new(probe), Duration::from_secs(1));
        m.start("p").unwrap();
        (m, rx)
    }

    async fn failure(m: &super::super::Manager) -> String {
        use super::super::manager::State;
        for _ in 0..200 {
            if let Some((State::Failed, why)) = m.state("p") {
                return why;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("not failed: {:?}", m.state("p"));
    }

    #[tokio::test]
    async fn exit_status_and_last_stderr_line_are_the_reason_and_last_rows_arrive() {
        let (m, mut rx) = supervised("echo '|t|k|1|'; echo first >&2; echo last >&2; exit 4");
        assert_eq!(
            failure(&m).await,
            "exited with status 4; last stderr line: last"
        );
        let Some(Batch::Rows(rows)) = rx.recv().await else {
            panic!("no rows")
        };
        assert_eq!(rows[0].values, ["k", "1"]);
    }

    #[tokio::test]
    async fn a_helper_holding_stdout_open_does_not_hide_the_exit() {
        // setsid: the helper leaves the process group, keeps stdout, and outlives the shell.
        let start = Instant::now();
        let (m, _rx) = supervised("setsid sleep 5 & exit 2");
        assert_eq!(failure(&m).await, "exited with status 2");
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn pump_batches_and_ends_at_eof() {
        let m = SelfMetrics::new();
        let mut i = Intake::new("p", catalog(), &m);
        let input = "|t|a|1|\nnoise\n|t|b|2|\n".repeat(300);
        let mut lines = LineReader::new(input.as_bytes(), MAX_LINE_BYTES);
        let (tx, mut rx) = mpsc::channel(64);
        assert!(matches!(pump(&mut lines, &mut i, &tx).await, PumpEnd::Eof));
        drop(tx);
        let mut total = 0;
        while let Some(b) = rx.recv().await {
            assert!(b.len() <= MAX_BATCH_ROWS);
            total += b.len();
        }
        assert_eq!(total, 600);
    }
}
