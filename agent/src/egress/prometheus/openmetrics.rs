//! OpenMetrics 1.0 beside the Prometheus text format: which one a scrape gets (`Accept`), and
//! the per-family differences (header names and types, HELP escaping); the samples are the
//! same bytes in both, so the OpenMetrics body costs what the text one does. The renderer
//! (`super`) asks these at each family header, and appends `# EOF`.

use super::{CONTENT_TYPE, write_help};

/// The Content-Type of [`Format::OpenMetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition format of a render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Prometheus text format 0.0.4 (the default).
    #[default]
    Text,
    /// OpenMetrics 1.0 text (`Accept: application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }

    /// From the scrape's `Accept` header values: OpenMetrics when it is acceptable (q > 0)
    /// and weighted at least as high as the text format (`text/plain`, `text/*`, `*/*`).
    /// Prometheus lists OpenMetrics first by default; curl's `*/*` gets text.
    pub fn negotiate<'a>(accept: impl IntoIterator<Item = &'a str>) -> Self {
        let (mut om, mut text) = (0.0_f64, 0.0_f64);
        let mut any = false;
        for range in accept.into_iter().flat_map(|v| v.split(',')) {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim();
            if media.is_empty() {
                continue;
            }
            any = true;
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f64>().ok())
                .unwrap_or(1.0);
            if media.eq_ignore_ascii_case("application/openmetrics-text") {
                om = om.max(q);
            } else if ["text/plain", "text/*", "*/*"]
                .iter()
                .any(|m| media.eq_ignore_ascii_case(m))
            {
                text = text.max(q);
            }
        }
        if any && om > 0.0 && om >= text {
            Self::OpenMetrics
        } else {
            Self::Text
        }
    }
}

/// The family name and type of the HELP/TYPE lines: as given in the text format; in
/// OpenMetrics a counter is named without `_total` and `untyped` is `unknown`. A counter
/// whose samples have no `_total` (gala-gopher naming) is `unknown` there: OpenMetrics
/// requires the suffix on counter samples, and the name is what dashboards query.
pub(crate) fn om_header<'a>(
    name: &'a str,
    ty: &'static str,
    format: Format,
) -> (&'a str, &'static str) {
    match (format, ty) {
        (Format::OpenMetrics, "counter") => match name.strip_suffix("_total") {
            Some(family) => (family, ty),
            None => (name, "unknown"),
        },
        (Format::OpenMetrics, "untyped") => (name, "unknown"),
        _ => (name, ty),
    }
}

