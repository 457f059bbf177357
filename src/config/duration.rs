//! Parsing of the human durations the interface accepts (`30s`, `15m`, `6 hours`, `1 day`).

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing but white space.
    #[error("empty duration (expected e.g. \"30s\", \"15 minutes\", \"1 day\")")]
    Empty,
    /// The string does not start with a whole number.
    #[error("{0:?} does not start with a whole number (expected e.g. \"30s\", \"15 minutes\", \"1 day\")")]
    NoNumber(String),
    /// The unit after the number is not one we know.
    #[error(
        "{unit:?} in {input:?} is not a unit (use s, m, h, d or seconds, minutes, hours, days)"
    )]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit as written.
        unit: String,
    },
    /// The number does not fit.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses `N unit` where unit is one of s/m/h/d in short or long spelling, singular or plural,
/// with or without a space. Several parts may follow each other (`1h 30m`).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(DurationError::NoNumber(input.to_string()));
        }
        let number: u64 = rest[..digits_end]
            .parse()
            .map_err(|_| DurationError::TooLarge(input.to_string()))?;
        rest = rest[digits_end..].trim_start();
        let unit_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        let seconds_per_unit = match unit.to_ascii_lowercase().as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
            "d" | "day" | "days" => 86_400,
            _ => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_string(),
                    unit: unit.to_string(),
                })
            }
        };
        total = number
            .checked_mul(seconds_per_unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| DurationError::TooLarge(input.to_string()))?;
        rest = rest[unit_end..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way the portal spells it (`1 day`, `15 minutes`, `1 hour 30 minutes`).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0 seconds".to_string();
    }
    let mut parts = Vec::new();
    for (unit, size) in [
        ("day", 86_400),
        ("hour", 3_600),
        ("minute", 60),
        ("second", 1),
    ] {
        let n = secs / size;
        secs %= size;
        if n > 0 {
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_short_and_portal_spellings() {
        let cases = [
            ("30s", 30),
            ("15m", 900),
            ("6h", 21_600),
            ("1d", 86_400),
            ("15 minutes", 900),
            ("6 hours", 21_600),
            ("1 day", 86_400),
            ("1 hour", 3_600),
            ("2 Days", 172_800),
            ("1h 30m", 5_400),
            ("0s", 0),
            ("  45 seconds ", 45),
        ];
        for (input, secs) in cases {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_secs(secs)),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("soon"),
            Err(DurationError::NoNumber(_))
        ));
        assert!(matches!(
            parse_duration("-5m"),
            Err(DurationError::NoNumber(_))
        ));
        assert!(matches!(
            parse_duration("5 fortnights"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("10"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("1.5h"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::TooLarge(_))
        ));
    }

    #[test]
    fn formats_round_trip() {
        for input in ["1 day", "15 minutes", "1 hour 30 minutes", "45 seconds"] {
            let d = parse_duration(input).unwrap();
            assert_eq!(format_duration(d), input);
        }
    }
}
