//! Wall-clock times as milliseconds since the Unix epoch, and RFC 3339 text.

use std::time::{SystemTime, UNIX_EPOCH};

use ::time::format_description::well_known::Rfc3339;
use ::time::OffsetDateTime;

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
    let millis = parse_utc(&utc)?;
    Some(millis - offset_minutes * 60_000)
}

/// Parses an RFC 3339 time in UTC (ending in `Z`), with `T` (or `t`)
/// between date and time, into milliseconds since the epoch (rounded down).
fn parse_utc(text: &str) -> Option<i64> {
    if !text.ends_with('Z') {
        return None;
    }
    if text.len() > 10 && !matches!(text.as_bytes()[10], b'T' | b't') {
        return None;
    }
    let time = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC.
pub fn format_rfc3339(millis: i64) -> String {
    format_utc(millis).unwrap_or_else(|| millis.to_string())
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the fraction without trailing
/// zeros; `None` outside the years 1 to 9999.
fn format_utc(millis: i64) -> Option<String> {
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok()?;
    if !(1..=9_999).contains(&time.year()) {
        return None;
    }
    let mut text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    );
    let micros = time.microsecond();
    if micros > 0 {
        let fraction = format!("{micros:06}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    Some(text)
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

        /// These functions replaced the AWS SDK's date-time type here; both
        /// must read and write every time alike.
        #[test]
        fn agree_with_the_sdk(millis in -70_000_000_000_000i64..300_000_000_000_000) {
            use aws_smithy_types::date_time::Format;
            use aws_smithy_types::DateTime;
            let sdk = DateTime::from_millis(millis)
                .fmt(Format::DateTime)
                .unwrap_or_else(|_| millis.to_string());
            proptest::prop_assert_eq!(format_rfc3339(millis), sdk.clone());
            let sdk_parsed = DateTime::from_str(&sdk, Format::DateTime)
                .ok()
                .and_then(|time| time.to_millis().ok());
            proptest::prop_assert_eq!(parse_utc(&sdk), sdk_parsed);
        }

        #[test]
        fn parse_like_the_sdk(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?[Zz]?") {
            use aws_smithy_types::date_time::Format;
            use aws_smithy_types::DateTime;
            let sdk = DateTime::from_str(&text, Format::DateTime)
                .ok()
                .and_then(|time| time.to_millis().ok());
            proptest::prop_assert_eq!(parse_utc(&text), sdk);
        }
    }
}
