//! Builds records that follow Tally's vote contract: a UTF-8 JSON object
//! `{"vote_id","poll_id","option","voter_id","cast_at"}`, keyed by voter.
//! `poll_id`, `option` and `voter_id` are 1 to 128 characters of
//! `[A-Za-z0-9._:@-]`, `vote_id` 1 to 64.

use tally_contract::vote::{encode, Vote, MAX_ID_CHARS, MAX_VOTE_ID_CHARS};

use crate::producer::Record;

/// True for 1 to `max` characters of `[A-Za-z0-9._:@-]`: the contract's id rule.
pub use tally_contract::vote::valid_id;

/// Why a vote cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidVote {
    pub field: &'static str,
    pub reason: String,
}

/// A vote to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteBuilder {
    pub vote_id: String,
    pub poll_id: String,
    pub option: String,
    pub voter_id: String,
    /// RFC 3339; informational only (the stream's arrival time decides).
    pub cast_at: Option<String>,
}

impl VoteBuilder {
    pub fn new(
        vote_id: impl Into<String>,
        poll_id: impl Into<String>,
        option: impl Into<String>,
        voter_id: impl Into<String>,
    ) -> Self {
        Self {
            vote_id: vote_id.into(),
            poll_id: poll_id.into(),
            option: option.into(),
            voter_id: voter_id.into(),
            cast_at: None,
        }
    }

    pub fn cast_at(mut self, rfc3339: impl Into<String>) -> Self {
        self.cast_at = Some(rfc3339.into());
        self
    }

    /// The record: the contract's JSON, keyed by the voter.
    pub fn build(&self) -> Result<Record, InvalidVote> {
        for (field, value, max) in [
            ("vote_id", &self.vote_id, MAX_VOTE_ID_CHARS),
            ("poll_id", &self.poll_id, MAX_ID_CHARS),
            ("option", &self.option, MAX_ID_CHARS),
            ("voter_id", &self.voter_id, MAX_ID_CHARS),
        ] {
            if !valid_id(value, max) {
                return Err(InvalidVote {
                    field,
                    reason: format!("must be 1 to {max} characters of [A-Za-z0-9._:@-]"),
                });
            }
        }
        let vote = Vote {
            vote_id: self.vote_id.clone(),
            poll_id: self.poll_id.clone(),
            option: self.option.clone(),
            voter_id: self.voter_id.clone(),
            cast_at: self.cast_at.clone(),
        };
        Ok(Record::new(self.voter_id.clone(), encode(&vote)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_follow_the_contract() {
        let record = VoteBuilder::new("v1", "f1-2026", "verstappen", "u-1234")
            .cast_at("2026-11-22T10:00:00.123Z")
            .build()
            .unwrap();
        assert_eq!(record.partition_key, "u-1234");
        let value: serde_json::Value = serde_json::from_slice(&record.data).unwrap();
        assert_eq!(value["poll_id"], "f1-2026");
        assert_eq!(value["cast_at"], "2026-11-22T10:00:00.123Z");
        let error = VoteBuilder::new("v1", "bad poll", "a", "u")
            .build()
            .unwrap_err();
        assert_eq!(error.field, "poll_id");
        assert!(VoteBuilder::new("x".repeat(65), "p", "a", "u")
            .build()
            .is_err());
    }

    proptest::proptest! {
        /// The producer SDK's builder and this decoder agree on the contract.
        #[test]
        fn the_producer_builds_what_the_worker_decodes(
            poll in "[A-Za-z0-9._:@-]{1,128}",
            option in "[A-Za-z0-9._:@-]{1,128}",
            voter in "[A-Za-z0-9._:@-]{1,128}",
            vote_id in "[A-Za-z0-9._:@-]{1,64}",
        ) {
            let record = VoteBuilder::new(&vote_id, &poll, &option, &voter)
                .cast_at("2026-11-22T10:00:00Z")
                .build()
                .unwrap();
            proptest::prop_assert_eq!(&record.partition_key, &voter);
            let vote = tally_contract::vote::decode(&record.data).unwrap();
            proptest::prop_assert_eq!((vote.vote_id, vote.poll_id, vote.option, vote.voter_id), (vote_id, poll, option, voter));
        }

    }
}
