//! Where the agent's logs go.
//!
//! - `global.log_directory` empty (the default): stderr. Under systemd stderr is a journald
//!   stream (`$JOURNAL_STREAM` names it): lines then carry no timestamp (the journal stamps
//!   them) and no colour, and start with a `<N>` syslog priority that journald turns into the
//!   entry's priority, so `journalctl -p warning` works. On a terminal: timestamps and colour.
//! - `global.log_directory` set: a file per day, `gopher.YYYY-MM-DD.log`, at most
//!   [`MAX_LOG_FILES`] kept. Warnings and errors also go to stderr, so that `systemctl status`
//!   and `kubectl logs` still show why the agent stopped.
//!
//! `RUST_LOG`, when set, overrides `global.log_level` (handy for a one-off debug run).
//!
//! Not `tracing-journald`: it writes to journald's own socket, while a service's stderr already
//! is a journald stream; one `<N>`-prefixed stream works wherever stderr goes (containers without
//! the journal socket, `systemd-run`, the tests that read it), at the cost of structured fields.

use std::{
    io::IsTerminal as _,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use tracing::{Event, Level, Subscriber};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::LevelFilter,
    fmt::{self, FmtContext, FormatEvent, FormatFields, format},
    layer::SubscriberExt as _,
    registry::LookupSpan,
};

use crate::config::Global;

/// Daily files kept in `global.log_directory`: a week, then the oldest is deleted.
pub const MAX_LOG_FILES: usize = 7;
/// Log file names: `gopher.YYYY-MM-DD.log`.
pub const LOG_FILE_PREFIX: &str = "gopher";
pub const LOG_FILE_SUFFIX: &str = "log";

#[derive(Debug, thiserror::Error)]
#[error("log directory {}: {source}", dir.display())]
pub struct LogError {
    dir: PathBuf,
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// What stderr is connected to, which decides its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    Journal,
    Terminal,
    Other,
}

impl Stderr {
    /// Inspects this process's stderr: journald's stream when `$JOURNAL_STREAM` ("dev:ino")
    /// names the very file stderr is (a child of the service that redirected stderr is not).
    pub fn detect() -> Self {
        let journal = std::env::var("JOURNAL_STREAM").ok().is_some_and(|v| {
            std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .and_then(|fd| std::fs::File::from(fd).metadata())
                .is_ok_and(|m| v == format!("{}:{}", m.dev(), m.ino()))
        });
        if journal {
            Self::Journal
        } else if std::io::stderr().is_terminal() {
            Self::Terminal
        } else {
            Self::Other
        }
    }
}

/// Installs the global subscriber for `global`'s settings. Call once, before anything logs.
pub fn init(global: &Global) -> Result<(), LogError> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(global.log_level.as_str()));
    let subscriber = subscriber(filter, Stderr::detect(), global.log_directory.as_deref())?;
    tracing::subscriber::set_global_default(subscriber).map_err(|e| LogError {
        dir: global.log_directory.clone().unwrap_or_default(),
        source: Box::new(e),
    })
}

/// The subscriber [`init`] installs, built without installing it (tests use it scoped).
pub fn subscriber(
    filter: EnvFilter,
    stderr: Stderr,
    log_directory: Option<&Path>,
) -> Result<Box<dyn Subscriber + Send + Sync>, LogError> {
    let registry = tracing_subscriber::registry().with(filter);
    let Some(dir) = log_directory else {
        return Ok(Box::new(registry.with(stderr_layer(stderr))));
    };
    let file = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(LOG_FILE_PREFIX)
        .filename_suffix(LOG_FILE_SUFFIX)
        .max_log_files(MAX_LOG_FILES)
        .build(dir)
        .map_err(|e| LogError {
            dir: dir.to_owned(),
            source: Box::new(e),
        })?;
    // The appender writes synchronously (a small lock per line): no background thread whose
    // buffer would be lost when the agent exits on an error.
    let file_layer = fmt::layer().with_ansi(false).with_writer(file);
    Ok(Box::new(registry.with(file_layer).with(
        stderr_layer(stderr).with_filter(LevelFilter::from_level(Level::WARN)),
    )))
}

fn stderr_layer<S>(stderr: Stderr) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    match stderr {
        Stderr::Journal => Box::new(fmt::layer().with_writer(std::io::stderr).event_format(
            JournalFormat(format().without_time().with_ansi(false).with_target(true)),
        )),
        Stderr::Terminal => Box::new(fmt::layer().with_writer(std::io::stderr).with_ansi(true)),
        Stderr::Other => Box::new(fmt::layer().with_writer(std::io::stderr).with_ansi(false)),
    }
}

/// The plain format behind an sd-daemon(3) priority prefix: `<3>` error … `<7>` debug/trace.
struct JournalFormat(format::Format<format::Full, ()>);

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// syslog(3) priorities, as journald reads them.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn log_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    #[test]
    fn file_appears_and_receives_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("logs");
        std::fs::create_dir(&dir).unwrap();
        let sub = subscriber(EnvFilter::new("info"), Stderr::Other, Some(&dir)).unwrap();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(probe = "tcp", "first line");
            tracing::debug!("below the level");
            tracing::warn!("second line");
        });
        let files = log_files(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.strip_prefix("gopher.")
                .and_then(|r| r.strip_suffix(".log"))
                .is_some(),
            "{name}"
        );
        let text = std::fs::read_to_string(&files[0]).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("INFO") && lines[0].contains("first line probe=\"tcp\""),
            "{text}"
        );
        assert!(
            lines[1].contains("WARN") && lines[1].contains("second line"),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "no colour codes in files: {text:?}"
        );
    }

    #[test]
    fn an_unusable_directory_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let err = subscriber(EnvFilter::new("info"), Stderr::Other, Some(&file))
            .err()
            .expect("a file is no log directory");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    /// A writer into shared memory, standing in for the journald stream.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_carry_priority_and_no_timestamp_or_colour() {
        let out = Captured::default();
        let writer = out.clone();
        let layer = fmt::layer()
            .with_writer(move || writer.clone())
            .event_format(JournalFormat(
                format().without_time().with_ansi(false).with_target(true),
            ));
        let sub = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(sub, || {
            tracing::error!("broken");
            tracing::warn!("odd");
            tracing::info!(port = 8888, "serving");
            tracing::debug!("detail");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "<3>ERROR gopher::service::logging::tests: broken",
                "<4> WARN gopher::service::logging::tests: odd",
                "<6> INFO gopher::service::logging::tests: serving port=8888",
                "<7>DEBUG gopher::service::logging::tests: detail",
            ],
            "{text:?}"
        );
    }
}
