//! The vote record contract: decoding one record's bytes into a [`Vote`],
//! and the reasons a record is rejected. Pure: no I/O, no AWS types.
//!
//! A vote is a UTF-8 JSON object
//! `{"vote_id":..,"poll_id":..,"option":..,"voter_id":..,"cast_at":..}`;
//! `poll_id`, `option` and `voter_id` are 1 to 128 characters of
//! `[A-Za-z0-9._:@-]`, `vote_id` 1 to 64 of the same, `cast_at` (optional,
//! informational) RFC 3339. Unknown fields are ignored.

use std::fmt;

/// The largest record accepted as a vote. A vote is well under 1 KiB; a
/// larger record is rejected as malformed without being parsed.
pub const MAX_VOTE_BYTES: usize = 4096;

/// Longest `poll_id`, `option` and `voter_id`.
pub const MAX_ID_CHARS: usize = 128;

/// Longest `vote_id`.
pub const MAX_VOTE_ID_CHARS: usize = 64;

/// A decoded, well-formed vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    pub vote_id: String,
    pub poll_id: String,
    pub option: String,
    pub voter_id: String,
    pub cast_at: Option<String>,
}

/// Why a record was not counted (a duplicate is an outcome, not a reject).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not a vote: not UTF-8 JSON, a field missing or invalid, too large.
    Malformed,
    /// A KPL aggregate whose checksum or protobuf is broken.
    BadAggregate,
    /// No poll with that id.
    UnknownPoll,
    /// The record arrived while the poll was not open.
    PollNotOpen,
    /// The poll has no such option.
    InvalidOption,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Malformed,
        Reason::BadAggregate,
        Reason::UnknownPoll,
        Reason::PollNotOpen,
        Reason::InvalidOption,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::BadAggregate => "bad_aggregate",
            Reason::UnknownPoll => "unknown_poll",
            Reason::PollNotOpen => "poll_not_open",
            Reason::InvalidOption => "invalid_option",
        }
    }

    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejection: the reason and a human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// True for 1 to `max` characters of `[A-Za-z0-9._:@-]`: the contract's
/// one id rule, shared with the producer SDK's vote builder.
pub fn valid_id(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

/// The voter id a token's voter claim stands for: the claim's value with
/// every `+` removed, so an E.164 phone number (`+447700900123`) becomes
/// `447700900123`, then held to the id rule. Both vote paths apply exactly
/// this: `tally gateway` here, API Gateway's mapping template with
/// `.replace('+', '')` (the infra tests render the template and compare).
/// `None` when what is left is not a valid id.
pub fn voter_from_claim(value: &str) -> Option<String> {
    let voter = value.replace('+', "");
    valid_id(&voter, MAX_ID_CHARS).then_some(voter)
}

/// Decodes one record's bytes as a vote.
pub fn decode(data: &[u8]) -> Result<Vote, Rejection> {
    if data.len() > MAX_VOTE_BYTES {
        return Err(Rejection::new(
            Reason::Malformed,
            format!(
                "record is {} bytes; a vote is at most {MAX_VOTE_BYTES}",
                data.len()
            ),
        ));
    }
    let text = std::str::from_utf8(data)
        .map_err(|error| Rejection::new(Reason::Malformed, format!("not UTF-8: {error}")))?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|error| Rejection::new(Reason::Malformed, format!("not JSON: {error}")))?;
    let Some(object) = value.as_object() else {
        return Err(Rejection::new(Reason::Malformed, "not a JSON object"));
    };
    let field = |name: &str, max: usize| -> Result<String, Rejection> {
        match object.get(name) {
            Some(serde_json::Value::String(text)) if valid_id(text, max) => Ok(text.clone()),
            Some(serde_json::Value::String(_)) => Err(Rejection::new(
                Reason::Malformed,
                format!("{name} must be 1 to {max} characters of [A-Za-z0-9._:@-]"),
            )),
            Some(_) => Err(Rejection::new(
                Reason::Malformed,
                format!("{name} is not a string"),
            )),
            None => Err(Rejection::new(
                Reason::Malformed,
                format!("{name} is missing"),
            )),
        }
    };
    let vote = Vote {
        vote_id: field("vote_id", MAX_VOTE_ID_CHARS)?,
        poll_id: field("poll_id", MAX_ID_CHARS)?,
        option: field("option", MAX_ID_CHARS)?,
        voter_id: field("voter_id", MAX_ID_CHARS)?,
        cast_at: match object.get("cast_at") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(text)) if crate::time::parse_rfc3339(text).is_some() => {
                Some(text.clone())
            }
            Some(_) => {
                return Err(Rejection::new(
                    Reason::Malformed,
                    "cast_at is not an RFC 3339 time",
                ))
            }
        },
    };
    Ok(vote)
}

