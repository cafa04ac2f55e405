//! Durations in policy files: integers with `s`, `m`, `h`, `d` units, concatenated (`90s`, `12h`, `1h30m`).

use std::time::Duration;

pub const HINT: &str =
    "expected a number followed by s, m, h or d, e.g. `90s`, `12h`, `30d`, `1h30m`";

/// Parses `1h30m`-style durations. Zero (`0s`) is allowed; callers decide whether it makes sense.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("empty duration: {HINT}"));
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(digit) = c.to_digit(10) {
            let n = number.unwrap_or(0);
            number = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(digit)))
                    .ok_or_else(|| format!("duration `{text}` is too large"))?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("invalid duration `{text}`: {HINT}")),
        };
        let n = number
            .take()
            .ok_or_else(|| format!("invalid duration `{text}`: {HINT}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration `{text}` is too large"))?;
    }
    if number.is_some() {
        return Err(format!("invalid duration `{text}`: missing unit; {HINT}"));
    }
    // Keep every duration representable as a chrono::TimeDelta and far beyond any token lifetime.
    const MAX: u64 = 100 * 365 * 86_400;
    if total > MAX {
        return Err(format!(
            "duration `{text}` is too large (at most 100 years)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Renders a duration back in the policy syntax (`1h30m`, `30d`, `0s`).
pub fn render(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(parse("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "10",
            "h",
            "1x",
            "1.5h",
            "-1h",
            "1 h",
            "99999999999999999999d",
            "40000d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn renders_round_trip() {
        for text in ["0s", "90s", "1h30m", "30d", "1d2h3m4s"] {
            assert_eq!(
                parse(&render(parse(text).unwrap())).unwrap(),
                parse(text).unwrap()
            );
        }
        assert_eq!(render(Duration::from_secs(5400)), "1h30m");
    }
}
