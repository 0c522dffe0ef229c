//! The textual value of a `histogram` field, and its parsed form.
//!
//! Syntax: space-separated `le=cumulative_count` pairs in strictly increasing, finite `le`,
//! then `+Inf=total_count`, then `sum=<float>`:
//!
//! ```text
//! 0.001=2 0.01=5 +Inf=7 sum=0.042
//! ```
//!
//! Counts are unsigned integers and must not decrease from one bucket to the next. The text is
//! parsed once, when a row enters the agent ([`crate::imdb::FieldType::parse_value`]); the
//! store keeps the numbers and sinks write them back (bounds and sum as the shortest decimal
//! that reads back as the same `f64`, so `1e-3` comes out as `0.001`). The empty string means
//! "no value" and is not a histogram.

use std::fmt;

/// A parsed histogram value.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Finite upper bounds with their cumulative counts, in increasing `le`.
    pub buckets: Vec<(f64, u64)>,
    /// The `+Inf` bucket, i.e. the number of observations.
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    /// Whether the buckets follow the rules above (values built by code rather than parsed are
    /// checked with this at ingest).
    pub fn check(&self) -> Result<(), &'static str> {
        check_parts(self.buckets.iter().copied(), self.count, self.sum)
    }
}

/// The rules of the module doc, for any source of buckets.
pub(crate) fn check_parts(
    buckets: impl Iterator<Item = (f64, u64)>,
    count: u64,
    sum: f64,
) -> Result<(), &'static str> {
    let mut last_le = f64::NEG_INFINITY;
    let mut last_count = 0_u64;
    for (le, n) in buckets {
        if !le.is_finite() || le <= last_le {
            return Err("histogram: bucket bounds must be finite and strictly increasing");
        }
        if n < last_count {
            return Err("histogram: bucket counts must be cumulative (non-decreasing)");
        }
        last_le = le;
        last_count = n;
    }
    if count < last_count {
        return Err("histogram: bucket counts must be cumulative (non-decreasing)");
    }
    // Any sum is accepted, NaN included, as the text rule always did.
    let _ = sum;
    Ok(())
}

/// Parses `text`; the error says what is wrong, for `ImdbError::BadValue`.
pub fn parse(text: &str) -> Result<Histogram, &'static str> {
    let mut tokens = text.split_ascii_whitespace();
    let mut buckets = Vec::new();
    let count = loop {
        let (le, n) = tokens
            .next()
            .and_then(|t| t.split_once('='))
            .ok_or("histogram: expected `le=count` pairs ending in `+Inf=count`")?;
        let n: u64 = n
            .parse()
            .map_err(|_| "histogram: bucket count is not an unsigned integer")?;
        if le == "+Inf" {
            break n;
        }
        let bound: f64 = le
            .parse()
            .map_err(|_| "histogram: bucket bound is not a number")?;
        buckets.push((bound, n));
    };
    let sum = tokens
        .next()
        .and_then(|t| t.strip_prefix("sum="))
        .ok_or("histogram: expected `sum=<float>` after the +Inf bucket")?;
    let sum: f64 = sum.parse().map_err(|_| "histogram: sum is not a number")?;
    if tokens.next().is_some() {
        return Err("histogram: unexpected text after `sum=`");
    }
    check_parts(buckets.iter().copied(), count, sum)?;
    Ok(Histogram {
        buckets,
        count,
        sum,
    })
}

/// Writes the value back in the syntax above (what Kafka consumers receive).
pub(crate) fn write_text(
    out: &mut impl fmt::Write,
    buckets: impl Iterator<Item = (f64, u64)>,
    count: u64,
    sum: f64,
) -> fmt::Result {
    for (le, n) in buckets {
        write!(out, "{le}={n} ")?;
    }
    write!(out, "+Inf={count} sum=")?;
    super::number::write_f64(out, sum)
}

impl fmt::Display for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_text(f, self.buckets.iter().copied(), self.count, self.sum)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let h = parse("0.001=2 0.01=5 +Inf=7 sum=0.042").unwrap();
        assert_eq!(h.buckets, vec![(0.001, 2), (0.01, 5)]);
        assert_eq!(h.count, 7);
        assert!((h.sum - 0.042).abs() < f64::EPSILON);
        assert_eq!(h.to_string(), "0.001=2 0.01=5 +Inf=7 sum=0.042");
    }

    #[test]
    fn only_inf_bucket_is_enough() {
        let h = parse("+Inf=0 sum=0").unwrap();
        assert!(h.buckets.is_empty());
        assert_eq!(h.count, 0);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "sum=1",
            "1=2 sum=3",            // no +Inf
            "1=2 +Inf=3",           // no sum
            "1=2 +Inf=3 sum=x",     // sum not numeric
            "1=5 2=3 +Inf=6 sum=1", // not cumulative
            "1=5 +Inf=4 sum=1",     // +Inf below last bucket
            "2=1 1=2 +Inf=3 sum=1", // bounds decreasing
            "1=1 1=2 +Inf=3 sum=1", // bounds repeated
            "inf=1 +Inf=3 sum=1",   // non-finite bound
            "1=-1 +Inf=3 sum=1",    // negative count
            "1=1.5 +Inf=3 sum=1",   // fractional count
            "1=1 +Inf=3 sum=1 extra",
            "+Inf=3 1=1 sum=1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
