//! The records the vote tables keep, as plain data: counted votes with
//! their stream origin, rejects, commits, counts and scan pages. The store
//! traits (in `tally-store`) speak these types; nothing here does I/O.

use std::collections::BTreeMap;

use tally_contract::stream::{Checkpoint, Fence};
use tally_contract::vote::Reason;

use crate::count::Deltas;

/// How many bytes of a rejected record are kept.
pub const MAX_REJECT_RAW_BYTES: usize = 4096;

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
