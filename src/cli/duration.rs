//! Parses the durations the CLI accepts: a number with a unit, e.g. `500ms`, `2s`, `1.5s`, `1m`,
//! `1h` (or several: `1m30s`).

use std::time::Duration;

/// Parses `2s`, `500ms`, `1m30s`, `1.5s`. A bare number is refused: the unit must be explicit.
pub fn parse(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("empty duration (expected e.g. 2s, 500ms, 1m)".into());
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
            "ms" => 0.001,
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
    if !total.is_finite() || total > 365.0 * 24.0 * 3600.0 {
        return Err(format!("duration {input:?} is too long"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_forms() {
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", "2", "s", "2x", "-1s", "1..5s", "ms"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse("100000000h").is_err());
    }
}
