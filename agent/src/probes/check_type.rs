//! How an `auto` probe's start check answers: shared by the settings (extension probes' configured
//! checks) and the native probes' built-in ones (`registry`), so it lives apart from both.

/// How an `auto` probe's start check answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CheckType {
    /// Start if the check's first output line is an integer > 0 (gala-gopher's only kind).
    #[default]
    Count,
    /// Start if the check exits with status 0.
    Exit,
}

impl CheckType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Exit => "exit",
        }
    }
}

impl std::fmt::Display for CheckType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
