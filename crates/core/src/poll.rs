//! Polls: the definition, its life cycle and the rule that decides whether
//! a vote counts. Pure: no I/O.
//!
//! A vote counts only if its record arrived while the poll was open,
//! `opens_at <= arrival < closes_at` (a missing bound is unbounded), and a
//! draft poll counts nothing. The arrival time is the record's Kinesis
//! `ApproximateArrivalTimestamp`, which clients cannot forge.

use std::fmt;

use tally_contract::vote::{valid_id, Reason, Rejection, Vote, MAX_ID_CHARS};

/// Longest question.
pub const MAX_QUESTION_CHARS: usize = 1000;
/// Longest option label.
pub const MAX_LABEL_CHARS: usize = 200;
/// Most options in one poll.
pub const MAX_OPTIONS: usize = 100;
/// Most counter items per poll.
pub const MAX_COUNTER_SHARDS: u32 = 256;
/// Counter items per poll unless told otherwise (see docs/DESIGN.md for
/// why 16 keeps every counter item cool at the design point).
pub const DEFAULT_COUNTER_SHARDS: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PollStatus {
    /// Created, not open yet: counts nothing.
    Draft,
    /// Counting inside its window.
    Open,
    /// A close time is set; votes that arrived before it still count.
    Closed,
    /// Recounted and final.
    Final,
}

impl PollStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PollStatus::Draft => "draft",
            PollStatus::Open => "open",
            PollStatus::Closed => "closed",
            PollStatus::Final => "final",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            PollStatus::Draft,
            PollStatus::Open,
            PollStatus::Closed,
            PollStatus::Final,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

impl fmt::Display for PollStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollOption {
    pub id: String,
    pub label: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poll {
    pub id: String,
    pub question: String,
    pub options: Vec<PollOption>,
    /// Milliseconds since the epoch; `None`: unbounded.
    pub opens_at: Option<i64>,
    pub closes_at: Option<i64>,
    pub status: PollStatus,
    /// How many counter items the poll's tallies are spread over.
    pub counter_shards: u32,
    pub created_at: i64,
}

/// A poll definition that is not acceptable, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidPoll {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidPoll {
    InvalidPoll {
        field,
        reason: reason.into(),
    }
}

/// Parses `ID` or `ID=LABEL` (the label defaults to the id).
pub fn parse_option(text: &str) -> Result<PollOption, InvalidPoll> {
    let (id, label) = match text.split_once('=') {
        Some((id, label)) => (id.trim(), label.trim()),
        None => (text.trim(), text.trim()),
    };
    Ok(PollOption {
        id: id.to_owned(),
        label: label.to_owned(),
    })
}

impl Poll {
    /// Same question, options, window and counters (the status and the
    /// creation time aside): creating such a poll again is a no-op.
    pub fn same_definition(&self, other: &Poll) -> bool {
        self.id == other.id
            && self.question == other.question
            && self.options == other.options
            && self.opens_at == other.opens_at
            && self.closes_at == other.closes_at
            && self.counter_shards == other.counter_shards
    }