/// Encodes a vote as the contract's JSON (for producers and tests).
pub fn encode(vote: &Vote) -> Vec<u8> {
    let mut object = serde_json::json!({
        "vote_id": vote.vote_id,
        "poll_id": vote.poll_id,
        "option": vote.option,
        "voter_id": vote.voter_id,
    });
    if let Some(cast_at) = &vote.cast_at {
        object["cast_at"] = serde_json::json!(cast_at);
    }
    object.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_voter_claim_becomes_an_id_without_its_plus_signs() {
        assert_eq!(
            voter_from_claim("+447700900123").as_deref(),
            Some("447700900123")
        );
        assert_eq!(
            voter_from_claim("5f2b8c1e-0d4a").as_deref(),
            Some("5f2b8c1e-0d4a")
        );
        assert_eq!(voter_from_claim("+"), None);
        assert_eq!(voter_from_claim("+44 7700 900123"), None);
        assert_eq!(voter_from_claim(&"9".repeat(MAX_ID_CHARS + 1)), None);
    }

    fn sample() -> Vote {
        Vote {
            vote_id: "01JD3M6Y3T9Q2V8K4N5R7S1W0X".into(),
            poll_id: "f1-2026".into(),
            option: "verstappen".into(),
            voter_id: "u-1234".into(),
            cast_at: Some("2026-11-22T10:00:00.123Z".into()),
        }
    }

    #[test]
    fn the_contract_example_decodes_and_unknown_fields_are_ignored() {
        let data =
            br#"{"vote_id":"01JD3M6Y3T9Q2V8K4N5R7S1W0X","poll_id":"f1-2026","option":"verstappen",
 "voter_id":"u-1234","cast_at":"2026-11-22T10:00:00.123Z","client":"tv-app"}"#;
        assert_eq!(decode(data).unwrap(), sample());
        assert_eq!(decode(&encode(&sample())).unwrap(), sample());
    }

    #[test]
    fn malformed_records_say_why() {
        let cases: [(&[u8], &str); 8] = [
            (b"\xff\xfe", "UTF-8"),
            (b"not json", "not JSON"),
            (b"[1]", "object"),
            (br#"{"poll_id":"p","option":"a","voter_id":"v"}"#, "vote_id"),
            (
                br#"{"vote_id":"x","poll_id":"p q","option":"a","voter_id":"v"}"#,
                "poll_id",
            ),
            (
                br#"{"vote_id":"x","poll_id":"p","option":"","voter_id":"v"}"#,
                "option",
            ),
            (
                br#"{"vote_id":"x","poll_id":"p","option":"a","voter_id":7}"#,
                "voter_id",
            ),
            (
                br#"{"vote_id":"x","poll_id":"p","option":"a","voter_id":"v","cast_at":"noon"}"#,
                "cast_at",
            ),
        ];
        for (data, needle) in cases {
            let rejection = decode(data).unwrap_err();
            assert_eq!(rejection.reason, Reason::Malformed);
            assert!(
                rejection.detail.contains(needle),
                "{needle}: {}",
                rejection.detail
            );
        }
        let huge = vec![b' '; MAX_VOTE_BYTES + 1];
        assert!(decode(&huge).unwrap_err().detail.contains("bytes"));
        let long_vote_id = format!(
            r#"{{"vote_id":"{}","poll_id":"p","option":"a","voter_id":"v"}}"#,
            "x".repeat(MAX_VOTE_ID_CHARS + 1)
        );
        assert!(decode(long_vote_id.as_bytes()).is_err());
    }

    #[test]
    fn reasons_round_trip() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
        }
    }

    proptest! {
        #[test]
        fn decoding_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&data);
        }

        #[test]
        fn valid_votes_round_trip(
            poll in "[A-Za-z0-9._:@-]{1,128}",
            option in "[A-Za-z0-9._:@-]{1,128}",
            voter in "[A-Za-z0-9._:@-]{1,128}",
            vote_id in "[A-Za-z0-9._:@-]{1,64}",
        ) {
            let vote = Vote { vote_id, poll_id: poll, option, voter_id: voter, cast_at: None };
            prop_assert_eq!(decode(&encode(&vote)).unwrap(), vote);
        }
    }
}
