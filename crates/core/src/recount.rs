//! The recount's arithmetic: the count of a poll's counted votes with an
//! order-independent digest of the vote set, and its comparison with the
//! live tallies. Pure: the scan that feeds it lives with the stores.

use std::collections::{BTreeMap, BTreeSet};

use md5::{Digest, Md5};
use serde::Serialize;
use tally_contract::time::format_rfc3339;

use crate::poll::Poll;
use crate::records::VoteItem;

/// How many voters per option a mismatch report names.
pub const SAMPLE_VOTERS: usize = 10;

/// What a recount of the `votes` table found for one poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recount {
    pub by_option: BTreeMap<String, u64>,
    pub votes: u64,
    /// An order-independent digest of the counted vote set: the sum,
    /// modulo 2^128, of the MD5 of each `voter \0 option \0 vote_id`.
    pub digest: String,
    /// A few voters per option, for reports.
    #[serde(skip)]
    pub samples: BTreeMap<String, Vec<String>>,
    #[serde(skip)]
    sum: u128,
}

/// The MD5 of one counted vote, as a number.
pub fn vote_hash(vote: &VoteItem) -> u128 {
    let mut hasher = Md5::new();
    for part in [&vote.voter_id, &vote.option, &vote.vote_id] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    u128::from_be_bytes(hasher.finalize().into())
}

impl Default for Recount {
    fn default() -> Self {
        Self {
            by_option: BTreeMap::new(),
            votes: 0,
            digest: format!("{:032x}", 0u128),
            samples: BTreeMap::new(),
            sum: 0,
        }
    }
}

impl Recount {
    pub fn add(&mut self, vote: &VoteItem) {
        *self.by_option.entry(vote.option.clone()).or_default() += 1;
        self.votes += 1;
        self.sum = self.sum.wrapping_add(vote_hash(vote));
        let samples = self.samples.entry(vote.option.clone()).or_default();
        if samples.len() < SAMPLE_VOTERS {
            samples.push(vote.voter_id.clone());
        }
        self.digest = format!("{:032x}", self.sum);
    }

    /// Adds another part of the count (segments are counted apart).
    pub fn merge(&mut self, other: Recount) {
        for (option, count) in other.by_option {
            *self.by_option.entry(option).or_default() += count;
        }
        self.votes += other.votes;
        self.sum = self.sum.wrapping_add(other.sum);
        for (option, voters) in other.samples {
            let samples = self.samples.entry(option).or_default();
            for voter in voters {
                if samples.len() < SAMPLE_VOTERS {
                    samples.push(voter);
                }
            }
        }
        self.digest = format!("{:032x}", self.sum);
    }
}

/// How an operator settled a mismatch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resolution {
    /// `recount` (the counters were replaced by the recount) or `tallies`
    /// (the live counts were accepted as they are).
    pub used: String,
    pub reason: String,
    /// The counters before a replacement.
    pub previous_tallies: BTreeMap<String, u64>,
    pub resolved_at: String,
}

/// One option where the tallies and the recount differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub option: String,
    pub tallies: u64,
    pub recount: u64,
    /// Some voters whose counted vote is for this option.
    pub sample_voters: Vec<String>,
}

/// The comparison of a poll's live tallies with its recount.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Audit {
    pub poll_id: String,
    pub status: String,
    pub equal: bool,
    pub tallies: BTreeMap<String, u64>,
    pub recount: BTreeMap<String, u64>,
    pub votes: u64,
    pub digest: String,
    pub differences: Vec<Difference>,
    pub audited_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
}

/// Compares counts option by option (an option on one side only counts
/// as zero on the other).
pub fn compare(
    poll: &Poll,
    tallies: &BTreeMap<String, u64>,
    recount: &Recount,
    at_ms: i64,
) -> Audit {
    let options: BTreeSet<&String> = tallies
        .keys()
        .chain(recount.by_option.keys())
        .chain(poll.options.iter().map(|option| &option.id))
        .collect();
    let mut differences = Vec::new();
    let mut tallies_all = BTreeMap::new();
    let mut recount_all = BTreeMap::new();
    for option in options {
        let live = tallies.get(option).copied().unwrap_or(0);
        let recounted = recount.by_option.get(option).copied().unwrap_or(0);
        tallies_all.insert(option.clone(), live);
        recount_all.insert(option.clone(), recounted);
        if live != recounted {
            differences.push(Difference {
                option: option.clone(),
                tallies: live,
                recount: recounted,
                sample_voters: recount.samples.get(option).cloned().unwrap_or_default(),
            });
        }
    }
    Audit {
        poll_id: poll.id.clone(),
        status: poll.status.as_str().to_owned(),
        equal: differences.is_empty(),
        tallies: tallies_all,
        recount: recount_all,
        votes: recount.votes,
        digest: recount.digest.clone(),
        differences,
        audited_at: format_rfc3339(at_ms),
        resolution: None,
    }
}