/// HELP text as the format escapes it: OpenMetrics escapes double quotes too.
pub(crate) fn write_help_as(out: &mut String, v: &str, format: Format) {
    match format {
        Format::Text => write_help(out, v),
        Format::OpenMetrics => {
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '"' => out.push_str("\\\""),
                    c => out.push(c),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::tests::{field, table};
    use super::super::{Naming, render_format_to, render_to};
    use super::*;
    use crate::imdb::{FieldType, Snapshot};
    use crate::telemetry::{PROBE_RESTARTS, SelfMetrics};

    #[test]
    fn negotiation_follows_the_weights() {
        let om = |accept: &[&str]| Format::negotiate(accept.iter().copied());
        // Prometheus 2.x and 3.x defaults.
        assert_eq!(
            om(&[
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            ]),
            Format::OpenMetrics
        );
        assert_eq!(
            om(&[
                "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
            ]),
            Format::OpenMetrics
        );
        assert_eq!(om(&["Application/OpenMetrics-Text"]), Format::OpenMetrics);
        // Text when asked first, for anything else, and without the header.
        assert_eq!(
            om(&["text/plain;version=0.0.4,application/openmetrics-text;q=0.5"]),
            Format::Text
        );
        assert_eq!(om(&["*/*"]), Format::Text);
        assert_eq!(om(&[]), Format::Text);
        assert_eq!(om(&["application/openmetrics-text;q=0"]), Format::Text);
        assert_eq!(
            om(&["application/json", "application/openmetrics-text"]),
            Format::OpenMetrics
        );
    }

    #[test]
    fn families_are_named_and_typed_as_openmetrics_wants() {
        let fields = vec![
            field("host", FieldType::Key, ""),
            field("rx_bytes", FieldType::Counter, "Bytes \"received\"."),
            field("link_count", FieldType::Gauge, "Links."),
            field("rtt", FieldType::Histogram, "Round trips."),
            field("load", FieldType::Gauge, "Load."),
        ];
        let t = table(
            "t",
            fields,
            &[&["a", "7", "3", "0.001=2 +Inf=3 sum=0.5", "0.5"]],
        );
        let metrics = SelfMetrics::new();
        metrics.counter(PROBE_RESTARTS, &[("probe", "p")]).add(2);
        let mut om = Vec::new();
        render_format_to(
            &Snapshot {
                tables: vec![t.clone()],
            },
            &metrics,
            &Naming::Gopher,
            Format::OpenMetrics,
            &mut om,
        )
        .unwrap();
        let om = String::from_utf8(om).unwrap();
        for line in [
            "# HELP gala_gopher_t_rx_bytes Bytes \\\"received\\\".\n# TYPE gala_gopher_t_rx_bytes counter\ngala_gopher_t_rx_bytes_total{host=\"a\"} 7\n",
            "# TYPE gala_gopher_t_link_count unknown\ngala_gopher_t_link_count{host=\"a\"} 3\n",
            "# TYPE gala_gopher_t_rtt histogram\ngala_gopher_t_rtt_bucket{host=\"a\",le=\"0.001\"} 2\n",
            "# TYPE gala_gopher_t_load gauge\n",
            "# TYPE gopher_probe_restarts counter\ngopher_probe_restarts_total{probe=\"p\"} 2\n",
        ] {
            assert!(om.contains(line), "{line} not in:\n{om}");
        }
        assert!(om.ends_with("\n# EOF\n"), "{om}");
        assert_eq!(om.matches("# EOF").count(), 1);

        // The text format is untouched: same samples, its own headers, no EOF.
        let mut text = Vec::new();
        render_to(
            &Snapshot { tables: vec![t] },
            &metrics,
            &Naming::Gopher,
            &mut text,
        )
        .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("# TYPE gala_gopher_t_rx_bytes_total counter\n"));
        assert!(text.contains("# HELP gala_gopher_t_rx_bytes_total Bytes \"received\".\n"));
        assert!(text.contains("# TYPE gala_gopher_t_link_count untyped\n"));
        assert!(!text.contains("# EOF"));
        let samples = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| {
                    !l.starts_with('#') && !l.starts_with("gopher_") && !l.starts_with("process_")
                })
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(&text), samples(&om));
    }

    #[test]
    fn a_gauge_clashing_with_a_counters_family_name_is_left_out_in_openmetrics_only() {
        let fields = vec![
            field("host", FieldType::Key, ""),
            field("rx_total", FieldType::Counter, ""),
            field("rx", FieldType::Gauge, ""),
        ];
        let t = table("t", fields, &[&["a", "7", "3"]]);
        let render = |format| {
            let mut out = Vec::new();
            render_format_to(
                &Snapshot {
                    tables: vec![t.clone()],
                },
                &SelfMetrics::new(),
                &Naming::Gopher,
                format,
                &mut out,
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(render(Format::Text).contains("\ngala_gopher_t_rx{host=\"a\"} 3\n"));
        let om = render(Format::OpenMetrics);
        assert!(
            om.contains("gala_gopher_t_rx_total{host=\"a\"} 7\n"),
            "{om}"
        );
        assert!(!om.contains("gala_gopher_t_rx{"), "{om}");
        assert!(
            om.contains("gopher_prometheus_families_skipped 1\n"),
            "{om}"
        );
    }
}
