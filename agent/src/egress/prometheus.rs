//! Renders an imdb [`Snapshot`] (plus the agent's self-metrics) in the Prometheus text
//! exposition format 0.0.4, or in OpenMetrics 1.0 when the scraper asks for it ([`Format`]).
//!
//! OpenMetrics differs only in what is written once per family, never per sample (so both
//! cost the same): a counter family is named without its `_total` (`# TYPE x counter`, samples
//! `x_total`), `untyped` is spelt `unknown`, HELP escapes double quotes too, and the body ends
//! with `# EOF`. A family whose OpenMetrics name would clash with another's (a gauge `x` beside
//! a counter `x_total`) is left out there and counted like other clashes.
//!
//! Naming follows gala-gopher: every counter, gauge or histogram field becomes the family
//! `gala_gopher_<table>_<field>`, with one sample per record labelled by the record's `key` and
//! `label` fields in meta order (an empty one left out: same series). `unknown` fields never become samples, and neither does an
//! empty value ("no value"). Samples carry no timestamp: Prometheus stamps them at scrape time,
//! which is what the records' ageing already assumes.
//!
//! Adjustments so that `promtool check metrics` stays silent:
//! - counters get a `_total` suffix unless their field name already ends in one;
//! - gauges whose name ends in a suffix Prometheus reserves for other types (`_total`, `_count`,
//!   `_sum`, `_bucket`, e.g. gala-gopher's `link_count`) keep their name, for dashboards'
//!   sake, but are typed `untyped`: the lint only checks typed families;
//! - a family whose name or sample names clash with an earlier one (say field `rx_total` next
//!   to counter `rx`, or table `a_b` field `c` next to table `a` field `b_c`) is left out, and
//!   `gopher_prometheus_families_skipped` says how many were. So is a histogram in a table that
//!   has a `le` label.
//!
//! Values were parsed once when the row entered the agent (`imdb::value`) and are written as
//! numbers: integers exactly as the probe printed them, other numbers as the shortest decimal
//! that reads back as the same `f64` (a gauge printed as `1.50` is exported as `1.5`, `2.5e3`
//! as `2500`, a histogram bound `1e-3` as `0.001`).
//!
//! `[web_server] metric_names = "gala-gopher"` switches to gala-gopher HEAD's names
//! ([`naming`]): no `_total`, its field names, a `machine_id` label.
//!
//! Other lints (camelCase, abbreviated units such as `_us`) follow from the names in the meta
//! files and are not rewritten.
//!
//! Histogram values use the syntax of [`crate::imdb::histogram`]:
//! `"0.001=2 0.01=5 +Inf=7 sum=0.042"` (cumulative counts in increasing `le`, then `+Inf`, then
//! `sum`) renders as `<name>_bucket{…,le="0.001"} 2`, `…le="0.01"} 5`, `…le="+Inf"} 7`,
//! `<name>_sum{…} 0.042` and `<name>_count{…} 7`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io;

pub mod naming;
mod openmetrics;
pub(crate) mod selfmetrics;

pub use naming::Naming;
pub use openmetrics::{Format, OPENMETRICS_CONTENT_TYPE};
pub(crate) use openmetrics::{om_header, write_help_as};

use crate::imdb::{Column, FieldMeta, FieldType, Snapshot, TableSnapshot, ValueRef, number};
use crate::telemetry::{FAMILIES_SKIPPED, SelfMetrics};

/// The Content-Type of what [`render`] produces.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const RESERVED_SUFFIXES: [&str; 4] = ["_total", "_count", "_sum", "_bucket"];

/// [`render_to`] hands its text to the writer in pieces of about this size, so a large store is
/// never rendered whole into memory.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Appends the snapshot's samples, then the self-metrics, to `out`.
pub fn render(snapshot: &Snapshot, selfmetrics: &SelfMetrics, out: &mut String) {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = render_to(snapshot, selfmetrics, &Naming::Gopher, &mut bytes);
    out.push_str(&String::from_utf8_lossy(&bytes));
}

/// Writes the snapshot's samples, then the self-metrics, to `w` in pieces of about
/// [`CHUNK_BYTES`]. Values are written as stored: numbers were parsed once at ingest.
pub fn render_to(
    snapshot: &Snapshot,
    selfmetrics: &SelfMetrics,
    naming: &Naming,
    w: &mut impl io::Write,
) -> io::Result<()> {
    render_format_to(snapshot, selfmetrics, naming, Format::Text, w)
}

/// [`render_to`] in the given format.
pub fn render_format_to(
    snapshot: &Snapshot,
    selfmetrics: &SelfMetrics,
    naming: &Naming,
    format: Format,
    w: &mut impl io::Write,
) -> io::Result<()> {
    let mut out = String::with_capacity(CHUNK_BYTES + 4096);
    let mut taken = HashSet::new();
    let mut skipped = 0_u32;
    for table in &snapshot.tables {
        skipped += render_table(table, naming, format, &mut taken, &mut out, w)?;
    }
    selfmetrics
        .gauge(FAMILIES_SKIPPED, &[])
        .set(f64::from(skipped));
    selfmetrics.render_format(&mut out, format);
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    w.write_all(out.as_bytes())
}

