//! Typed field values: parsed once where a row enters the agent, kept as numbers in the store,
//! only encoded (never parsed again) by the sinks.
//!
//! [`Value`] is what probes hand in (owned); [`ValueRef`] is what sinks read out of a stored
//! record (borrowed). Text from extension probes becomes a value through the one rule,
//! [`FieldType::parse_value`]; native probes build values directly and the store checks them
//! with [`FieldType::check`], the same rule without the text.
//!
//! The rule, per field type (the empty string is "no value", [`Value::Empty`], for every type):
//! - `key`, `label`, `unknown`: any text, kept as it is (`007` stays `007`); native probes may
//!   also put numbers there, written as decimal integers.
//! - `counter`: an unsigned integer, or a finite number `>= 0` (a negative or non-finite
//!   counter would read as a reset).
//! - `gauge`: any number, `inf` and `NaN` included.
//! - `histogram`: see [`super::histogram`].
//!
//! Numbers are written back as integers when they were integers, else as the shortest decimal
//! that reads back as the same `f64`: a gauge printed as `1.50` is exported as `1.5`, `2.5e3` as
//! `2500`.
//!
//! # Stored form
//!
//! A record is one byte string: each value is a tag byte and its payload. Unsigned integers are
//! tagged with their byte length and stored big-endian in as few bytes as they need, strings
//! with their length the same way, floats as 8 bytes. The encoding is canonical (equal values,
//! equal bytes) and, for the key fields the store orders records by, order-preserving
//! (numbers by value, strings by length then bytes), so keys compare as plain bytes.

use std::fmt;

use super::histogram::{self, Histogram};
use super::meta::FieldType;

/// One field's value, as a probe hands it in.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// No value: no sample is exported for it, Kafka gets `""`.
    #[default]
    Empty,
    U64(u64),
    /// Negative integers only: [`Value::from`] an `i64 >= 0` gives [`Value::U64`], so that
    /// equal numbers are equal values.
    I64(i64),
    F64(f64),
    Str(Box<str>),
    Hist(Box<Histogram>),
}

impl Value {
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Empty)
    }

    /// The text of a [`Value::Str`]; `""` for anything else.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Str(s) => s,
            _ => "",
        }
    }

    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Self::Empty => ValueRef::Empty,
            Self::U64(v) => ValueRef::U64(*v),
            Self::I64(v) => ValueRef::I64(*v),
            Self::F64(v) => ValueRef::F64(*v),
            Self::Str(s) => ValueRef::Str(s),
            Self::Hist(h) => ValueRef::Hist(HistRef::Owned(h)),
        }
    }
}

macro_rules! from_unsigned {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Self::U64(u64::from(v))
            }
        }
    )*};
}
from_unsigned!(u8, u16, u32, u64);

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Self::U64(v as u64)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        u64::try_from(v).map_or(Self::I64(v), Self::U64)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::F64(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Str(v.into())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Str(v.into_boxed_str())
    }
}

impl From<Histogram> for Value {
    fn from(v: Histogram) -> Self {
        Self::Hist(Box::new(v))
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref().fmt(f)
    }
}

/// Compares with the text a sink would write (handy in tests: `row.values[0] == "cpu7"`).
impl PartialEq<&str> for Value {
    fn eq(&self, other: &&str) -> bool {
        match self {
            Self::Str(s) => &**s == *other,
            v => {
                let text = v.to_string();
                text == *other
            }
        }
    }
}

/// A stored value, borrowed from its record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Empty,
    U64(u64),
    I64(i64),
    F64(f64),
    Str(&'a str),
    Hist(HistRef<'a>),
}

impl ValueRef<'_> {
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Empty)
    }
}

impl fmt::Display for ValueRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => Ok(()),
            Self::U64(v) => write!(f, "{v}"),
            Self::I64(v) => write!(f, "{v}"),
            Self::F64(v) => super::number::write_f64(f, v),
            Self::Str(s) => f.write_str(s),
            Self::Hist(h) => histogram::write_text(f, h.buckets(), h.count(), h.sum()),
        }
    }
}

/// A histogram, either handed in by a probe or read from a stored record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HistRef<'a> {
    Owned(&'a Histogram),
    /// `n` buckets of (8-byte `le`, uint count) at the start of `bytes`, then count and sum.
    Stored {
        n: usize,
        bytes: &'a [u8],
        count: u64,
        sum: f64,
    },
}

impl<'a> HistRef<'a> {
    pub fn count(&self) -> u64 {
        match self {
            Self::Owned(h) => h.count,
            Self::Stored { count, .. } => *count,
        }
    }

