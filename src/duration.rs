//! Durations as people and Go programs write them, for every surface that reads one (CLI flags,
//! config, Consul's `?wait=` and session TTLs): a number with a unit, or several (`1m30s`), or a
//! bare `0`; and Go's way of printing them back.

use std::time::Duration;

/// The longest duration anything accepts.
const MAX_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// Parses `2s`, `500ms`, `1m30s`, `1.5h`, `2d` or `0` (units ns, us/µs, ms, s, m, h, d), at most
/// a year. Any other bare number is refused: the unit must be explicit. The error says what is
/// wrong.
pub fn parse(input: &str) -> Result<Duration, String> {
    let d = parse_unbounded(input)?;
    if d.as_secs_f64() > MAX_SECS {
        return Err(format!("duration {input:?} is too long"));
    }
    Ok(d)
}

/// As `parse`, for a reader that clamps long durations itself (Consul's `?wait=`): anything a
/// `Duration` holds is accepted.
pub fn parse_unbounded(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("empty duration (expected e.g. 2s, 500ms, 1m)".into());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let unit_len = rest[number_len..]
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len() - number_len);
        let (number, unit) = (
            &rest[..number_len],
            &rest[number_len..number_len + unit_len],
        );
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration {input:?} (expected e.g. 2s, 500ms, 1m)"))?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => return Err(format!("duration {input:?} needs a unit: ms, s, m, h or d")),
            other => {
                return Err(format!(
                    "unknown unit {other:?} in duration {input:?} (use ms, s, m, h or d)"
                ))
            }
        };
        total += value * scale;
        rest = &rest[number_len + unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("duration {input:?} is too long"))
}

/// Formats a duration as Go does for whole seconds and above (`10s`, `1m30s`, `24h0m0s`).
pub fn format_go(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let frac = d.subsec_millis();
    let s = if frac > 0 {
        format!("{s}.{frac:03}").trim_end_matches('0').to_string()
    } else {
        s.to_string()
    };
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_and_go_forms() {
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_nonsense_with_a_reason() {
        for bad in ["", "2", "10", "s", "2x", "-1s", "-5s", "1..5s", "ms"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse("2").unwrap_err().contains("needs a unit"));
        assert!(parse("2x").unwrap_err().contains("unknown unit \"x\""));
        assert!(parse("100000000h").unwrap_err().contains("too long"));
        assert_eq!(
            parse_unbounded("100000000h"),
            Ok(Duration::from_secs(360_000_000_000))
        );
        assert!(parse_unbounded("1e400s").is_err());
    }

    #[test]
    fn formats_as_go_does() {
        assert_eq!(format_go(Duration::from_secs(10)), "10s");
        assert_eq!(format_go(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go(Duration::from_secs(86400)), "24h0m0s");
        assert_eq!(format_go(Duration::from_millis(1500)), "1.5s");
    }
}
