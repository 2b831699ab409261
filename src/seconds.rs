//! Durations in seconds as people write them, one rule for flags and targets files alike.

use std::time::Duration;

/// Shorter than this, a delay or a timeout is a typo (`1e-9`) that would spin a core.
const SHORTEST: f64 = 0.1;
/// Longer than a year, it is a typo too: `1e9` is 31 years.
const LONGEST: f64 = 365.0 * 86_400.0;

/// `value` seconds as a duration, or why not.
pub fn from_number(value: f64) -> Result<Duration, String> {
    if value.is_finite() && (SHORTEST..=LONGEST).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!("{value} s is not between {SHORTEST} s and a year"))
    }
}

/// Seconds as a decimal number, so `--delay 0.5` works.
pub fn parse(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    from_number(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_decimals_within_the_bounds() {
        assert_eq!(parse("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse(" 30 "), Ok(Duration::from_secs(30)));
        assert_eq!(parse("0.1"), Ok(Duration::from_millis(100)));
        assert_eq!(from_number(LONGEST), Ok(Duration::from_secs(31_536_000)));
    }

    #[test]
    fn refuses_what_is_surely_a_typo() {
        for text in ["0", "1e-9", "0.05", "-1", "1e9", "NaN", "inf"] {
            let error = parse(text).unwrap_err();
            assert!(
                error.contains("is not between 0.1 s and a year"),
                "{text}: {error}"
            );
        }
        assert_eq!(
            parse("soon"),
            Err("'soon' is not a number of seconds".into())
        );
    }
}
