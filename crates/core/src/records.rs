//! The records the vote tables keep, as plain data: counted votes with
//! their stream origin, rejects, commits, counts and scan pages. The store
//! traits (in `tally-store`) speak these types; nothing here does I/O.

use std::collections::BTreeMap;

use tally_contract::stream::{Checkpoint, Fence};
use tally_contract::vote::Reason;

use crate::count::Deltas;

/// How many bytes of a rejected record are kept.
pub const MAX_REJECT_RAW_BYTES: usize = 4096;

/// Longest `detail` and `partition_key` a reject keeps, in bytes (cut at a
/// character boundary). Kinesis keys are at most 256 characters (1 KiB).
pub const MAX_REJECT_TEXT_BYTES: usize = 1024;

/// DynamoDB's item size limit (names and values together). Unlike the
/// emulators, AWS refuses a larger item with a `ValidationException`,
/// which no retry fixes: a reject that large would stall its shard.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

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
    /// The reject of the record `data` under `partition_key`, each field cut
    /// to its limit, so that [`RejectItem::item_bytes`] stays a few KiB
    /// whatever the record held.
    pub fn new(
        origin: Origin,
        rejection: &tally_contract::vote::Rejection,
        data: &[u8],
        partition_key: &str,
        arrival_ms: i64,
        vote: Option<&tally_contract::vote::Vote>,
    ) -> Self {
        let (raw, raw_len) = Self::truncate_raw(data);
        Self {
            origin,
            reason: rejection.reason,
            detail: clip(&rejection.detail, MAX_REJECT_TEXT_BYTES),
            raw,
            raw_len,
            partition_key: clip(partition_key, MAX_REJECT_TEXT_BYTES),
            arrival_ms,
            poll_id: vote.map(|v| clip(&v.poll_id, MAX_REJECT_TEXT_BYTES)),
            voter_id: vote.map(|v| clip(&v.voter_id, MAX_REJECT_TEXT_BYTES)),
            vote_id: vote.map(|v| clip(&v.vote_id, MAX_REJECT_TEXT_BYTES)),
        }
    }

    /// The item's size as DynamoDB counts it (attribute names plus values;
    /// a number counted at its 21-byte maximum), over the attributes the
    /// DynamoDB adapter writes.
    pub fn item_bytes(&self) -> usize {
        const NUMBER: usize = 21;
        let text = |name: &str, value: &str| name.len() + value.len();
        let optional = |name: &str, value: &Option<String>| {
            value.as_deref().map_or(0, |value| text(name, value))
        };
        text("position", &self.origin.key())
            + text("reason", self.reason.as_str())
            + text("detail", &self.detail)
            + "raw".len()
            + self.raw.len()
            + "raw_len".len()
            + NUMBER
            + text("partition_key", &self.partition_key)
            + "arrival_ms".len()
            + NUMBER
            + optional("poll_id", &self.poll_id)
            + optional("voter_id", &self.voter_id)
            + optional("vote_id", &self.vote_id)
    }

    /// Keeps the first [`MAX_REJECT_RAW_BYTES`] of `data`.
    pub fn truncate_raw(data: &[u8]) -> (Vec<u8>, u64) {
        (
            data[..data.len().min(MAX_REJECT_RAW_BYTES)].to_vec(),
            data.len() as u64,
        )
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
pub fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
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

#[cfg(test)]
mod tests {
    use super::*;
    use tally_contract::vote::Rejection;

    #[test]
    fn a_reject_of_any_record_stays_far_below_the_item_limit() {
        let origin = Origin {
            shard: "shardId-000000000000".into(),
            sequence: "9".repeat(56),
            sub_sequence: u64::MAX,
        };
        let huge = "é".repeat(300_000);
        let rejection = Rejection::new(Reason::Malformed, huge.clone());
        let vote = tally_contract::vote::Vote {
            vote_id: huge.clone(),
            poll_id: huge.clone(),
            option: huge.clone(),
            voter_id: huge.clone(),
            cast_at: None,
        };
        let reject = RejectItem::new(origin, &rejection, &[7; 1 << 20], &huge, 0, Some(&vote));
        assert!(reject.item_bytes() < 10 * 1024, "{}", reject.item_bytes());
        assert!(reject.item_bytes() < MAX_ITEM_BYTES);
        assert_eq!(reject.raw_len, 1 << 20);
        assert_eq!(
            reject.detail.len(),
            MAX_REJECT_TEXT_BYTES,
            "cut between characters"
        );
        assert_eq!(clip("aé", 2), "a");
    }
}