    pub fn sum(&self) -> f64 {
        match self {
            Self::Owned(h) => h.sum,
            Self::Stored { sum, .. } => *sum,
        }
    }

    /// Finite bounds with their cumulative counts, in increasing `le`.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + 'a {
        let (owned, n, mut bytes): (&'a [(f64, u64)], usize, &'a [u8]) = match *self {
            Self::Owned(h) => (h.buckets.as_slice(), 0, &[][..]),
            Self::Stored { n, bytes, .. } => (&[][..], n, bytes),
        };
        owned.iter().copied().chain((0..n).map_while(move |_| {
            let le = f64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
            let (count, used) = get_uint(bytes.get(8..)?)?;
            bytes = bytes.get(8 + used..)?;
            Some((le, count))
        }))
    }
}

impl FieldType {
    /// The one rule that turns a field's text into its value (see the module doc).
    pub fn parse_value(self, text: &str) -> Result<Value, &'static str> {
        if text.is_empty() {
            return Ok(Value::Empty);
        }
        let value = match self {
            Self::Key | Self::Label | Self::Unknown => return Ok(Value::from(text)),
            Self::Histogram => return histogram::parse(text).map(Value::from),
            Self::Counter | Self::Gauge => {
                if let Ok(v) = text.parse::<u64>() {
                    Value::U64(v)
                } else if let Ok(v) = text.parse::<i64>() {
                    Value::from(v)
                } else {
                    let v = text.parse::<f64>().map_err(|_| "not a number")?;
                    // `-0` would be exported as "-0", which reads back as the integer 0:
                    // one zero, so that the text form is stable (+ 0.0 turns -0.0 into 0.0).
                    Value::F64(v + 0.0)
                }
            }
        };
        self.check(value.as_ref())?;
        Ok(value)
    }

    /// Whether `value` may be stored in a field of this type (the same rule as
    /// [`FieldType::parse_value`], for values that did not come as text).
    pub fn check(self, value: ValueRef<'_>) -> Result<(), &'static str> {
        const NOT_A_NUMBER: &str = "not a number";
        const COUNTER: &str = "a counter must be a finite number >= 0";
        match (self, value) {
            (_, ValueRef::Empty)
            | (Self::Counter | Self::Gauge, ValueRef::U64(_))
            | (Self::Gauge, ValueRef::I64(_) | ValueRef::F64(_))
            | (
                Self::Key | Self::Label | Self::Unknown,
                ValueRef::U64(_) | ValueRef::I64(_) | ValueRef::F64(_) | ValueRef::Str(_),
            ) => Ok(()),
            (Self::Counter, ValueRef::F64(v)) if v.is_finite() && v >= 0.0 => Ok(()),
            (Self::Counter, ValueRef::F64(_) | ValueRef::I64(_)) => Err(COUNTER),
            (Self::Histogram, ValueRef::Hist(h)) => {
                histogram::check_parts(h.buckets(), h.count(), h.sum())
            }
            (Self::Histogram, _) => Err("not a histogram"),
            (_, ValueRef::Hist(_)) => Err("a histogram fits only a histogram field"),
            (Self::Counter | Self::Gauge, ValueRef::Str(_)) => Err(NOT_A_NUMBER),
        }
    }
}

// Tags (high nibble of the first byte). The low nibble of U64 and STR is the byte length of
// the integer (the string's length) that follows.
const EMPTY: u8 = 0x00;
const I64: u8 = 0x10;
const U64: u8 = 0x20;
const F64: u8 = 0x30;
const STR: u8 = 0x40;
const HIST: u8 = 0x50;

fn put_uint(out: &mut Vec<u8>, tag: u8, n: u64) {
    let len = (u64::BITS - n.leading_zeros()).div_ceil(8) as usize;
    out.push(tag | len as u8);
    out.extend_from_slice(&n.to_be_bytes()[8 - len..]);
}

/// (value, bytes used) of an integer written by [`put_uint`] (with any tag).
fn get_uint(bytes: &[u8]) -> Option<(u64, usize)> {
    let len = usize::from(*bytes.first()? & 0x0f);
    let digits = bytes.get(1..=len).filter(|_| len <= 8)?;
    let n = digits.iter().fold(0_u64, |n, b| (n << 8) | u64::from(*b));
    Some((n, 1 + len))
}

/// Floats ordered as their bytes: flip the sign bit of positives, every bit of negatives.
fn f64_key(v: f64) -> [u8; 8] {
    let bits = v.to_bits();
    let k = if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    };
    k.to_be_bytes()
}

