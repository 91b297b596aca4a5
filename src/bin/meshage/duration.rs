//! Durations on the command line: plain seconds as before (`10`, `0.5`), or with a unit
//! (`500ms`, `10s`, `2m`, `1h`).

use std::time::Duration;

/// Parses `500ms`, `10s`, `2m`, `1h`, or a plain number of seconds (`1.5`); the clap value
/// parser of every duration flag.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}`: use ms, s, m or h (a plain number is seconds)"
            ))
        }
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 10, 1.5, 500ms, 10s or 2m"))?;
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("`{text}` is not a duration of zero or more"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_plain_seconds() {
        assert_eq!(parse("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse(" 250 ms "), Ok(Duration::from_millis(250)));
        assert!(parse("10x").unwrap_err().contains("unknown unit `x`"));
        assert!(parse("-1").is_err());
        assert!(parse("-5ms").is_err());
        assert!(parse("").is_err());
        assert!(parse("ms").is_err());
        assert!(parse("NaN").is_err());
        assert!(parse("inf").is_err());
    }
}
