//! A strict reader of the Prometheus text format 0.0.4 and OpenMetrics 1.0, written from the
//! specifications (not from gopher's writer) so that the `exposition` target checks the
//! writer's output against an independent reading.
//!
//! Strict where the formats are: metric and label names by their grammar, label values with
//! only the `\\`, `\"`, `\n` escapes, values as Prometheus' float syntax (`+Inf`, `-Inf`, `NaN`),
//! one `# TYPE` per family before its samples, a family's samples in one group, no series
//! twice, unique label names per sample, histograms with increasing `le` and non-decreasing
//! counts ending in `+Inf` = `_count`, and in OpenMetrics `_total` counters and a final
//! `# EOF`. Any breach panics with the line, which is what a fuzz target wants.

use std::collections::{HashMap, HashSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// What [`parse`] read: samples in order, and the TYPE of each family.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub types: HashMap<String, String>,
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Prometheus' float syntax, with `+Inf`, `-Inf` and `NaN` spelt exactly so.
fn value(s: &str, line: &str) -> f64 {
    match s {
        "+Inf" => return f64::INFINITY,
        "-Inf" => return f64::NEG_INFINITY,
        "NaN" => return f64::NAN,
        _ => {}
    }
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let exp_ok = exp.is_none_or(|e| {
        let d = e.strip_prefix(['+', '-']).unwrap_or(e);
        !d.is_empty() && digits(d)
    });
    let ok = !(int.is_empty() && frac.is_empty()) && digits(int) && digits(frac) && exp_ok;
    assert!(ok, "bad sample value {s:?} in {line:?}");
    s.parse().unwrap_or_else(|_| panic!("unparsable value {s:?} in {line:?}"))
}

/// Reads `{name="value",…}` from the start of `rest`; returns the labels and what follows.
fn labels<'a>(rest: &'a str, line: &str) -> (Vec<(String, String)>, &'a str) {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut s = rest.strip_prefix('{').unwrap_or_else(|| panic!("no '{{' in {line:?}"));
    loop {
        if let Some(after) = s.strip_prefix('}') {
            return (out, after);
        }
        let (name, after) = s.split_once("=\"").unwrap_or_else(|| panic!("no '=\"' in {line:?}"));
        assert!(is_label_name(name), "bad label name {name:?} in {line:?}");
        assert!(out.iter().all(|(n, _)| n != name), "label {name:?} twice in {line:?}");
        let mut v = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next().unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
            match c {
                '"' => break i,
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('\\') => v.push('\\'),
                    Some('"') => v.push('"'),
                    Some('n') => v.push('\n'),
                    other => panic!("bad escape \\{other:?} in label value of {line:?}"),
                },
                c => v.push(c),
            }
        };
        out.push((name.to_owned(), v));
        s = &after[end + 1..];
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else {
            assert!(s.starts_with('}'), "no ',' or '}}' after label in {line:?}");
        }
    }
}

/// HELP text: only the escapes the format allows (`\"` in OpenMetrics only).
fn check_help(text: &str, openmetrics: bool, line: &str) {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\\' | 'n') => {}
                Some('"') if openmetrics => {}
                other => panic!("bad escape \\{other:?} in HELP of {line:?}"),
            },
            '"' => assert!(!openmetrics, "unescaped '\"' in OpenMetrics HELP {line:?}"),
            _ => {}
        }
    }
}

/// The family a sample belongs to, given the TYPEs declared so far.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>, openmetrics: bool) -> &'a str {
    let suffixed = |suffix: &str, allowed: &[&str]| {
        name.strip_suffix(suffix)
            .filter(|base| types.get(*base).is_some_and(|t| allowed.contains(&t.as_str())))
    };
    if openmetrics
        && let Some(base) = suffixed("_total", &["counter"])
    {
        return base;
    }
    if let Some(base) = suffixed("_bucket", &["histogram"])
        .or_else(|| suffixed("_sum", &["histogram"]))
        .or_else(|| suffixed("_count", &["histogram"]))
    {
        return base;
    }
    name
}

