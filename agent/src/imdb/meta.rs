//! Table definitions ("meta"): which fields a table has, in which order, and what each one is.
//!
//! Field order is the positional order of a probe's output row (`|table|v1|…|vN|`).

use std::fmt;

/// What a field is for. Mirrors gala-gopher's meta `type` strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// Part of the record's identity, and a Prometheus label.
    Key,
    /// A Prometheus label only (not identity).
    Label,
    /// Monotonic number; exported as `<name>_total`.
    Counter,
    /// Number that goes up and down.
    Gauge,
    /// Distribution; see `egress::prometheus` for the value syntax.
    Histogram,
    /// Anything else ("Unknown" in old meta files): stored and sent to Kafka, never a sample.
    Unknown,
}

impl FieldType {
    /// Parses a meta `type` string; anything unrecognised is `Unknown`, as gala-gopher did.
    pub fn parse(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "key" => Self::Key,
            "label" => Self::Label,
            "counter" => Self::Counter,
            "gauge" => Self::Gauge,
            "histogram" => Self::Histogram,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Label => "label",
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Unknown => "unknown",
        }
    }

    /// Whether the field becomes a Prometheus sample (as opposed to a label or nothing).
    pub fn is_metric(self) -> bool {
        matches!(self, Self::Counter | Self::Gauge | Self::Histogram)
    }

    /// Whether the field becomes a Prometheus label.
    pub fn is_label(self) -> bool {
        matches!(self, Self::Key | Self::Label)
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMeta {
    pub name: String,
    pub ty: FieldType,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    pub name: String,
    pub description: String,
    /// In positional (wire) order.
    pub fields: Vec<FieldMeta>,
    /// Record cap of this table; `None`: `imdb.max_records_num`. Native probes size their own
    /// tables (a `tcp_link` per link of a busy node needs far more than the default 1024).
    pub max_records: Option<usize>,
}

impl TableMeta {
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// Number of fields that become Prometheus samples (what `max_metrics_num` limits).
    pub fn metric_count(&self) -> usize {
        self.fields.iter().filter(|f| f.ty.is_metric()).count()
    }
}
