//! Errors of the config and meta readers.
//!
//! Every complaint about a file's content is a [`Diagnostic`] that names the file, the line and
//! column, and the key path, so an operator can go straight to the offending spot. Readers keep
//! going after the first problem where they can, so one run shows every mistake in a file.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What went wrong, for callers that want to react to a class of problem (and for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiagnosticKind {
    /// The text is not TOML / libconfig at all.
    Syntax,
    /// A key that this section does not know (often a typo).
    UnknownKey,
    /// A value of the wrong TOML type (string where an integer belongs, …).
    WrongType,
    /// A number outside its allowed range.
    OutOfRange,
    /// A value of the right type that is still not acceptable (unknown switch word, bad topic…).
    InvalidValue,
    /// A key that must be present is not.
    Missing,
    /// A name that must be unique is used twice.
    Duplicate,
}

/// One problem at one place in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, counted in characters.
    pub column: usize,
    /// Dotted key path such as `extend_probes[2].start_check`; empty for syntax errors.
    pub key: String,
    pub kind: DiagnosticKind,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or directory could not be read at all.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The content is wrong; one diagnostic per problem, printed one per line.
    #[error("{}", DisplayLines(diagnostics))]
    Invalid { diagnostics: Vec<Diagnostic> },
}

impl ConfigError {
    /// The content problems (empty for [`ConfigError::Read`]).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Self::Read { .. } => &[],
            Self::Invalid { diagnostics } => diagnostics,
        }
    }
}

struct DisplayLines<'a>(&'a [Diagnostic]);

impl fmt::Display for DisplayLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Maps byte offsets to line:column; built once per file so many diagnostics stay cheap.
pub(crate) struct LineIndex<'t> {
    text: &'t str,
    line_starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, line_starts }
    }

    /// 1-based (line, column); offsets past the end land on the last position.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        // Offsets from the toml crate are char boundaries, but be defensive: a slice on a
        // non-boundary would panic, and a slightly-off column is better than a crash.
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, column)
    }
}

/// Collects diagnostics for one file.
pub(crate) struct Reporter<'t> {
    file: PathBuf,
    index: LineIndex<'t>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl<'t> Reporter<'t> {
    pub(crate) fn new(file: &Path, text: &'t str) -> Self {
        Self {
            file: file.to_path_buf(),
            index: LineIndex::new(text),
            diagnostics: Vec::new(),
        }
    }

    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        self.index.position(offset)
    }

    pub(crate) fn report(
        &mut self,
        span: &Range<usize>,
        key: &str,
        kind: DiagnosticKind,
        message: impl Into<String>,
    ) {
        let (line, column) = self.index.position(span.start);
        self.diagnostics.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            key: key.to_owned(),
            kind,
            message: message.into(),
        });
    }

    /// `Ok(value)` when nothing was reported, else every diagnostic.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.diagnostics.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError::Invalid {
                diagnostics: self.diagnostics,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_chars() {
        let idx = LineIndex::new("ab\nçd = 1\n\nx");
        assert_eq!(idx.position(0), (1, 1));
        assert_eq!(idx.position(2), (1, 3));
        assert_eq!(idx.position(3), (2, 1));
        // 'ç' is two bytes, one column.
        assert_eq!(idx.position(5), (2, 2));
        assert_eq!(idx.position(12), (4, 1));
        assert_eq!(idx.position(999), (4, 2));
    }

    #[test]
    fn display_prints_one_diagnostic_per_line() {
        let d = |line, key: &str| Diagnostic {
            file: PathBuf::from("probes.toml"),
            line,
            column: 3,
            key: key.to_owned(),
            kind: DiagnosticKind::InvalidValue,
            message: "bad".to_owned(),
        };
        let err = ConfigError::Invalid {
            diagnostics: vec![d(1, "a.b"), d(2, "")],
        };
        assert_eq!(
            err.to_string(),
            "probes.toml:1:3: a.b: bad\nprobes.toml:2:3: bad"
        );
        assert_eq!(err.diagnostics().len(), 2);
    }
}