fn f64_from_key(b: [u8; 8]) -> f64 {
    let k = u64::from_be_bytes(b);
    f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k })
}

/// Appends the stored form of `v`.
pub(crate) fn encode(v: ValueRef<'_>, out: &mut Vec<u8>) {
    match v {
        ValueRef::Empty => out.push(EMPTY),
        ValueRef::U64(n) => put_uint(out, U64, n),
        ValueRef::I64(n) => {
            if let Ok(n) = u64::try_from(n) {
                put_uint(out, U64, n);
            } else {
                out.push(I64);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        ValueRef::F64(f) => {
            out.push(F64);
            out.extend_from_slice(&f64_key(f));
        }
        ValueRef::Str(s) => {
            put_uint(out, STR, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        ValueRef::Hist(h) => {
            out.push(HIST);
            put_uint(out, 0, h.buckets().count() as u64);
            for (le, count) in h.buckets() {
                out.extend_from_slice(&le.to_le_bytes());
                put_uint(out, 0, count);
            }
            put_uint(out, 0, h.count());
            out.extend_from_slice(&h.sum().to_le_bytes());
        }
    }
}

/// The value at the start of `bytes` and how many bytes it takes; `None` if they are not
/// what [`encode`] writes (cannot happen for bytes the store wrote).
pub(crate) fn decode(bytes: &[u8]) -> Option<(ValueRef<'_>, usize)> {
    let first = *bytes.first()?;
    let eight = |at: usize| -> Option<[u8; 8]> { bytes.get(at..at + 8)?.try_into().ok() };
    match first & 0xf0 {
        EMPTY => Some((ValueRef::Empty, 1)),
        I64 => Some((ValueRef::I64(i64::from_be_bytes(eight(1)?)), 9)),
        U64 => get_uint(bytes).map(|(n, used)| (ValueRef::U64(n), used)),
        F64 => Some((ValueRef::F64(f64_from_key(eight(1)?)), 9)),
        STR => {
            let (len, used) = get_uint(bytes)?;
            let text = bytes.get(used..used + usize::try_from(len).ok()?)?;
            let s = std::str::from_utf8(text).ok()?;
            Some((ValueRef::Str(s), used + s.len()))
        }
        HIST => {
            let (n, mut at) = get_uint(bytes.get(1..)?)?;
            at += 1;
            let start = at;
            for _ in 0..n {
                at += 8 + get_uint(bytes.get(at + 8..)?)?.1;
            }
            let (count, used) = get_uint(bytes.get(at..)?)?;
            let sum = f64::from_le_bytes(eight(at + used)?);
            let hist = HistRef::Stored {
                n: usize::try_from(n).ok()?,
                bytes: bytes.get(start..at)?,
                count,
                sum,
            };
            Some((ValueRef::Hist(hist), at + used + 8))
        }
        _ => None,
    }
}

/// Iterates the values of an encoded sequence.
pub(crate) fn decode_all(mut bytes: &[u8]) -> impl Iterator<Item = ValueRef<'_>> {
    std::iter::from_fn(move || {
        let (v, used) = decode(bytes)?;
        bytes = &bytes[used..];
        Some(v)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn roundtrip(v: &Value) -> String {
        let mut b = Vec::new();
        encode(v.as_ref(), &mut b);
        let (r, used) = decode(&b).unwrap();
        assert_eq!(used, b.len(), "{v:?}");
        r.to_string()
    }

    /// Found by the `probe_line` fuzz target: a counter or gauge printed as `-0e0` was
    /// stored as -0.0 and exported as "-0", whose own reading is the integer 0.
    #[test]
    fn negative_zero_is_zero() {
        for ty in [FieldType::Counter, FieldType::Gauge] {
            for text in ["-0e0", "-0.0", "-0.000"] {
                let v = ty.parse_value(text).unwrap();
                assert_eq!(v.to_string(), "0", "{ty:?} {text}");
                assert_eq!(ty.parse_value(&v.to_string()).unwrap().to_string(), "0");
            }
        }
    }

    #[test]
    fn one_rule_for_text() {
        let p = |ty: FieldType, t: &str| ty.parse_value(t);
        assert_eq!(p(FieldType::Counter, "42"), Ok(Value::U64(42)));
        assert_eq!(p(FieldType::Counter, "2.5e3"), Ok(Value::F64(2500.0)));
        for bad in ["-1", "inf", "NaN", "-0.5"] {
            assert_eq!(
                p(FieldType::Counter, bad),
                Err("a counter must be a finite number >= 0"),
                "{bad}"
            );
        }
        for bad in ["x", " 1", "1 ", "0x10"] {
            assert_eq!(p(FieldType::Gauge, bad), Err("not a number"), "{bad}");
        }
        assert_eq!(p(FieldType::Gauge, "-3"), Ok(Value::I64(-3)));
        assert_eq!(p(FieldType::Gauge, "1.50"), Ok(Value::F64(1.5)));
        assert!(matches!(p(FieldType::Gauge, "inf"), Ok(Value::F64(v)) if v.is_infinite()));
        assert_eq!(p(FieldType::Key, "007"), Ok(Value::from("007")));
        assert_eq!(p(FieldType::Unknown, "x|y"), Ok(Value::from("x|y")));
        assert_eq!(p(FieldType::Histogram, ""), Ok(Value::Empty));
        assert!(p(FieldType::Histogram, "1=2").is_err());
        assert!(p(FieldType::Histogram, "1=2 +Inf=3 sum=4").is_ok());
    }

    #[test]
    fn check_is_the_same_rule_for_built_values() {
        let c = |ty: FieldType, v: Value| ty.check(v.as_ref());
        assert!(c(FieldType::Counter, Value::from(-1_i64)).is_err());
        assert!(c(FieldType::Counter, Value::F64(f64::NAN)).is_err());
        assert!(c(FieldType::Counter, Value::from("1")).is_err());
        assert!(c(FieldType::Gauge, Value::from(-1_i64)).is_ok());
        assert!(c(FieldType::Key, Value::from(7_u32)).is_ok());
        let bad = Histogram {
            buckets: vec![(1.0, 5), (2.0, 3)],
            count: 6,
            sum: 1.0,
        };
        assert!(c(FieldType::Histogram, Value::from(bad.clone())).is_err());
        assert!(c(FieldType::Label, Value::from(bad)).is_err());
        assert!(c(FieldType::Histogram, Value::U64(1)).is_err());
    }

    #[test]
    fn numbers_are_written_back_as_integers_or_shortest_decimals() {
        assert_eq!(roundtrip(&Value::U64(0)), "0");
        assert_eq!(roundtrip(&Value::U64(u64::MAX)), u64::MAX.to_string());
        assert_eq!(roundtrip(&Value::from(i64::MIN)), i64::MIN.to_string());
        assert_eq!(roundtrip(&Value::F64(2500.0)), "2500");
        assert_eq!(roundtrip(&Value::F64(0.1)), "0.1");
        assert_eq!(roundtrip(&Value::F64(f64::NEG_INFINITY)), "-Inf");
        assert_eq!(roundtrip(&Value::F64(f64::NAN)), "NaN");
        assert_eq!(roundtrip(&Value::from("é|x")), "é|x");
        assert_eq!(roundtrip(&Value::Empty), "");
        let h = histogram::parse("1e-3=2 0.01=5 +Inf=7 sum=0.042").unwrap();
        assert_eq!(
            roundtrip(&Value::from(h)),
            "0.001=2 0.01=5 +Inf=7 sum=0.042"
        );
    }

    proptest! {
        #[test]
        fn encoding_orders_like_the_values(a in any::<u64>(), b in any::<u64>(), x in any::<f64>(), y in any::<f64>(),
                                           s in "[a-z]{0,5}", t in "[a-z]{0,5}") {
            let enc = |v: ValueRef<'_>| { let mut o = Vec::new(); encode(v, &mut o); o };
            prop_assert_eq!(enc(ValueRef::U64(a)).cmp(&enc(ValueRef::U64(b))), a.cmp(&b));
            let (ia, ib) = (a as i64, b as i64);
            if ia < 0 && ib < 0 {
                prop_assert_eq!(enc(ValueRef::I64(ia)).cmp(&enc(ValueRef::I64(ib))), ia.cmp(&ib));
            }
            if !x.is_nan() && !y.is_nan() && x != y {
                prop_assert_eq!(enc(ValueRef::F64(x)).cmp(&enc(ValueRef::F64(y))), x.partial_cmp(&y).unwrap());
            }
            let by_len = s.len().cmp(&t.len()).then(s.cmp(&t));
            prop_assert_eq!(enc(ValueRef::Str(&s)).cmp(&enc(ValueRef::Str(&t))), by_len);
            for v in [ValueRef::U64(a), ValueRef::F64(x), ValueRef::Str(&s), ValueRef::I64(ia.min(-1))] {
                let e = enc(v);
                let (d, used) = decode(&e).unwrap();
                prop_assert_eq!(used, e.len());
                prop_assert_eq!(enc(d), e);
            }
        }
    }
}
