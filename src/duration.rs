//! Human durations for flags and config values: `500ms`, `30s`, `5m`, `24h`, `2d`, or plain
//! seconds.

use std::time::Duration;

/// Parse `500ms`, `30s`, `5m`, `24h`, `2d` or a plain number of seconds.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 30s, 5m, 24h or 2d"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!("`{s}` has an unknown unit: use ms, s, m, h or d"));
        }
    }
    .ok_or_else(|| format!("`{s}` is too large"))?;
    Ok(Duration::from_millis(ms))
}

/// Parse a comma-separated list of durations (`1s,5s,10s`).
pub fn parse_list(s: &str) -> Result<Vec<Duration>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse(" 24h "), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse("").is_err());
        assert!(parse("5x").is_err());
        assert!(parse("-1s").is_err());
        assert!(parse("99999999999999999999d").is_err());
        assert_eq!(
            parse_list("1s, 5s,10s"),
            Ok(vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(10)
            ])
        );
        assert!(parse_list("1s,x").is_err());
    }
}
