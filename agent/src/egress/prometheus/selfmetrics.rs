//! Encodes the agent's own metrics (`crate::telemetry`: typed values) in the Prometheus
//! text exposition format: the registry itself writes no text.

use std::fmt::Write as _;

use super::{Format, om_header, write_f64, write_help_as, write_label_value};
use crate::telemetry::{Sample, SelfMetrics};

impl SelfMetrics {
    /// Appends every family that has at least one series, in declaration order, in the
    /// Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        self.render_format(out, Format::Text);
    }

    /// [`SelfMetrics::render`] in the given format (OpenMetrics: counters' family names
    /// without `_total`, the samples keep it).
    pub fn render_format(&self, out: &mut String, format: Format) {
        self.visit(|family| {
            let (name, ty) = om_header(family.name(), family.kind().as_str(), format);
            let _ = write!(out, "# HELP {name} ");
            write_help_as(out, family.help(), format);
            let _ = writeln!(out, "\n# TYPE {name} {ty}");
            for (values, sample) in family.series() {
                out.push_str(family.name());
                if !values.is_empty() {
                    out.push('{');
                    for (i, (label, value)) in family.labels().iter().zip(values).enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(label);
                        out.push_str("=\"");
                        write_label_value(out, value);
                        out.push('"');
                    }
                    out.push('}');
                }
                out.push(' ');
                match sample {
                    Sample::Counter(n) => out.push_str(itoa::Buffer::new().format(n)),
                    Sample::Gauge(v) => write_f64(out, v),
                }
                out.push('\n');
            }
        });
    }
}

/// All of `m`, rendered: for tests.
#[cfg(test)]
pub(crate) fn rendered(m: &SelfMetrics) -> String {
    let mut out = String::new();
    m.render(&mut out);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::rendered;
    use crate::telemetry::{PROBE_RESTARTS, SCRAPE_DURATION, SelfMetrics};

    #[test]
    fn renders_declared_families_in_order_with_escaping() {
        let m = SelfMetrics::new();
        m.counter(PROBE_RESTARTS, &[("probe", "a\"b\\c\nd")]).add(7);
        m.gauge(SCRAPE_DURATION, &[]).set(0.5);
        let version = env!("CARGO_PKG_VERSION");
        let revision = env!("GOPHER_REVISION");
        assert_eq!(
            rendered(&m),
            format!(
                "# HELP gopher_build_info Always 1; the labels carry the agent's version and the git revision it was built from (unknown when built outside a git checkout).\n\
                 # TYPE gopher_build_info gauge\n\
                 gopher_build_info{{version=\"{version}\",revision=\"{revision}\"}} 1\n\
                 # HELP gopher_probe_restarts_total Times the supervisor restarted the probe after it ended on its own (exit, crash, error).\n\
                 # TYPE gopher_probe_restarts_total counter\n\
                 gopher_probe_restarts_total{{probe=\"a\\\"b\\\\c\\nd\"}} 7\n\
                 # HELP gopher_scrape_duration_seconds Seconds the previous scrape spent taking the snapshot and rendering it.\n\
                 # TYPE gopher_scrape_duration_seconds gauge\n\
                 gopher_scrape_duration_seconds 0.5\n"
            )
        );
    }

    #[test]
    fn probe_state_is_one_hot_and_removable() {
        let m = SelfMetrics::new();
        m.set_probe_state("tcp", "starting");
        m.set_probe_state("tcp", "running");
        m.counter(PROBE_RESTARTS, &[("probe", "tcp")]).inc();
        let out = rendered(&m);
        assert!(out.contains("gopher_probe_state{probe=\"tcp\",state=\"running\"} 1\n"));
        assert!(out.contains("gopher_probe_state{probe=\"tcp\",state=\"starting\"} 0\n"));
        assert_eq!(out.matches("gopher_probe_state{").count(), 4);
        assert_eq!(m.forget_probe("tcp"), 5);
        assert!(!rendered(&m).contains("tcp"));
        m.counter(PROBE_RESTARTS, &[("probe", "x")]).inc();
        assert!(m.remove(PROBE_RESTARTS, &[("probe", "x")]));
        assert!(!m.remove(PROBE_RESTARTS, &[("probe", "x")]));
    }
}
