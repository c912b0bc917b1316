//! Wall-clock times as milliseconds since the Unix epoch, and RFC 3339 text.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;

/// Milliseconds since the epoch of `time` (0 before the epoch).
pub fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// Now, in milliseconds since the epoch.
pub fn now_millis() -> i64 {
    millis(SystemTime::now())
}

/// Parses an RFC 3339 time (`2026-11-22T10:00:00Z`, fractions and offsets
/// allowed) into milliseconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    // An RFC 3339 time is ASCII; anything else would also split a
    // character below.
    if !text.is_ascii() || text.len() > 64 {
        return None;
    }
    // The parser takes `Z` only; a numeric offset is applied here.
    let (utc, offset_minutes) = match text.len().checked_sub(6).map(|at| text.split_at(at)) {
        Some((head, tail))
            if (tail.starts_with('+') || tail.starts_with('-'))
                && tail.as_bytes()[3] == b':'
                && head.contains('T') =>
        {
            let hours: i64 = tail[1..3].parse().ok()?;
            let minutes: i64 = tail[4..6].parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if tail.starts_with('-') { -1 } else { 1 };
            (format!("{head}Z"), sign * (hours * 60 + minutes))
        }
        _ => (text.to_owned(), 0),
    };
    let millis = DateTime::from_str(&utc, Format::DateTime)
        .ok()?
        .to_millis()
        .ok()?;
    Some(millis - offset_minutes * 60_000)
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC.
pub fn format_rfc3339(millis: i64) -> String {
    DateTime::from_millis(millis)
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| millis.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_nonsense() {
        let millis = parse_rfc3339("2026-11-22T10:00:00.123Z").unwrap();
        assert_eq!(millis, 1_795_341_600_123);
        assert_eq!(format_rfc3339(millis), "2026-11-22T10:00:00.123Z");
        assert_eq!(
            parse_rfc3339("2026-11-22T11:00:00+01:00"),
            parse_rfc3339("2026-11-22T10:00:00Z")
        );
        assert_eq!(parse_rfc3339("tomorrow"), None);
        // Found by fuzzing the gateway: a multi-byte character where the
        // offset would start used to panic.
        assert_eq!(parse_rfc3339("\u{80}\u{10000}0"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in ".{0,40}") {
            let _ = parse_rfc3339(&text);
        }
    }
}
