//! A table's rows on every output at once, for the tests that start a real proxy: beside the
//! test's own agent (default naming, /metrics checked by the test), the same agent sends to a
//! real Kafka broker and a second agent runs the same probes with `[web_server] metric_names =
//! "gala-gopher"`. [`Outputs::check`] then holds the rows the test found on /metrics against
//! Kafka (topic `gala_gopher`, gala-gopher's flat JSON: every field a string, `table_name`
//! right, no field more or less) and against promtool in both namings (default: clean;
//! gala-gopher: only the `_total` lint that naming requires). One place, so that each proxy's
//! test extends its own setup instead of starting a slow one of its own per output.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde_json::Value;

use super::{
    Agent,
    kafka::{Broker, Consumer, ROWS, check_envelope, kafka_available, now_ms, rows},
    promtool_says, require,
};

const WAIT: Duration = Duration::from_secs(30);

pub struct Outputs {
    /// Default naming, Kafka on when a broker could run.
    pub agent: Agent,
    /// `metric_names = "gala-gopher"`, same probes.
    gala: Agent,
    kafka: Option<(Broker, Consumer)>,
    since: i64,
}

impl Outputs {
    /// Both agents with the probe sections `probes` (`[supervision]` and `[[probes]]`), and the
    /// broker (skipped, loudly, without tansu or the Python client).
    pub fn start(probes: &str) -> Outputs {
        let since = now_ms();
        let kafka = kafka_available().map(|bin| {
            let mut broker = Broker::new(bin, super::free_port());
            broker.start();
            let consumer = Consumer::start(&broker, &[ROWS]);
            (broker, consumer)
        });
        let agent = match &kafka {
            Some((broker, _)) => Agent::start(&format!(
                "{probes}\n[egress]\ninterval = 1\n[kafka]\nswitch = \"on\"\nkafka_broker = \"{}\"\n",
                broker.addr()
            )),
            None => Agent::start(probes),
        };
        let gala = Agent::start_file(
            "probes.toml",
            |port, control| {
                format!(
                    "{probes}\n[web_server]\nbind_addr = \"127.0.0.1\"\nport = {port}\n\
                     metric_names = \"gala-gopher\"\n[control]\nlisten = \"127.0.0.1:{control}\"\n"
                )
            },
            None,
        );
        Outputs {
            agent,
            gala,
            kafka,
            since,
        }
    }

    /// `expect` (values of `keys`, in order, to `link_count`) are the rows of `table` whose
    /// `virtual_ip` is `vip`, as the test saw them on the default agent's /metrics: the same
    /// rows must reach Kafka and the gala-gopher-named /metrics, and both expositions must
    /// pass promtool.
    pub fn check(
        &self,
        table: &str,
        keys: &[&str],
        vip: &str,
        expect: &BTreeMap<Vec<String>, f64>,
    ) {
        assert!(!expect.is_empty(), "nothing to check");
        if require(super::have("promtool", &["--version"]), "promtool") {
            let body = self.agent.raw();
            assert!(
                body.contains(&format!("gala_gopher_{table}_link_count{{")),
                "{body}"
            );
            let said = promtool_says(&body);
            assert!(said.trim().is_empty(), "promtool on {table}:\n{said}");
            self.check_gala_naming(table, vip);
        }
        if let Some((_, consumer)) = &self.kafka {
            check_kafka(consumer, table, keys, vip, expect, self.since);
        }
    }

    /// The gala-gopher-named /metrics shows rows of ours (their number follows that agent's
    /// own intervals), each with `machine_id`, and promtool says nothing but the `_total` lint.
    fn check_gala_naming(&self, table: &str, vip: &str) {
        let family = format!("gala_gopher_{table}_link_count{{");
        let vip = format!("virtual_ip=\"{vip}\"");
        let ours = |body: &str| -> Vec<String> {
            body.lines()
                .filter(|l| l.starts_with(&family) && l.contains(&vip))
                .map(str::to_owned)
                .collect()
        };
        let start = std::time::Instant::now();
        let mut body = self.gala.raw();
        while ours(&body).is_empty() {
            assert!(
                start.elapsed() < WAIT,
                "gala-gopher naming: no rows of {table}:\n{body}"
            );
            std::thread::sleep(Duration::from_millis(250));
            body = self.gala.raw();
        }
        for line in ours(&body) {
            assert!(line.contains("machine_id=\""), "{line}");
        }
        assert_only_the_total_lint(&body);
    }
}

/// Every row of `expect` arrives on Kafka with exactly the table's fields, as strings.
fn check_kafka(
    consumer: &Consumer,
    table: &str,
    keys: &[&str],
    vip: &str,
    expect: &BTreeMap<Vec<String>, f64>,
    since: i64,
) {
    let want: Vec<BTreeMap<&str, String>> = expect
        .iter()
        .map(|(k, n)| {
            keys.iter()
                .copied()
                .zip(k.iter().cloned())
                .chain([("link_count", format!("{n}"))])
                .collect()
        })
        .collect();
    let ours = |m: &[super::kafka::Msg]| -> Vec<BTreeMap<String, Value>> {
        rows(m, table)
            .into_iter()
            .filter(|r| r.get("virtual_ip") == Some(&Value::from(vip)))
            .collect()
    };
    let matches = |row: &BTreeMap<String, Value>, w: &BTreeMap<&str, String>| {
        w.iter()
            .all(|(f, v)| row.get(*f) == Some(&Value::from(v.as_str())))
    };
    let got = consumer.wait_for(WAIT, &format!("{table} rows on Kafka"), |m| {
        let r = ours(m);
        want.iter().all(|w| r.iter().any(|x| matches(x, w)))
    });
    let fields: BTreeSet<&str> = [
        "timestamp",
        "hostname",
        "machine_id",
        "table_name",
        "link_count",
    ]
    .into_iter()
    .chain(keys.iter().copied())
    .collect();
    for row in ours(&got) {
        check_envelope(&row, table, since);
        let have: BTreeSet<&str> = row.keys().map(String::as_str).collect();
        // Rows keyed by a pid also carry the container attribution labels, nothing else more.
        let more: BTreeSet<&str> = have.difference(&fields).copied().collect();
        assert!(
            fields.is_subset(&have)
                && (more.is_empty() || more == gopher::attrib::LABELS.into_iter().collect()),
            "fields {have:?}, wanted {fields:?} (and the attribution labels if keyed by pid)"
        );
    }
}

/// promtool: the only complaint is the missing `_total`, once per gala_gopher counter family
/// (gala-gopher naming keeps them counters without the suffix), and nothing else.
pub fn assert_only_the_total_lint(body: &str) -> BTreeSet<String> {
    let counters: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .filter(|n| n.starts_with("gala_gopher_") && !n.ends_with("_total"))
        .map(str::to_owned)
        .collect();
    let flagged: BTreeSet<String> = promtool_says(body)
        .lines()
        .map(|p| {
            p.strip_suffix(" counter metrics should have \"_total\" suffix")
                .unwrap_or_else(|| panic!("unexpected promtool problem: {p}"))
                .to_owned()
        })
        .collect();
    assert_eq!(flagged, counters);
    counters
}
