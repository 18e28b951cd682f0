//! Parses the byte sizes the CLI accepts (`--quota-bytes`): a whole number, optionally with a
//! unit, `2GiB`, `512MiB`, `8GB`, `1073741824`.

/// Parses `2GiB`, `512MiB`, `100KiB`, `8GB`, `500MB` or a bare number of bytes. Binary units
/// (`KiB`, `MiB`, `GiB`, `TiB`, or just `K`, `M`, `G`, `T`) count in 1024s, decimal ones (`KB`,
/// `MB`, `GB`, `TB`) in 1000s; case and a space before the unit do not matter. Zero is refused.
pub fn parse(input: &str) -> Result<u64, String> {
    let text = input.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    if number.is_empty() {
        return Err(format!(
            "invalid size {input:?} (expected a whole number of bytes, with an optional unit: 2GiB, 512MiB, 8GB)"
        ));
    }
    let n: u64 = number
        .parse()
        .map_err(|_| format!("size {input:?} is too large"))?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
            "unknown unit {unit:?} in size {input:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
        ))
        }
    };
    let bytes = n
        .checked_mul(scale)
        .ok_or_else(|| format!("size {input:?} is too large"))?;
    if bytes == 0 {
        return Err("the size must be more than 0 bytes".into());
    }
    Ok(bytes)
}

/// Parses `--quota-bytes`: a size of at least [`shoal_raft::MIN_QUOTA_BYTES`].
pub fn parse_quota(input: &str) -> Result<u64, String> {
    let bytes = parse(input)?;
    if bytes < shoal_raft::MIN_QUOTA_BYTES {
        return Err(format!(
            "a quota of {bytes} bytes is too small: the least is 1MiB ({} bytes)",
            shoal_raft::MIN_QUOTA_BYTES
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_numbers_with_and_without_units() {
        assert_eq!(parse("1024"), Ok(1024));
        assert_eq!(parse("2GiB"), Ok(2 << 30));
        assert_eq!(parse("2gib"), Ok(2 << 30));
        assert_eq!(parse("2G"), Ok(2 << 30));
        assert_eq!(parse("512 MiB"), Ok(512 << 20));
        assert_eq!(parse("8GB"), Ok(8_000_000_000));
        assert_eq!(parse("100KiB"), Ok(100 << 10));
        assert_eq!(parse("7B"), Ok(7));
    }

    #[test]
    fn refuses_zero_negative_fractional_and_unknown_sizes() {
        for bad in [
            "0",
            "0GiB",
            "-1",
            "-2GiB",
            "1.5GiB",
            "",
            "GiB",
            "2 gigs",
            "2PiB",
            "99999999999999999999",
            "20000000TiB",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_quota("512KiB").is_err());
        assert_eq!(parse_quota("1MiB"), Ok(1 << 20));
    }
}