    /// Checks a definition before it is stored.
    pub fn validate(&self) -> Result<(), InvalidPoll> {
        if !valid_id(&self.id, MAX_ID_CHARS) {
            return Err(invalid(
                "id",
                format!(
                    "{:?} must be 1 to {MAX_ID_CHARS} characters of [A-Za-z0-9._:@-]",
                    self.id
                ),
            ));
        }
        let question_chars = self.question.chars().count();
        if question_chars == 0 || question_chars > MAX_QUESTION_CHARS {
            return Err(invalid(
                "question",
                format!("must be 1 to {MAX_QUESTION_CHARS} characters"),
            ));
        }
        if self.options.len() < 2 || self.options.len() > MAX_OPTIONS {
            return Err(invalid(
                "option",
                format!(
                    "a poll has 2 to {MAX_OPTIONS} options, not {}",
                    self.options.len()
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for option in &self.options {
            if !valid_id(&option.id, MAX_ID_CHARS) {
                return Err(invalid(
                    "option",
                    format!(
                        "id {:?} must be 1 to {MAX_ID_CHARS} characters of [A-Za-z0-9._:@-]",
                        option.id
                    ),
                ));
            }
            let label_chars = option.label.chars().count();
            if label_chars == 0 || label_chars > MAX_LABEL_CHARS {
                return Err(invalid(
                    "option",
                    format!(
                        "label of {:?} must be 1 to {MAX_LABEL_CHARS} characters",
                        option.id
                    ),
                ));
            }
            if !seen.insert(option.id.as_str()) {
                return Err(invalid("option", format!("{:?} appears twice", option.id)));
            }
        }
        if let (Some(opens), Some(closes)) = (self.opens_at, self.closes_at) {
            if closes <= opens {
                return Err(invalid("closes_at", "must be later than opens_at"));
            }
        }
        if self.counter_shards == 0 || self.counter_shards > MAX_COUNTER_SHARDS {
            return Err(invalid(
                "counter_shards",
                format!("must be 1 to {MAX_COUNTER_SHARDS}"),
            ));
        }
        Ok(())
    }

    /// True when a record that arrived at `arrival_ms` falls in the window.
    pub fn is_open_at(&self, arrival_ms: i64) -> bool {
        self.status != PollStatus::Draft
            && self.opens_at.is_none_or(|opens| opens <= arrival_ms)
            && self.closes_at.is_none_or(|closes| arrival_ms < closes)
    }

    /// Decides whether `vote`, which arrived at `arrival_ms`, is valid for
    /// this poll.
    pub fn check(&self, vote: &Vote, arrival_ms: i64) -> Result<(), Rejection> {
        if !self.is_open_at(arrival_ms) {
            return Err(Rejection::new(
                Reason::PollNotOpen,
                format!(
                    "poll {} ({}) was not open when the vote arrived at {}",
                    self.id,
                    self.status,
                    tally_contract::time::format_rfc3339(arrival_ms)
                ),
            ));
        }
        if !self.options.iter().any(|option| option.id == vote.option) {
            return Err(Rejection::new(
                Reason::InvalidOption,
                format!("poll {} has no option {:?}", self.id, vote.option),
            ));
        }
        Ok(())
    }

    /// Opens the poll now (`now_ms`), unless an earlier opening time is set.
    pub fn open(&mut self, now_ms: i64) -> Result<(), InvalidPoll> {
        match self.status {
            PollStatus::Draft | PollStatus::Open => {
                self.status = PollStatus::Open;
                if self.opens_at.is_none_or(|opens| opens > now_ms) {
                    self.opens_at = Some(now_ms);
                }
                Ok(())
            }
            PollStatus::Closed | PollStatus::Final => Err(invalid(
                "status",
                format!(
                    "poll {} is {}; a closed poll does not reopen",
                    self.id, self.status
                ),
            )),
        }
    }

    /// Closes the poll at `at_ms` (votes that arrived before still count),
    /// unless an earlier closing time is set. A draft, never opened, closes
    /// with an empty window: it counts no vote.
    pub fn close(&mut self, at_ms: i64) -> Result<(), InvalidPoll> {
        match self.status {
            PollStatus::Final => Err(invalid("status", format!("poll {} is final", self.id))),
            PollStatus::Draft => {
                // A draft never opened, so closed it counts nothing: an
                // empty window (without one, every vote that arrived before
                // the close would count).
                self.status = PollStatus::Closed;
                self.opens_at = Some(at_ms);
                self.closes_at = Some(at_ms);
                Ok(())
            }
            PollStatus::Open | PollStatus::Closed => {
                if self.opens_at.is_some_and(|opens| at_ms <= opens) {
                    return Err(invalid(
                        "closes_at",
                        format!(
                            "poll {} opens at {}; it cannot close before",
                            self.id,
                            tally_contract::time::format_rfc3339(self.opens_at.unwrap_or_default())
                        ),
                    ));
                }
                self.status = PollStatus::Closed;
                if self.closes_at.is_none_or(|closes| closes > at_ms) {
                    self.closes_at = Some(at_ms);
                }
                Ok(())
            }
        }
    }

    pub fn has_option(&self, option: &str) -> bool {
        self.options.iter().any(|candidate| candidate.id == option)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_poll as sample;

    fn vote(option: &str) -> Vote {
        Vote {
            vote_id: "v1".into(),
            poll_id: "p".into(),
            option: option.into(),
            voter_id: "u".into(),
            cast_at: None,
        }
    }

    #[test]
    fn a_closed_draft_counts_no_vote() {
        let mut poll = sample("p");
        poll.status = PollStatus::Draft;
        poll.close(1_000).unwrap();
        assert_eq!(poll.status, PollStatus::Closed);
        for arrival in [i64::MIN, 0, 999, 1_000, 5_000] {
            assert_eq!(
                poll.check(&vote("a"), arrival).unwrap_err().reason,
                Reason::PollNotOpen,
                "arrival {arrival}"
            );
        }
        // A scheduled draft (an opening time, never opened) too.
        let mut scheduled = sample("q");
        scheduled.status = PollStatus::Draft;
        scheduled.opens_at = Some(100);
        scheduled.close(1_000).unwrap();
        assert!(scheduled.check(&vote("a"), 500).is_err());
    }

    #[test]
    fn window_and_options_decide() {
        let mut poll = sample("p");
        assert_eq!(poll.options[0].label, "Alpha");
        assert_eq!(poll.options[1].label, "b");
        assert!(poll.check(&vote("a"), 5).is_ok());
        assert_eq!(
            poll.check(&vote("c"), 5).unwrap_err().reason,
            Reason::InvalidOption
        );
        poll.opens_at = Some(10);
        poll.closes_at = Some(20);
        assert_eq!(
            poll.check(&vote("a"), 9).unwrap_err().reason,
            Reason::PollNotOpen
        );
        assert!(poll.check(&vote("a"), 10).is_ok());
        assert!(poll.check(&vote("a"), 19).is_ok());
        assert_eq!(
            poll.check(&vote("a"), 20).unwrap_err().reason,
            Reason::PollNotOpen
        );
        poll.status = PollStatus::Draft;
        assert_eq!(
            poll.check(&vote("a"), 15).unwrap_err().reason,
            Reason::PollNotOpen
        );
    }

    #[test]
    fn life_cycle() {
        let mut poll = sample("p");
        poll.status = PollStatus::Draft;
        poll.open(100).unwrap();
        assert_eq!((poll.status, poll.opens_at), (PollStatus::Open, Some(100)));
        poll.open(200).unwrap();
        assert_eq!(
            poll.opens_at,
            Some(100),
            "opening again keeps the first time"
        );
        assert!(poll.close(50).is_err(), "cannot close before it opened");
        poll.close(300).unwrap();
        assert_eq!(
            (poll.status, poll.closes_at),
            (PollStatus::Closed, Some(300))
        );
        poll.close(400).unwrap();
        assert_eq!(
            poll.closes_at,
            Some(300),
            "closing again keeps the first time"
        );
        assert!(poll.open(500).is_err(), "a closed poll does not reopen");
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let mut poll = sample("p");
        poll.options.pop();
        assert_eq!(poll.validate().unwrap_err().field, "option");
        let mut poll = sample("bad id");
        assert_eq!(poll.validate().unwrap_err().field, "id");
        poll.id = "p".into();
        poll.options.push(parse_option("a").unwrap());
        assert!(poll.validate().unwrap_err().reason.contains("twice"));
        let mut poll = sample("p");
        poll.opens_at = Some(10);
        poll.closes_at = Some(10);
        assert_eq!(poll.validate().unwrap_err().field, "closes_at");
        let mut poll = sample("p");
        poll.counter_shards = 0;
        assert_eq!(poll.validate().unwrap_err().field, "counter_shards");
        assert!(sample("p").validate().is_ok());
    }
}
