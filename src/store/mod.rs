//! The vote tables boundary. [`VoteStore`] speaks our types only; the
//! DynamoDB adapter ([`dynamo`]) and the in-memory one ([`memory`]) pass the
//! same conformance suite ([`conformance`], with the `testing` feature).
//!
//! Tables (names are the prefix, `tally-` by default, plus the name):
//! `polls` (one item per poll), `votes` (one item per voter and poll: the
//! counted vote and its stream origin), `tallies` (counter items, several
//! per poll), `rejects` (one item per rejected record, keyed by its stream
//! position). The lease table belongs to the lease library; a commit
//! updates a lease item in the same transaction as the counters.

pub mod dynamo;
pub mod memory;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

use std::collections::BTreeMap;

use async_trait::async_trait;
use tally_lease::{Checkpoint, Fence};

use crate::count::{CounterKey, Deltas};
use crate::poll::{Poll, PollStatus};
use crate::vote::Reason;

/// How many bytes of a rejected record are kept.
pub const MAX_REJECT_RAW_BYTES: usize = 4096;

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

/// Where a record sits in the stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub shard: String,
    pub sequence: String,
    pub sub_sequence: u64,
}

impl Origin {
    /// `shard/sequence/sub`: the `rejects` key and the `votes` origin.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.shard, self.sequence, self.sub_sequence)
    }

    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.rsplitn(3, '/');
        let sub_sequence = parts.next()?.parse().ok()?;
        let sequence = parts.next()?.to_owned();
        let shard = parts.next()?.to_owned();
        Some(Self {
            shard,
            sequence,
            sub_sequence,
        })
    }
}

/// The one counted vote of a voter in a poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteItem {
    pub poll_id: String,
    pub voter_id: String,
    pub option: String,
    pub vote_id: String,
    pub origin: Origin,
    /// The record's arrival, milliseconds since the epoch.
    pub arrival_ms: i64,
}

/// The outcome of the conditional put of a vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutVote {
    /// Stored now, or stored before from this very record (a replay).
    Counted,
    /// The voter already has a vote in this poll from another record.
    Duplicate,
}

/// A rejected record, kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectItem {
    pub origin: Origin,
    pub reason: Reason,
    pub detail: String,
    /// The first [`MAX_REJECT_RAW_BYTES`] of the record.
    pub raw: Vec<u8>,
    /// The record's full length.
    pub raw_len: u64,
    pub partition_key: String,
    pub arrival_ms: i64,
    /// Known when the record decoded as a vote.
    pub poll_id: Option<String>,
    pub voter_id: Option<String>,
    pub vote_id: Option<String>,
}

impl RejectItem {
    /// Keeps the first [`MAX_REJECT_RAW_BYTES`] of `data`.
    pub fn truncate_raw(data: &[u8]) -> (Vec<u8>, u64) {
        (
            data[..data.len().min(MAX_REJECT_RAW_BYTES)].to_vec(),
            data.len() as u64,
        )
    }
}

/// One commit: counter deltas and a checkpoint, fenced by the lease.
#[derive(Clone, Debug)]
pub struct Commit {
    pub fence: Fence,
    /// The checkpoint this commit continues from.
    pub previous: Checkpoint,
    pub next: Checkpoint,
    pub deltas: Deltas,
    /// `ClientRequestToken`: the same for a retry of this commit.
    pub token: String,
}

/// The outcome of a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Applied (now, or by an earlier attempt whose response was lost).
    Committed,
    /// The lease is no longer ours: nothing was applied.
    Lost,
}

/// A poll's counts, summed over its counter items.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub by_option: BTreeMap<String, u64>,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.by_option.values().sum()
    }
}

/// One page of a parallel scan of the `votes` table.
#[derive(Clone, Debug, Default)]
pub struct VotePage {
    /// The page's votes of the poll asked for.
    pub votes: Vec<VoteItem>,
    /// Items read, the poll's or not (for progress).
    pub scanned: u64,
    /// Where the segment goes on; `None`: the segment is done.
    pub next: Option<String>,
}

/// The vote tables.
#[async_trait]
pub trait VoteStore: Send + Sync + 'static {
    /// Creates the tables unless they exist.
    async fn ensure_tables(&self) -> Result<(), VoteStoreError>;
    /// Stores a new poll; `false` when a poll with that id exists.
    async fn create_poll(&self, poll: &Poll) -> Result<bool, VoteStoreError>;
    /// Replaces a poll's status and window if its status is still
    /// `expected`; `false` when it changed meanwhile.
    async fn update_poll(&self, poll: &Poll, expected: PollStatus) -> Result<bool, VoteStoreError>;
    async fn get_poll(&self, id: &str) -> Result<Option<Poll>, VoteStoreError>;
    async fn list_polls(&self) -> Result<Vec<Poll>, VoteStoreError>;
    /// Stores the vote unless the voter has one in the poll from another
    /// record: the condition is "no item, or the item's origin is this
    /// record", so a replay of a stored vote is still `Counted`.
    async fn put_vote(&self, vote: &VoteItem) -> Result<PutVote, VoteStoreError>;
    async fn get_vote(
        &self,
        poll_id: &str,
        voter_id: &str,
    ) -> Result<Option<VoteItem>, VoteStoreError>;
    /// Keeps a rejected record (idempotent: keyed by its position).
    async fn put_reject(&self, reject: &RejectItem) -> Result<(), VoteStoreError>;
    /// The rejected records of a voter in a poll.
    async fn rejects_of(
        &self,
        poll_id: &str,
        voter_id: &str,
    ) -> Result<Vec<RejectItem>, VoteStoreError>;
    /// Adds the deltas and checkpoints, atomically, if the lease still
    /// meets the fence and its checkpoint is still `previous`.
    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome, VoteStoreError>;
    /// A poll's counts, read from all its counter items.
    async fn counts(&self, poll: &Poll) -> Result<Counts, VoteStoreError>;
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
    /// Requests sent so far and write units consumed (as reported), for
    /// benchmarks.
    fn usage(&self) -> Usage {
        Usage::default()
    }
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
