//! Our own types at every boundary: shard ids, sequence numbers, checkpoints,
//! leases and records. Nothing here knows about the AWS SDK.

use std::cmp::Ordering;
use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;

/// A Kinesis shard id, e.g. `shardId-000000000003`.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ShardId(pub String);

impl ShardId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Kinesis sequence number: a decimal string whose length differs between
/// AWS and the emulators (56, 30 or fewer digits). It orders numerically,
/// never as a plain string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SequenceNumber(String);

impl SequenceNumber {
    /// Parses a decimal sequence number; `None` when it is empty or has a
    /// character other than an ASCII digit.
    pub fn parse(text: &str) -> Option<Self> {
        if text.is_empty() || text.len() > 128 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Self(text.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    fn significant(&self) -> &str {
        let trimmed = self.0.trim_start_matches('0');
        if trimmed.is_empty() {
            "0"
        } else {
            trimmed
        }
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let (left, right) = (self.significant(), other.significant());
        left.len().cmp(&right.len()).then_with(|| left.cmp(right))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position inside a shard: a record's sequence number and, for a
/// sub-record of a KPL aggregate, its index (0 for a plain record).
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ExtendedSequence {
    pub sequence: SequenceNumber,
    pub sub_sequence: u64,
}

/// What a lease's `checkpoint` attribute holds. The sentinel strings are
/// KCL's, so tools that read KCL lease tables read ours.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Checkpoint {
    /// Nothing processed yet; start at the oldest record.
    TrimHorizon,
    /// Nothing processed yet; start at the tip.
    Latest,
    /// Nothing processed yet; start at the first record at or after this
    /// time (milliseconds since the epoch).
    AtTimestamp(i64),
    /// Everything up to and including this position is processed.
    At(ExtendedSequence),
    /// The shard is closed and every record of it is processed.
    ShardEnd,
}

impl Checkpoint {
    pub const SHARD_END: &'static str = "SHARD_END";
    pub const TRIM_HORIZON: &'static str = "TRIM_HORIZON";
    pub const LATEST: &'static str = "LATEST";
    pub const AT_TIMESTAMP: &'static str = "AT_TIMESTAMP";

    /// The `checkpoint` attribute's text (the sequence number for `At`).
    pub fn attribute(&self) -> String {
        match self {
            Checkpoint::TrimHorizon => Self::TRIM_HORIZON.into(),
            Checkpoint::Latest => Self::LATEST.into(),
            Checkpoint::AtTimestamp(_) => Self::AT_TIMESTAMP.into(),
            Checkpoint::At(position) => position.sequence.to_string(),
            Checkpoint::ShardEnd => Self::SHARD_END.into(),
        }
    }

    /// The `checkpointSubSequenceNumber` attribute (for `AtTimestamp`, the
    /// timestamp in milliseconds, which keeps the item self-contained).
    pub fn sub_attribute(&self) -> i64 {
        match self {
            Checkpoint::At(position) => position.sub_sequence as i64,
            Checkpoint::AtTimestamp(millis) => *millis,
            _ => 0,
        }
    }

    /// Rebuilds a checkpoint from its two attributes.
    pub fn from_attributes(checkpoint: &str, sub: i64) -> Option<Self> {
        Some(match checkpoint {
            Self::TRIM_HORIZON => Checkpoint::TrimHorizon,
            Self::LATEST => Checkpoint::Latest,
            Self::AT_TIMESTAMP => Checkpoint::AtTimestamp(sub),
            Self::SHARD_END => Checkpoint::ShardEnd,
            other => Checkpoint::At(ExtendedSequence {
                sequence: SequenceNumber::parse(other)?,
                sub_sequence: u64::try_from(sub).ok()?,
            }),
        })
    }

    pub fn is_shard_end(&self) -> bool {
        matches!(self, Checkpoint::ShardEnd)
    }

    /// True once any record of the shard has been processed.
    pub fn has_progress(&self) -> bool {
        matches!(self, Checkpoint::At(_) | Checkpoint::ShardEnd)
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checkpoint::At(position) if position.sub_sequence > 0 => {
                write!(f, "{}/{}", position.sequence, position.sub_sequence)
            }
            Checkpoint::AtTimestamp(millis) => write!(f, "AT_TIMESTAMP({millis})"),
            other => f.write_str(&other.attribute()),
        }
    }
}

/// One shard lease, as stored in the lease table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The shard id (`leaseKey`).
    pub key: ShardId,
    /// The worker holding it (`leaseOwner`); `None` when free.
    pub owner: Option<String>,
    /// The fencing token (`leaseCounter`): incremented on every owner change.
    pub counter: u64,
    pub checkpoint: Checkpoint,
    /// `ownerSwitchesSinceCheckpoint`.
    pub owner_switches: u64,
    /// `parentShardId`: one parent after a split, two after a merge.
    pub parents: Vec<ShardId>,
    /// `childShardIds`, known once the shard has ended.
    pub children: Vec<ShardId>,
    /// `startingHashKey` / `endingHashKey` (decimal strings).
    pub hash_range: Option<(String, String)>,
    /// A worker that asked for this lease; the owner hands it over after its
    /// in-flight batch (`pendingOwner`, ours, not KCL's).
    pub pending_owner: Option<String>,
}

impl Lease {
    /// A new, free lease starting at `checkpoint`.
    pub fn new(key: ShardId, checkpoint: Checkpoint) -> Self {
        Self {
            key,
            owner: None,
            counter: 0,
            checkpoint,
            owner_switches: 0,
            parents: Vec::new(),
            children: Vec::new(),
            hash_range: None,
            pending_owner: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.checkpoint.is_shard_end()
    }

    /// The fence a writer must present to change this lease.
    pub fn fence(&self) -> Fence {
        Fence {
            key: self.key.clone(),
            owner: self.owner.clone(),
            counter: self.counter,
        }
    }
}

/// Leases by shard id, in shard order (ordered, so that every decision
/// taken from it is reproducible).
pub type LeaseMap = std::collections::BTreeMap<ShardId, Lease>;

/// What a conditional write expects to find: the owner and the counter it
/// last saw. A write with a stale fence is refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    pub key: ShardId,
    pub owner: Option<String>,
    pub counter: u64,
}

/// A shard as listed by the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub id: ShardId,
    pub parent: Option<ShardId>,
    pub adjacent_parent: Option<ShardId>,
    pub hash_range: (String, String),
    /// Set when the shard is closed (split or merged away).
    pub ending_sequence: Option<SequenceNumber>,
}

