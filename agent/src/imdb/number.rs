//! A float's text form, shared by everything that writes values as text (Kafka rows, the
//! histogram text, the exposition format): `+Inf`, `-Inf`, `NaN`, else the shortest decimal that
//! reads back exactly. It lives with the values so that the sinks import it, not the reverse.

use std::fmt;

/// Writes `v` in the form the module doc gives.
pub fn write_f64(out: &mut impl fmt::Write, v: f64) -> fmt::Result {
    if v.is_nan() {
        out.write_str("NaN")
    } else if v.is_infinite() {
        out.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
    } else {
        write!(out, "{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::write_f64;

    #[test]
    fn special_values_and_shortest_decimals() {
        let text = |v: f64| {
            let mut s = String::new();
            write_f64(&mut s, v).unwrap();
            s
        };
        assert_eq!(text(f64::NAN), "NaN");
        assert_eq!(text(f64::INFINITY), "+Inf");
        assert_eq!(text(f64::NEG_INFINITY), "-Inf");
        assert_eq!(text(1.5), "1.5");
        assert_eq!(text(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(text(3.0), "3");
    }
}
