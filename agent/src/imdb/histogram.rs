//! The textual value of a `histogram` field.
//!
//! Syntax: space-separated `le=cumulative_count` pairs in strictly increasing, finite `le`,
//! then `+Inf=total_count`, then `sum=<float>`:
//!
//! ```text
//! 0.001=2 0.01=5 +Inf=7 sum=0.042
//! ```
//!
//! Counts are unsigned integers and must not decrease from one bucket to the next. The store
//! validates this at upsert so that sinks can render without re-checking; the empty string
//! means "no value" and is not a histogram.

/// A parsed histogram value borrowing from the record's text, so rendering keeps the exact
/// numerals the probe wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram<'a> {
    /// Finite upper bounds with their cumulative counts, in increasing `le`.
    pub buckets: Vec<(&'a str, u64)>,
    /// The `+Inf` bucket, i.e. the number of observations.
    pub count: u64,
    pub sum: &'a str,
}

/// Parses `text`; the error says what is wrong, for `ImdbError::BadValue`.
pub fn parse(text: &str) -> Result<Histogram<'_>, &'static str> {
    let mut tokens = text.split_ascii_whitespace();
    let mut buckets = Vec::new();
    let mut last_le = f64::NEG_INFINITY;
    let mut last_count = 0_u64;
    let count = loop {
        let (le, n) = tokens
            .next()
            .and_then(|t| t.split_once('='))
            .ok_or("histogram: expected `le=count` pairs ending in `+Inf=count`")?;
        let n: u64 = n
            .parse()
            .map_err(|_| "histogram: bucket count is not an unsigned integer")?;
        if n < last_count {
            return Err("histogram: bucket counts must be cumulative (non-decreasing)");
        }
        last_count = n;
        if le == "+Inf" {
            break n;
        }
        let bound: f64 = le
            .parse()
            .map_err(|_| "histogram: bucket bound is not a number")?;
        if !bound.is_finite() || bound <= last_le {
            return Err("histogram: bucket bounds must be finite and strictly increasing");
        }
        last_le = bound;
        buckets.push((le, n));
    };
    let sum = tokens
        .next()
        .and_then(|t| t.strip_prefix("sum="))
        .ok_or("histogram: expected `sum=<float>` after the +Inf bucket")?;
    if sum.parse::<f64>().is_err() {
        return Err("histogram: sum is not a number");
    }
    if tokens.next().is_some() {
        return Err("histogram: unexpected text after `sum=`");
    }
    Ok(Histogram {
        buckets,
        count,
        sum,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let h = parse("0.001=2 0.01=5 +Inf=7 sum=0.042").unwrap();
        assert_eq!(h.buckets, vec![("0.001", 2), ("0.01", 5)]);
        assert_eq!(h.count, 7);
        assert_eq!(h.sum, "0.042");
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
