//! # tally-store
//!
//! The vote tables boundary. The store traits speak our types only and are
//! split by who uses them ([`PollStore`], [`CountStore`], [`VoteReads`],
//! [`AuditStore`]; [`VoteStore`] is all four); the DynamoDB adapter
//! ([`dynamo`]) and the in-memory one ([`memory`]) pass the same
//! conformance suite ([`conformance`], with the `testing` feature).
//! [`admin`] holds the poll operations built on them (create, open, close,
//! results, vote status), shared by the command line and the gateway;
//! [`poll_cache`] the poll cache the worker and the gateway share.
//!
//! Tables (names are the prefix, `tally-` by default, plus the name):
//! `polls` (one item per poll), `votes` (one item per voter and poll: the
//! counted vote and its stream origin), `tallies` (counter items, several
//! per poll), `rejects` (one item per rejected record, keyed by its stream
//! position). The lease table belongs to the lease library; a commit
//! updates a lease item in the same transaction as the counters.

pub mod admin;
pub mod dynamo;
pub mod memory;
pub mod poll_cache;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

use async_trait::async_trait;

use tally_core::count::CounterKey;
use tally_core::poll::{Poll, PollStatus};

/// Errors at the vote tables boundary.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VoteStoreError {
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("transaction conflict: {0}")]
    Conflict(String),
    #[error("service unavailable (the request may or may not have happened): {0}")]
    Unavailable(String),
    #[error("table {0} does not exist (run `tally init`)")]
    TableMissing(String),
    #[error("item {key} is malformed: {reason}")]
    Malformed { key: String, reason: String },
    #[error("request failed: {0}")]
    Other(String),
}

impl VoteStoreError {
    /// Throttling, transaction conflicts, 5xx and timeouts are worth
    /// another try.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            VoteStoreError::Throttled(_)
                | VoteStoreError::Conflict(_)
                | VoteStoreError::Unavailable(_)
        )
    }

    /// The cause, as the `retries` metric names it.
    pub fn cause(&self) -> &'static str {
        match self {
            VoteStoreError::Throttled(_) => "throttled",
            VoteStoreError::Conflict(_) => "conflict",
            VoteStoreError::Unavailable(_) => "unavailable",
            VoteStoreError::TableMissing(_) => "table_missing",
            VoteStoreError::Malformed { .. } => "malformed",
            VoteStoreError::Other(_) => "other",
        }
    }
}

pub use tally_core::records::*;

/// Votes in one batched write: DynamoDB's limit of statements in one
/// `BatchExecuteStatement` request.
pub const MAX_BATCH_STATEMENTS: usize = 25;

/// The store traits, for code that calls them on a concrete adapter.
pub mod prelude {
    pub use crate::{AuditStore, CountStore, PollStore, VoteReads, VoteStore};
}

/// The vote tables, split by who uses them: every adapter implements the
/// four traits, and [`VoteStore`] is all of them at once for those that
/// need several.
pub trait VoteStore: PollStore + CountStore + VoteReads + AuditStore {}

impl<T: PollStore + CountStore + VoteReads + AuditStore + ?Sized> VoteStore for T {}

/// Polls, and the tables themselves: the admin commands, the gateway and the poll cache of the pipeline.
#[async_trait]
pub trait PollStore: Send + Sync + 'static {
    /// Creates the tables unless they exist.
    async fn ensure_tables(&self) -> Result<(), VoteStoreError>;
    /// Stores a new poll; `false` when a poll with that id exists.
    async fn create_poll(&self, poll: &Poll) -> Result<bool, VoteStoreError>;
    /// Replaces a poll's status and window if its status is still
    /// `expected`; `false` when it changed meanwhile.
    async fn update_poll(&self, poll: &Poll, expected: PollStatus) -> Result<bool, VoteStoreError>;
    async fn get_poll(&self, id: &str) -> Result<Option<Poll>, VoteStoreError>;
    async fn list_polls(&self) -> Result<Vec<Poll>, VoteStoreError>;
}

/// Refuses votes that name one (voter, poll) twice: DynamoDB answers a
/// `BatchExecuteStatement` (or `BatchWriteItem`) naming one key twice with a
/// `ValidationException` for the whole request; ministack accepts it. Both
/// adapters check it, so the memory store and the emulator behave as AWS.
/// The pipeline's first-wins rule never sends such a batch.
pub fn distinct_vote_keys(votes: &[VoteItem]) -> Result<(), VoteStoreError> {
    let mut keys = std::collections::HashSet::with_capacity(votes.len());
    for vote in votes {
        if !keys.insert((vote.voter_id.as_str(), vote.poll_id.as_str())) {
            return Err(VoteStoreError::Other(format!(
                "one request names the vote of voter {:?} in poll {:?} twice (DynamoDB refuses it: ValidationException)",
                vote.voter_id, vote.poll_id
            )));
        }
    }
    Ok(())
}