/// An audit as people read it.
pub fn audit_text(audit: &Audit) -> String {
    let mut text = format!(
        "poll {} ({}): the tallies and the recount of the votes table {}\n  {:<24} {:>12} {:>12}\n",
        audit.poll_id,
        audit.status,
        if audit.equal { "AGREE" } else { "DIFFER" },
        "option",
        "tallies",
        "recount"
    );
    for (option, recounted) in &audit.recount {
        let live = audit.tallies.get(option).copied().unwrap_or(0);
        let mark = if live == *recounted {
            ""
        } else {
            "   <- differs"
        };
        text.push_str(&format!(
            "  {option:<24} {live:>12} {recounted:>12}{mark}\n"
        ));
    }
    text.push_str(&format!(
        "  counted votes in the votes table: {}; digest {}; audited at {}\n",
        audit.votes, audit.digest, audit.audited_at
    ));
    for difference in &audit.differences {
        text.push_str(&format!(
            "  {}: tallies {} vs recount {}; some voters counted for it: {}\n",
            difference.option,
            difference.tallies,
            difference.recount,
            if difference.sample_voters.is_empty() {
                "none".to_owned()
            } else {
                difference.sample_voters.join(", ")
            }
        ));
    }
    if let Some(resolution) = &audit.resolution {
        text.push_str(&format!(
            "  resolved by using the {} ({}) at {}\n",
            resolution.used, resolution.reason, resolution.resolved_at
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Origin;

    fn vote(voter: &str, option: &str) -> VoteItem {
        VoteItem {
            poll_id: "p".into(),
            voter_id: voter.into(),
            option: option.into(),
            vote_id: format!("v-{voter}"),
            origin: Origin {
                shard: "s".into(),
                sequence: "1".into(),
                sub_sequence: 0,
            },
            arrival_ms: 0,
        }
    }

    proptest::proptest! {
        #[test]
        fn the_digest_and_counts_do_not_depend_on_order_or_split(
            voters in proptest::collection::btree_set("[a-z]{1,6}", 0..40),
            split in 0usize..40,
        ) {
            let votes: Vec<VoteItem> = voters
                .iter()
                .enumerate()
                .map(|(index, voter)| vote(voter, if index % 3 == 0 { "a" } else { "b" }))
                .collect();
            let mut whole = Recount::default();
            votes.iter().for_each(|v| whole.add(v));
            let split = split.min(votes.len());
            let (mut first, mut second) = (Recount::default(), Recount::default());
            votes[..split].iter().rev().for_each(|v| second.add(v));
            votes[split..].iter().for_each(|v| first.add(v));
            first.merge(second);
            proptest::prop_assert_eq!(&first.by_option, &whole.by_option);
            proptest::prop_assert_eq!(first.votes, whole.votes);
            proptest::prop_assert_eq!(&first.digest, &whole.digest);
        }

        /// Another vote set has another digest: a vote whose id changed,
        /// a vote added, or a vote dropped.
        #[test]
        fn the_digest_changes_with_the_vote_set(
            voters in proptest::collection::btree_set("[a-z]{1,6}", 1..40),
            pick in proptest::prelude::any::<proptest::sample::Index>(),
            new_id in "[a-z0-9-]{1,12}",
            added in "[A-Z]{1,6}",
        ) {
            let votes: Vec<VoteItem> = voters
                .iter()
                .enumerate()
                .map(|(index, voter)| vote(voter, if index % 3 == 0 { "a" } else { "b" }))
                .collect();
            let digest = |votes: &[VoteItem]| {
                let mut recount = Recount::default();
                votes.iter().for_each(|v| recount.add(v));
                recount.digest
            };
            let honest = digest(&votes);
            let at = pick.index(votes.len());

            let mut renamed = votes.clone();
            proptest::prop_assume!(renamed[at].vote_id != new_id);
            renamed[at].vote_id = new_id;
            proptest::prop_assert_ne!(&digest(&renamed), &honest, "a changed vote id");

            let mut more = votes.clone();
            more.push(vote(&added, "a"));
            proptest::prop_assert_ne!(&digest(&more), &honest, "a vote added");

            let mut fewer = votes.clone();
            fewer.remove(at);
            proptest::prop_assert_ne!(&digest(&fewer), &honest, "a vote dropped");
        }
    }

    #[test]
    fn a_changed_vote_changes_the_digest_and_the_comparison_names_it() {
        let mut honest = Recount::default();
        let mut other = Recount::default();
        honest.add(&vote("u1", "a"));
        other.add(&vote("u1", "b"));
        assert_ne!(honest.digest, other.digest);
        let poll = crate::poll::Poll {
            id: "p".into(),
            question: "?".into(),
            options: vec![
                crate::poll::PollOption {
                    id: "a".into(),
                    label: "A".into(),
                },
                crate::poll::PollOption {
                    id: "b".into(),
                    label: "B".into(),
                },
            ],
            opens_at: None,
            closes_at: None,
            status: crate::poll::PollStatus::Closed,
            counter_shards: 1,
            created_at: 0,
        };
        let tallies = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 0)]);
        assert!(compare(&poll, &tallies, &honest, 0).equal);
        let audit = compare(&poll, &BTreeMap::from([("a".to_owned(), 2)]), &honest, 0);
        assert!(!audit.equal);
        assert_eq!(audit.differences.len(), 1);
        assert_eq!(audit.differences[0].option, "a");
        assert_eq!(
            (audit.differences[0].tallies, audit.differences[0].recount),
            (2, 1)
        );
        assert_eq!(audit.differences[0].sample_voters, ["u1"]);
        assert_eq!(audit.recount["b"], 0, "every option is listed");
    }
}
