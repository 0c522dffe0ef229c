//! `[global]`: where the agent logs and how much.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::Reporter;
use super::node::{Node, TableView};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// `None` = log to stderr (journald picks it up under systemd).
    pub log_directory: Option<PathBuf>,
    pub log_level: LogLevel,
    /// `container_labels`: container and pod labels on every table keyed by a process
    /// (gala-gopher's `container_id` … `pod_namespace`). On by default.
    pub container_labels: bool,
}

impl Default for Global {
    fn default() -> Self {
        Self {
            log_directory: None,
            log_level: LogLevel::default(),
            container_labels: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    const WORDS: [&'static str; 5] = ["error", "warn", "info", "debug", "trace"];
    const ALL: [LogLevel; 5] = [
        Self::Error,
        Self::Warn,
        Self::Info,
        Self::Debug,
        Self::Trace,
    ];

    pub fn as_str(self) -> &'static str {
        Self::WORDS[self as usize]
    }
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(super) fn global(rep: &mut Reporter<'_>, node: Option<&Spanned<Node>>, base: &Path) -> Global {
    let mut out = Global::default();
    let Some(t) = node.and_then(|n| {
        TableView::of(
            rep,
            n,
            "global".into(),
            &["log_directory", "log_level", "container_labels"],
            true,
        )
    }) else {
        return out;
    };
    if let Some((dir, _)) = t.string(rep, "log_directory") {
        out.log_directory = (!dir.is_empty()).then(|| base.join(dir));
    }
    if let Some((i, _)) = t.word(rep, "log_level", &LogLevel::WORDS) {
        out.log_level = LogLevel::ALL[i];
    }
    if let Some((i, _)) = t.word(rep, "container_labels", &["on", "off"]) {
        out.container_labels = i == 0;
    }
    out
}