impl Shard {
    pub fn parents(&self) -> Vec<ShardId> {
        self.parent
            .iter()
            .chain(self.adjacent_parent.iter())
            .cloned()
            .collect()
    }
    pub fn is_open(&self) -> bool {
        self.ending_sequence.is_none()
    }
}

/// One user record handed to the processor: a plain Kinesis record or one
/// sub-record of a KPL aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub data: Bytes,
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub position: ExtendedSequence,
    /// Kinesis `ApproximateArrivalTimestamp`.
    pub arrival: SystemTime,
    /// Set when the Kinesis record carried the KPL magic but could not be
    /// de-aggregated; `data` is then the whole raw record, delivered once.
    pub bad_aggregate: Option<String>,
}

/// Where a reader starts in a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPosition {
    TrimHorizon,
    Latest,
    AtTimestamp(SystemTime),
    AtSequence(SequenceNumber),
    AfterSequence(SequenceNumber),
}

/// The initial position of a brand-new lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    TrimHorizon,
    Latest,
    /// Milliseconds since the epoch.
    AtTimestamp(i64),
}

impl InitialPosition {
    pub fn checkpoint(self) -> Checkpoint {
        match self {
            InitialPosition::TrimHorizon => Checkpoint::TrimHorizon,
            InitialPosition::Latest => Checkpoint::Latest,
            InitialPosition::AtTimestamp(millis) => Checkpoint::AtTimestamp(millis),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seq(text: &str) -> SequenceNumber {
        SequenceNumber::parse(text).unwrap()
    }

    #[test]
    fn sequence_numbers_compare_numerically_across_lengths() {
        assert!(seq("9") < seq("10"));
        assert!(seq("000000017953172359860000000002") > seq("17953172359860000000001"));
        assert!(
            seq("49680447902327068011534747638408591534547320311243603970")
                > seq("000000017953172359860000000001")
        );
        assert_eq!(seq("0007").cmp(&seq("7")), Ordering::Equal);
        assert!(SequenceNumber::parse("12a").is_none());
        assert!(SequenceNumber::parse("").is_none());
    }

    #[test]
    fn checkpoint_attributes_round_trip() {
        let cases = [
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            Checkpoint::ShardEnd,
            Checkpoint::AtTimestamp(1_700_000_000_000),
            Checkpoint::At(ExtendedSequence {
                sequence: seq("123"),
                sub_sequence: 4,
            }),
        ];
        for checkpoint in cases {
            let back =
                Checkpoint::from_attributes(&checkpoint.attribute(), checkpoint.sub_attribute());
            assert_eq!(back, Some(checkpoint));
        }
        assert_eq!(Checkpoint::from_attributes("garbage", 0), None);
    }

    proptest! {
        #[test]
        fn ordering_matches_big_integer_ordering(a in 0u128..u128::MAX, b in 0u128..u128::MAX, pad_a in 0usize..30, pad_b in 0usize..30) {
            let left = seq(&format!("{}{}", "0".repeat(pad_a), a));
            let right = seq(&format!("{}{}", "0".repeat(pad_b), b));
            prop_assert_eq!(left.cmp(&right), a.cmp(&b));
        }
    }
}