fn flush_full(out: &mut String, w: &mut impl io::Write) -> io::Result<()> {
    if out.len() >= CHUNK_BYTES {
        w.write_all(out.as_bytes())?;
        out.clear();
    }
    Ok(())
}

/// Returns how many families were skipped for clashing names.
fn render_table(
    table: &TableSnapshot,
    naming: &Naming,
    format: Format,
    taken: &mut HashSet<String>,
    out: &mut String,
    w: &mut impl io::Write,
) -> io::Result<u32> {
    let meta = &table.meta;
    let label_fields: Vec<(usize, &FieldMeta)> = meta
        .fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.ty.is_label())
        .collect();
    let has_le = label_fields.iter().any(|(_, f)| f.name == "le");
    // Names chosen once per table: the per-sample loop below is the same in every naming.
    let label_names: Vec<&str> = label_fields
        .iter()
        .map(|(_, f)| naming.field(&meta.name, &f.name))
        .collect();
    let extra = naming.extra_label(|n| label_names.contains(&n));
    let metrics: Vec<(usize, &FieldMeta)> = meta
        .fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.ty.is_metric())
        .collect();
    if metrics.is_empty() {
        return Ok(0);
    }
    // One pass over the records: each one's label set as text, and each metric field's values
    // in a column. Every family reads them sequentially (see `Rows`).
    let rows = Rows::new(table, &label_fields, &metrics);

    let mut skipped = 0;
    let mut labels = String::new();
    let (mut le, mut bucket, mut sum, mut count_name) =
        (String::new(), String::new(), String::new(), String::new());
    for (m, &(_, field)) in metrics.iter().enumerate() {
        // Fields without a value in any record get no family at all.
        if !rows.present[m] {
            continue;
        }
        let family = Family::new(&meta.name, field, naming);
        let names = family.names(format);
        if names.iter().any(|n| taken.contains(n)) || (field.ty == FieldType::Histogram && has_le) {
            skipped += 1;
            continue;
        }
        taken.extend(names);

        let (header, ty) = family.header(format);
        let _ = write!(out, "# HELP {header} ");
        if field.description.trim().is_empty() {
            let _ = write!(
                out,
                "Field {} of gala-gopher table {}.",
                field.name, meta.name
            );
        } else {
            write_help_as(out, &field.description, format);
        }
        let _ = writeln!(out, "\n# TYPE {header} {ty}");
        if family.histogram {
            for (name, suffix) in [
                (&mut bucket, "_bucket"),
                (&mut sum, "_sum"),
                (&mut count_name, "_count"),
            ] {
                name.clear();
                name.push_str(&family.name);
                name.push_str(suffix);
            }
        }
        let mut label_values = rows.labels.iter();
        for v in rows.columns[m].iter() {
            let record_labels = label_values.by_ref().take(label_fields.len());
            if v.is_empty() {
                record_labels.for_each(drop);
                continue;
            }
            // Straight from the column: no copy of the values in between.
            write_labels(&mut labels, &label_names, record_labels, &extra);
            let labels = labels.as_str();
            if let ValueRef::Hist(h) = v {
                for (bound, n) in h.buckets() {
                    le.clear();
                    write_f64(&mut le, bound);
                    write_sample(out, &bucket, labels, Some(&le), ValueRef::U64(n));
                }
                let count = ValueRef::U64(h.count());
                write_sample(out, &bucket, labels, Some("+Inf"), count);
                write_sample(out, &sum, labels, None, ValueRef::F64(h.sum()));
                write_sample(out, &count_name, labels, None, count);
            } else {
                write_sample(out, &family.name, labels, None, v);
            }
            flush_full(out, w)?;
        }
    }
    Ok(skipped)
}

/// What every family of a table reads from its records, gathered in one pass: the label
/// values of every record and each metric field's values, packed in [`Column`]s (the store's
/// form: a few bytes a number), with whether each metric field has any value. A family reads
/// them sequentially: decoding each record whole again for every one of its ~10 samples, a
/// cache miss each at 100 k records, was most of the render's time. Held for the render's
/// duration: ~65 bytes a `tcp_link` row (~7 MB at 100 k links). Keeping each row's label set
/// as text instead (~150 bytes a row) saves formatting it again per sample: measured at 100 k
/// links (1 M samples, 183 MB), plain scrape 0.45 s against 0.69 s, gzip 0.50 against 0.63,
/// but the agent's RSS rose by 21 MB during a scrape against 11 MB, with the RSS goal at 80 MB.
struct Rows {
    /// Every record's label field values, record after record.
    labels: Column,
    /// Per metric field.
    columns: Vec<Column>,
    present: Vec<bool>,
}

