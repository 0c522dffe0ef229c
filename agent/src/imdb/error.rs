//! Why the store refused a row or a table definition.

/// Every variant names the table concerned; [`ImdbError::reason`] gives the short label used
/// in drop accounting (`gopher_rows_dropped_total{reason}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImdbError {
    #[error("table {table:?} is not registered")]
    UnknownTable { table: String },
    #[error("table {table:?} has {expected} fields but the row carries {got} values")]
    FieldCount {
        table: String,
        expected: usize,
        got: usize,
    },
    #[error("table {table:?} field {field:?}: {why}: {value:?}")]
    BadValue {
        table: String,
        field: String,
        value: String,
        why: &'static str,
    },
    #[error("table {table:?} already holds its limit of {limit} records; new key refused")]
    RecordLimit { table: String, limit: usize },
    #[error("cannot register table {table:?}: the store already holds its limit of {limit} tables")]
    TableLimit { table: String, limit: usize },
    #[error("table {table:?} declares {count} metric fields, more than the limit of {limit}")]
    MetricLimit {
        table: String,
        count: usize,
        limit: usize,
    },
    #[error("invalid definition of table {table:?}: {why}")]
    InvalidMeta { table: String, why: String },
}

impl ImdbError {
    /// Short, stable label for accounting (a Prometheus label value, so keep it fixed).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownTable { .. } => "unknown_table",
            Self::FieldCount { .. } => "field_count",
            Self::BadValue { .. } => "bad_value",
            Self::RecordLimit { .. } => "record_limit",
            Self::TableLimit { .. } => "table_limit",
            Self::MetricLimit { .. } => "metric_limit",
            Self::InvalidMeta { .. } => "invalid_meta",
        }
    }

    /// The table the error is about.
    pub fn table(&self) -> &str {
        match self {
            Self::UnknownTable { table }
            | Self::FieldCount { table, .. }
            | Self::BadValue { table, .. }
            | Self::RecordLimit { table, .. }
            | Self::TableLimit { table, .. }
            | Self::MetricLimit { table, .. }
            | Self::InvalidMeta { table, .. } => table,
        }
    }
}
