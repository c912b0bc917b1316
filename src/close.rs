//! The end of a poll: wait until every shard's processing has passed the
//! closing time, recount the `votes` table (the source of truth), compare
//! with the live tallies, and make the poll `final` with an audit record,
//! or report the mismatch and leave the poll `closed`.
//!
//! "Processed past the close" is decided from outside the workers, from
//! the lease table and the stream: a shard is done when its checkpoint is
//! `SHARD_END`, or when the first record after its checkpoint arrived at or
//! after the close (or there is none). Closed parents whose lease was
//! cleaned up are done once a child lease names them. Because the check
//! runs after `closes_at` plus a margin, every record that arrived before
//! the close is already in its shard.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use md5::{Digest, Md5};
use serde::Serialize;
use tally_lease::{Checkpoint, LeaseStore, ShardId, StartPosition, StreamSource};

use crate::poll::Poll;
use crate::store::{VoteItem, VoteStore, VoteStoreError};
use crate::time::{format_rfc3339, millis};

/// How many voters per option a mismatch report names.
pub const SAMPLE_VOTERS: usize = 10;

/// What a recount of the `votes` table found for one poll.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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

/// How the `votes` table is scanned.
#[derive(Clone, Copy, Debug)]
pub struct ScanPlan {
    /// Parallel scan segments (1 to 1,000,000).
    pub segments: u32,
    /// Segments scanned at once.
    pub concurrency: usize,
}

impl Default for ScanPlan {
    fn default() -> Self {
        Self {
            segments: 16,
            concurrency: 8,
        }
    }
}

/// Progress of a recount, read by whoever reports it.
#[derive(Debug, Default)]
pub struct ScanProgress {
    pub items: AtomicU64,
    pub segments_done: AtomicU64,
}

/// Counts a poll's votes in the `votes` table with a parallel scan.
pub async fn recount(
    store: &dyn VoteStore,
    poll_id: &str,
    plan: ScanPlan,
    progress: &ScanProgress,
) -> Result<Recount, VoteStoreError> {
    let segments = plan.segments.max(1);
    let mut parts = futures::stream::iter(0..segments)
        .map(|segment| async move {
            let mut part = Recount::default();
            let mut start = None;
            loop {
                let page = store
                    .scan_votes_page(poll_id, segment, segments, start.take())
                    .await?;
                progress.items.fetch_add(page.scanned, Ordering::Relaxed);
                for vote in page.votes.iter().filter(|vote| vote.poll_id == poll_id) {
                    part.add(vote);
                }
                match page.next {
                    Some(next) => start = Some(next),
                    None => break,
                }
            }
            progress.segments_done.fetch_add(1, Ordering::Relaxed);
            Ok::<_, VoteStoreError>(part)
        })
        .buffer_unordered(plan.concurrency.max(1));
    let mut total = Recount::default();
    while let Some(part) = parts.next().await {
        total.merge(part?);
    }
    Ok(total)
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
    }
}

/// A shard whose processing has not passed the close yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub shard: String,
    /// The first unprocessed record's arrival, when known.
    pub next_arrival_ms: Option<i64>,
}

/// The first record at `start`'s position, reading through empty pages
/// until the shard's tip.
async fn first_record(
    stream: &dyn StreamSource,
    shard: &ShardId,
    start: &StartPosition,
) -> Result<Option<i64>, String> {
    let mut iterator = stream
        .shard_iterator(shard, start)
        .await
        .map_err(|e| format!("{shard}: {e}"))?;
    for _ in 0..100 {
        let page = stream
            .get_records(&iterator, 1)
            .await
            .map_err(|e| format!("{shard}: {e}"))?;
        if let Some(record) = page.records.first() {
            return Ok(Some(millis(record.arrival)));
        }
        match page.next {
            Some(next) if page.millis_behind.unwrap_or(1) > 0 => iterator = next,
            _ => return Ok(None),
        }
    }
    Err(format!(
        "{shard}: no record and no tip after 100 empty pages"
    ))
}

/// The shards whose processing has not passed `close_ms`.
pub async fn pending_shards(
    stream: &dyn StreamSource,
    leases: &dyn LeaseStore,
    close_ms: i64,
) -> Result<Vec<Pending>, String> {
    let shards = stream.list_shards().await.map_err(|e| e.to_string())?;
    let leases = leases.list_leases().await.map_err(|e| e.to_string())?;
    let by_key: BTreeMap<&str, &tally_lease::Lease> = leases
        .iter()
        .map(|lease| (lease.key.as_str(), lease))
        .collect();
    let named_parents: BTreeSet<&str> = leases
        .iter()
        .flat_map(|lease| lease.parents.iter().map(ShardId::as_str))
        .collect();
    let mut ids: BTreeSet<ShardId> = shards.iter().map(|shard| shard.id.clone()).collect();
    ids.extend(leases.iter().map(|lease| lease.key.clone()));
    let closed: BTreeSet<&str> = shards
        .iter()
        .filter(|shard| shard.ending_sequence.is_some())
        .map(|shard| shard.id.as_str())
        .collect();
    let close_time = SystemTime::UNIX_EPOCH + Duration::from_millis(close_ms.max(0) as u64);
    let mut pending = Vec::new();
    for id in ids {
        let start = match by_key.get(id.as_str()).map(|lease| &lease.checkpoint) {
            Some(Checkpoint::ShardEnd) => continue,
            Some(Checkpoint::At(at)) if at.sub_sequence > 0 => {
                // Inside an aggregate: its record may hold unprocessed votes.
                StartPosition::AtSequence(at.sequence.clone())
            }
            Some(Checkpoint::At(at)) => StartPosition::AfterSequence(at.sequence.clone()),
            Some(Checkpoint::AtTimestamp(ms)) => StartPosition::AtTimestamp(
                SystemTime::UNIX_EPOCH + Duration::from_millis((*ms).max(0) as u64),
            ),
            // A lease that starts at the tip never reads what came before it.
            Some(Checkpoint::Latest) => StartPosition::AtTimestamp(close_time),
            Some(Checkpoint::TrimHorizon) => StartPosition::TrimHorizon,
            None if closed.contains(id.as_str()) && named_parents.contains(id.as_str()) => {
                // A cleaned-up parent: its children start only after it ended.
                continue;
            }
            None => StartPosition::TrimHorizon,
        };
        let next = first_record(stream, &id, &start).await?;
        if next.is_some_and(|arrival| arrival < close_ms) {
            pending.push(Pending {
                shard: id.as_str().to_owned(),
                next_arrival_ms: next,
            });
        }
    }
    Ok(pending)
}

/// Reports progress of a long recount on stderr once a second.
pub fn report_progress(progress: Arc<ScanProgress>, segments: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let items = progress.items.load(Ordering::Relaxed);
            eprintln!(
                "recount: {items} items scanned, {}/{segments} segments done, {:.0} items/s",
                progress.segments_done.load(Ordering::Relaxed),
                items as f64 / started.elapsed().as_secs_f64()
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Origin;

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