/// The counting hot path: the worker's conditional puts, kept rejects and fenced commits.
#[async_trait]
pub trait CountStore: Send + Sync + 'static {
    /// Stores the vote unless the voter has one in the poll from another
    /// record: the condition is "no item, or the item's origin is this
    /// record", so a replay of a stored vote is still `Counted`.
    async fn put_vote(&self, vote: &VoteItem) -> Result<PutVote, VoteStoreError>;
    /// Stores several votes (of distinct voters and polls), each as
    /// [`CountStore::put_vote`] would: one result per vote, in order. A
    /// vote's own failure (say, throttled alone) is its result; a failure
    /// of the whole call is the `Err`, and the call may be made again: a
    /// vote stored by a call whose answer was lost comes back `Counted`.
    /// A call that names one (voter, poll) twice is refused whole and
    /// stores nothing, as DynamoDB refuses such a request. By default, one
    /// `put_vote` after another.
    async fn put_votes(
        &self,
        votes: &[VoteItem],
    ) -> Result<Vec<Result<PutVote, VoteStoreError>>, VoteStoreError> {
        distinct_vote_keys(votes)?;
        let mut outcomes = Vec::with_capacity(votes.len());
        for vote in votes {
            outcomes.push(self.put_vote(vote).await);
        }
        Ok(outcomes)
    }
    /// Keeps a rejected record (idempotent: keyed by its position).
    async fn put_reject(&self, reject: &RejectItem) -> Result<(), VoteStoreError>;
    /// Adds the deltas and checkpoints, atomically, if the lease still
    /// meets the fence and its checkpoint is still `previous`.
    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome, VoteStoreError>;
    /// Requests sent so far and write units consumed (as reported): the
    /// worker's `/metrics` show them, so benchmarks can report requests
    /// per vote.
    fn usage(&self) -> Usage {
        Usage::default()
    }
}

/// One key's answer of [`VoteReads::get_votes`].
pub type VoteRead = Result<Option<VoteItem>, VoteStoreError>;

/// Reads of votes, rejects and counts: results, `votes/me` and `tally vote-status`.
#[async_trait]
pub trait VoteReads: Send + Sync + 'static {
    async fn get_vote(
        &self,
        poll_id: &str,
        voter_id: &str,
    ) -> Result<Option<VoteItem>, VoteStoreError>;
    /// The votes of several (poll, voter) pairs, in order, read
    /// consistently; `None` where there is none. A stored item that cannot
    /// be read is that key's error only; a failed request is the `Err`. By
    /// default one `get_vote` after another.
    async fn get_votes(&self, keys: &[(String, String)]) -> Result<Vec<VoteRead>, VoteStoreError> {
        let mut votes = Vec::with_capacity(keys.len());
        for (poll_id, voter_id) in keys {
            votes.push(match self.get_vote(poll_id, voter_id).await {
                Err(error @ VoteStoreError::Malformed { .. }) => Err(error),
                other => Ok(other?),
            });
        }
        Ok(votes)
    }
    /// The rejected records of a voter in a poll.
    async fn rejects_of(
        &self,
        poll_id: &str,
        voter_id: &str,
    ) -> Result<Vec<RejectItem>, VoteStoreError>;
    /// A poll's counts, read from all its counter items.
    async fn counts(&self, poll: &Poll) -> Result<Counts, VoteStoreError>;
}

/// The end of a poll: the recount scan, audit records, finalizing and an operator's resolution.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// One page of segment `segment` of `segments` of a parallel scan of
    /// the `votes` table, keeping the votes of `poll_id`; `start` is the
    /// previous page's `next`.
    async fn scan_votes_page(
        &self,
        poll_id: &str,
        segment: u32,
        segments: u32,
        start: Option<String>,
    ) -> Result<VotePage, VoteStoreError>;
    /// Makes a `closed` poll `final` with its audit record (JSON); `false`
    /// when the poll is not `closed`.
    async fn finalize_poll(&self, poll_id: &str, audit: &str) -> Result<bool, VoteStoreError>;
    /// Keeps the report of a recount that did not match (JSON), without
    /// changing the poll's status; `None` clears it.
    async fn set_mismatch(&self, poll_id: &str, report: Option<&str>)
        -> Result<(), VoteStoreError>;
    /// The poll's audit record and mismatch report, as stored.
    async fn audit_records(
        &self,
        poll_id: &str,
    ) -> Result<(Option<String>, Option<String>), VoteStoreError>;
    /// Replaces a poll's counters with `counts` (all on its first counter
    /// item, the others zeroed): only for an operator resolving a mismatch
    /// on a closed poll, and for shadow tallies.
    async fn set_counts(&self, poll: &Poll, counts: &Counts) -> Result<(), VoteStoreError>;
}

/// Requests and capacity a store has used.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub requests: u64,
    pub write_units: f64,
}

/// The counter items of a poll.
pub fn counter_keys(poll: &Poll) -> Vec<CounterKey> {
    (0..poll.counter_shards)
        .map(|shard| CounterKey {
            poll_id: poll.id.clone(),
            shard,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_round_trip() {
        let origin = Origin {
            shard: "shardId-000000000001".into(),
            sequence: "4968".into(),
            sub_sequence: 3,
        };
        assert_eq!(Origin::parse(&origin.key()), Some(origin));
        assert_eq!(Origin::parse("nonsense"), None);
    }
}