/// Parses a whole body; panics on the first breach of the format.
pub fn parse(body: &str, openmetrics: bool) -> Exposition {
    let mut exp = Exposition::default();
    let mut helps = HashSet::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    let mut eof = false;
    assert!(body.is_empty() || body.ends_with('\n'), "body does not end with a newline");
    for line in body.lines() {
        assert!(!eof, "content after # EOF: {line:?}");
        let mut switch_to = |family: &str, current: &mut Option<String>| {
            if current.as_deref() != Some(family) {
                assert!(!done.contains(family), "family {family} split in two groups at {line:?}");
                if let Some(prev) = current.take() {
                    done.insert(prev);
                }
                *current = Some(family.to_owned());
            }
        };
        if let Some(rest) = line.strip_prefix("# ") {
            if rest == "EOF" {
                assert!(openmetrics, "# EOF in the text format");
                eof = true;
                continue;
            }
            let (kind, rest) = rest.split_once(' ').unwrap_or_else(|| panic!("bad comment {line:?}"));
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(is_metric_name(name), "bad family name {name:?} in {line:?}");
            switch_to(name, &mut current);
            match kind {
                "HELP" => {
                    assert!(helps.insert(name.to_owned()), "second HELP for {name}");
                    check_help(text, openmetrics, line);
                }
                "TYPE" => {
                    let allowed: &[&str] = if openmetrics {
                        &["counter", "gauge", "histogram", "gaugehistogram", "stateset", "info", "summary", "unknown"]
                    } else {
                        &["counter", "gauge", "histogram", "summary", "untyped"]
                    };
                    assert!(allowed.contains(&text), "bad type {text:?} in {line:?}");
                    let had = exp.types.insert(name.to_owned(), text.to_owned());
                    assert!(had.is_none(), "second TYPE for {name}");
                    assert!(
                        !exp.samples.iter().any(|s| family_of(&s.name, &exp.types, openmetrics) == name),
                        "TYPE for {name} after its samples"
                    );
                }
                other => panic!("unexpected comment {other:?} in {line:?}"),
            }
            continue;
        }
        assert!(!line.is_empty() && !line.starts_with('#'), "bad line {line:?}");
        let cut = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..cut];
        assert!(is_metric_name(name), "bad metric name {name:?} in {line:?}");
        let (labels, rest) = if line[cut..].starts_with('{') {
            labels(&line[cut..], line)
        } else {
            (Vec::new(), &line[cut..])
        };
        let v = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no ' ' before value in {line:?}"));
        assert!(!v.contains(' '), "timestamp or junk after value in {line:?}");
        let value = value(v, line);
        let family = family_of(name, &exp.types, openmetrics).to_owned();
        let ty = exp.types.get(&family).unwrap_or_else(|| panic!("sample without TYPE: {line:?}"));
        if openmetrics && ty == "counter" {
            assert!(name.ends_with("_total"), "OpenMetrics counter sample without _total: {line:?}");
        }
        if ty == "counter" {
            assert!(value >= 0.0 || value.is_nan(), "negative counter: {line:?}");
        }
        switch_to(&family, &mut current);
        let mut key = labels.clone();
        key.sort();
        assert!(series.insert((name.to_owned(), key)), "series twice: {line:?}");
        exp.samples.push(Sample { name: name.to_owned(), labels, value });
    }
    assert_eq!(eof, openmetrics, "# EOF present iff OpenMetrics");
    check_histograms(&exp);
    exp
}

/// Per histogram series: `le` increasing, counts non-decreasing, last `+Inf` = `_count`.
fn check_histograms(exp: &Exposition) {
    type Series = (String, Vec<(String, String)>);
    let mut buckets: HashMap<Series, Vec<(f64, f64)>> = HashMap::new();
    let mut counts: HashMap<Series, f64> = HashMap::new();
    for s in &exp.samples {
        let mut rest: Vec<_> = s.labels.iter().filter(|(n, _)| n != "le").cloned().collect();
        rest.sort();
        if let Some(base) = s.name.strip_suffix("_bucket").filter(|b| exp.types.get(*b).is_some_and(|t| t == "histogram")) {
            let le = s.labels.iter().find(|(n, _)| n == "le").unwrap_or_else(|| panic!("bucket without le: {s:?}"));
            buckets.entry((base.to_owned(), rest)).or_default().push((value(&le.1, &le.1), s.value));
        } else if let Some(base) = s.name.strip_suffix("_count").filter(|b| exp.types.get(*b).is_some_and(|t| t == "histogram")) {
            counts.insert((base.to_owned(), rest), s.value);
        }
    }
    for (series, b) in &buckets {
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "buckets out of order: {series:?} {b:?}");
        let last = b.last().copied().unwrap_or_default();
        assert_eq!(last.0, f64::INFINITY, "no +Inf bucket: {series:?}");
        assert_eq!(counts.get(series).copied(), Some(last.1), "_count != +Inf bucket: {series:?}");
    }
}