impl Rows {
    fn new(
        table: &TableSnapshot,
        label_fields: &[(usize, &FieldMeta)],
        metrics: &[(usize, &FieldMeta)],
    ) -> Self {
        let mut rows = Self {
            labels: Column::default(),
            columns: vec![Column::default(); metrics.len()],
            present: vec![false; metrics.len()],
        };
        let mut values = Vec::new();
        for record in &table.records {
            table.values(record, &mut values);
            for &(i, _) in label_fields {
                rows.labels.push(values[i]);
            }
            for (m, &(i, _)) in metrics.iter().enumerate() {
                rows.present[m] |= !values[i].is_empty();
                rows.columns[m].push(values[i]);
            }
        }
        rows
    }
}

/// A record's label set: its key and label fields under their exported names, then `extra`.
#[inline]
fn write_labels<'v>(
    labels: &mut String,
    names: &[&str],
    values: impl Iterator<Item = ValueRef<'v>>,
    extra: &str,
) {
    labels.clear();
    for (name, value) in names.iter().zip(values) {
        // An empty label value is the same series as no label (Prometheus data model):
        // leaving it out keeps bodies small, e.g. the container labels of a host process's rows.
        if matches!(value, ValueRef::Empty) || matches!(value, ValueRef::Str(s) if s.is_empty()) {
            continue;
        }
        if !labels.is_empty() {
            labels.push(',');
        }
        labels.push_str(name);
        labels.push_str("=\"");
        write_label(labels, value);
        labels.push('"');
    }
    if !extra.is_empty() {
        if !labels.is_empty() {
            labels.push(',');
        }
        labels.push_str(extra);
    }
}

struct Family {
    name: String,
    ty: &'static str,
    histogram: bool,
}

impl Family {
    fn new(table: &str, field: &FieldMeta, naming: &Naming) -> Self {
        let base = format!("gala_gopher_{table}_{}", naming.field(table, &field.name));
        let reserved = RESERVED_SUFFIXES.iter().any(|s| base.ends_with(s));
        match field.ty {
            FieldType::Counter if base.ends_with("_total") || !naming.total_suffix() => Self {
                name: base,
                ty: "counter",
                histogram: false,
            },
            FieldType::Counter => Self {
                name: base + "_total",
                ty: "counter",
                histogram: false,
            },
            FieldType::Histogram => Self {
                name: base,
                ty: "histogram",
                histogram: true,
            },
            _ if reserved => Self {
                name: base,
                ty: "untyped",
                histogram: false,
            },
            _ => Self {
                name: base,
                ty: "gauge",
                histogram: false,
            },
        }
    }

    /// The family name and every sample name it produces (in OpenMetrics also a counter's
    /// name without `_total`, which is its family name there).
    fn names(&self, format: Format) -> Vec<String> {
        let mut names = vec![self.name.clone()];
        if self.histogram {
            names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{}{s}", self.name)));
        }
        if format == Format::OpenMetrics {
            let (header, _) = self.header(format);
            if header != self.name {
                names.push(header.to_owned());
            }
        }
        names
    }

    /// The name and type of the HELP/TYPE lines.
    fn header(&self, format: Format) -> (&str, &'static str) {
        om_header(&self.name, self.ty, format)
    }
}

fn write_sample(out: &mut String, name: &str, labels: &str, le: Option<&str>, value: ValueRef<'_>) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str("le=\"");
            out.push_str(le);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    write_number(out, value);
    out.push('\n');
}

/// A number as the exposition format wants it (integers as integers).
fn write_number(out: &mut String, value: ValueRef<'_>) {
    match value {
        ValueRef::U64(v) => out.push_str(itoa::Buffer::new().format(v)),
        ValueRef::I64(v) => out.push_str(itoa::Buffer::new().format(v)),
        ValueRef::F64(v) => write_f64(out, v),
        // The store keeps only numbers in metric fields.
        ValueRef::Empty | ValueRef::Str(_) | ValueRef::Hist(_) => {}
    }
}

/// A key or label value: text escaped, numbers as written by [`write_number`].
fn write_label(out: &mut String, value: ValueRef<'_>) {
    match value {
        ValueRef::Str(s) => write_label_value(out, s),
        ValueRef::Hist(_) => {}
        v => write_number(out, v),
    }
}

/// Formats per the exposition format (`+Inf`, `-Inf`, `NaN`, else the shortest exact decimal):
/// the values' own text form (`imdb::number`).
pub(crate) fn write_f64(out: &mut String, v: f64) {
    let _ = number::write_f64(out, v);
}

/// Label values escape backslash, double quote and newline.
pub(crate) fn write_label_value(out: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes backslash and newline (quotes stay as they are).
pub(crate) fn write_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests;
