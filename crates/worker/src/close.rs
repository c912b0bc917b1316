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
use tally_lease::{Checkpoint, LeaseStore, ShardId, StartPosition, StreamSource};

use tally_contract::time::{format_rfc3339, millis};
use tally_core::poll::Poll;
use tally_store::{VoteStore, VoteStoreError};

pub use tally_core::recount::*;

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

/// After a checkpoint at user record `at.sub_sequence` of a KPL aggregate:
/// the aggregate's arrival when user records of it come after the
/// checkpoint, otherwise the first record after the aggregate. (A worker
/// that processed a whole aggregate checkpoints at its last user record.)
async fn first_after_sub_record(
    stream: &dyn StreamSource,
    shard: &ShardId,
    at: &tally_lease::ExtendedSequence,
) -> Result<Option<i64>, String> {
    let iterator = stream
        .shard_iterator(shard, &StartPosition::AtSequence(at.sequence.clone()))
        .await
        .map_err(|e| format!("{shard}: {e}"))?;
    let page = stream
        .get_records(&iterator, 1)
        .await
        .map_err(|e| format!("{shard}: {e}"))?;
    if let Some(record) = page.records.first() {
        let user_records = if tally_lease::kpl::is_aggregate(&record.data) {
            // A broken aggregate is one (rejected) record.
            tally_lease::kpl::deaggregate(&record.data).map_or(1, |records| records.len())
        } else {
            1
        };
        if at.sub_sequence + 1 < user_records as u64 {
            return Ok(Some(millis(record.arrival)));
        }
    }
    first_record(
        stream,
        shard,
        &StartPosition::AfterSequence(at.sequence.clone()),
    )
    .await
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
    let leased: std::collections::HashSet<ShardId> =
        leases.iter().map(|lease| lease.key.clone()).collect();
    let superseded = tally_lease::graph::superseded_shards(&shards, &leased);
    let close_time = SystemTime::UNIX_EPOCH + Duration::from_millis(close_ms.max(0) as u64);
    let mut pending = Vec::new();
    for id in ids {
        let start = match by_key.get(id.as_str()).map(|lease| &lease.checkpoint) {
            Some(Checkpoint::ShardEnd) => continue,
            Some(Checkpoint::At(at)) if at.sub_sequence > 0 => {
                // Inside an aggregate: its record may hold unprocessed votes.
                let next = first_after_sub_record(stream, &id, at).await?;
                if next.is_some_and(|arrival| arrival < close_ms) {
                    pending.push(Pending {
                        shard: id.as_str().to_owned(),
                        next_arrival_ms: next,
                    });
                }
                continue;
            }
            Some(Checkpoint::At(at)) => StartPosition::AfterSequence(at.sequence.clone()),
            Some(Checkpoint::AtTimestamp(ms)) => StartPosition::AtTimestamp(
                SystemTime::UNIX_EPOCH + Duration::from_millis((*ms).max(0) as u64),
            ),
            // A lease that starts at the tip never reads what came before it.
            Some(Checkpoint::Latest) => StartPosition::AtTimestamp(close_time),
            Some(Checkpoint::TrimHorizon) => StartPosition::TrimHorizon,
            None if closed.contains(id.as_str())
                && (named_parents.contains(id.as_str()) || superseded.contains(&id)) =>
            {
                // A cleaned-up parent: its children start only after it
                // ended (and theirs may be cleaned up too).
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

/// How `tally finalize` waits and scans.
#[derive(Clone, Debug)]
pub struct FinalizeSettings {
    /// Extra wait after `closes_at` before the shards are checked (clock
    /// skew between this machine and Kinesis arrival times).
    pub margin: Duration,
    /// Give up when the shards have not passed the close by then.
    pub wait_timeout: Duration,
    /// Interval of the shard checks.
    pub check_every: Duration,
    pub plan: ScanPlan,
}

/// What `tally finalize` did.
#[derive(Clone, Debug, PartialEq)]
pub enum Finalized {
    /// The recount equals the tallies: the poll is final.
    Final(Audit),
    /// They differ: the poll stays closed, the report is kept.
    Mismatch(Audit),
    /// It was final already: its audit record.
    AlreadyFinal(Option<String>),
}

async fn poll_or_fail(store: &dyn VoteStore, poll_id: &str) -> anyhow::Result<Poll> {
    store
        .get_poll(poll_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no poll {poll_id} (`tally poll list` shows the polls)"))
}

/// `tally audit`: the comparison, read-only.
pub async fn audit(
    store: &dyn VoteStore,
    poll_id: &str,
    plan: ScanPlan,
    progress: &ScanProgress,
) -> anyhow::Result<Audit> {
    let poll = poll_or_fail(store, poll_id).await?;
    let recounted = recount(store, poll_id, plan, progress).await?;
    let tallies = store.counts(&poll).await?;
    Ok(compare(
        &poll,
        &tallies.by_option,
        &recounted,
        tally_contract::time::now_millis(),
    ))
}

/// `tally finalize`: closes a poll whose closing time has passed, waits
/// until every shard is processed past it, recounts and compares, then
/// makes the poll final or keeps the mismatch report. `say` gets progress
/// lines.
pub async fn finalize(
    store: &dyn VoteStore,
    stream: &dyn StreamSource,
    leases: &dyn LeaseStore,
    poll_id: &str,
    settings: &FinalizeSettings,
    progress: &ScanProgress,
    say: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Finalized> {
    let mut poll = poll_or_fail(store, poll_id).await?;
    if poll.status == tally_core::poll::PollStatus::Final {
        return Ok(Finalized::AlreadyFinal(
            store.audit_records(poll_id).await?.0,
        ));
    }
    let now = tally_contract::time::now_millis();
    let closes_at = match (poll.status, poll.closes_at) {
        (tally_core::poll::PollStatus::Closed, Some(closes_at)) => closes_at,
        (status, Some(closes_at)) if closes_at <= now => {
            let before = status;
            poll.close(closes_at)?;
            if !store.update_poll(&poll, before).await? {
                anyhow::bail!("poll {poll_id} changed while it was being closed; try again");
            }
            say(format!("poll {poll_id} closed at {}", format_rfc3339(closes_at)));
            closes_at
        }
        _ => anyhow::bail!(
            "poll {poll_id} is {} and has not closed; close it first (`tally poll close {poll_id}`)",
            poll.status
        ),
    };
    let ready_at = closes_at + settings.margin.as_millis() as i64;
    let now = tally_contract::time::now_millis();
    if ready_at > now {
        say(format!(
            "waiting {} ms for the closing time {} to pass",
            ready_at - now,
            format_rfc3339(closes_at)
        ));
        tokio::time::sleep(Duration::from_millis((ready_at - now) as u64)).await;
    }
    let started = std::time::Instant::now();
    loop {
        let pending = pending_shards(stream, leases, closes_at)
            .await
            .map_err(|error| anyhow::anyhow!("cannot check the shards: {error}"))?;
        if pending.is_empty() {
            say("every shard is processed past the close".into());
            break;
        }
        let names: Vec<String> = pending
            .iter()
            .map(|pending| match pending.next_arrival_ms {
                Some(at) => format!(
                    "{} (next record arrived {})",
                    pending.shard,
                    format_rfc3339(at)
                ),
                None => pending.shard.clone(),
            })
            .collect();
        if started.elapsed() >= settings.wait_timeout {
            anyhow::bail!(
                "{} shards have not been processed past the close after {:?} (are the workers running?): {}",
                pending.len(),
                settings.wait_timeout,
                names.join(", ")
            );
        }
        say(format!(
            "waiting for {} shards to be processed past the close: {}",
            pending.len(),
            names.join(", ")
        ));
        tokio::time::sleep(settings.check_every).await;
    }
    let poll = poll_or_fail(store, poll_id).await?;
    let recounted = recount(store, poll_id, settings.plan, progress).await?;
    let tallies = store.counts(&poll).await?;
    let audit = compare(
        &poll,
        &tallies.by_option,
        &recounted,
        tally_contract::time::now_millis(),
    );
    if audit.equal {
        // The record kept is the one of the final poll, as printed and as
        // written to S3.
        let mut final_audit = audit;
        final_audit.status = tally_core::poll::PollStatus::Final.as_str().to_owned();
        let record = serde_json::to_string(&final_audit)?;
        if !store.finalize_poll(poll_id, &record).await? {
            anyhow::bail!("poll {poll_id} changed while it was being finalized; try again");
        }
        Ok(Finalized::Final(final_audit))
    } else {
        let record = serde_json::to_string(&audit)?;
        store.set_mismatch(poll_id, Some(&record)).await?;
        tracing::error!(poll_id = %poll_id, differences = audit.differences.len(), "recount does not match the tallies; the poll stays closed");
        Ok(Finalized::Mismatch(audit))
    }
}

/// `tally resolve`: an operator settles a mismatch explicitly, using the
/// recount (the counters are replaced by it) or the tallies as they are,
/// and the poll becomes final with the resolution in its audit record.
pub async fn resolve(
    store: &dyn VoteStore,
    poll_id: &str,
    use_recount: bool,
    reason: &str,
    plan: ScanPlan,
    progress: &ScanProgress,
) -> anyhow::Result<Audit> {
    let poll = poll_or_fail(store, poll_id).await?;
    if poll.status != tally_core::poll::PollStatus::Closed {
        anyhow::bail!(
            "poll {poll_id} is {}; only a closed poll is resolved",
            poll.status
        );
    }
    if reason.trim().is_empty() {
        anyhow::bail!("give the --reason for the record");
    }
    let recounted = recount(store, poll_id, plan, progress).await?;
    let previous = store.counts(&poll).await?;
    if use_recount {
        store
            .set_counts(
                &poll,
                &tally_store::Counts {
                    by_option: recounted.by_option.clone(),
                },
            )
            .await?;
    }
    let tallies = store.counts(&poll).await?;
    let mut audit = compare(
        &poll,
        &tallies.by_option,
        &recounted,
        tally_contract::time::now_millis(),
    );
    audit.resolution = Some(Resolution {
        used: if use_recount { "recount" } else { "tallies" }.to_owned(),
        reason: reason.to_owned(),
        previous_tallies: previous.by_option,
        resolved_at: format_rfc3339(tally_contract::time::now_millis()),
    });
    audit.status = tally_core::poll::PollStatus::Final.as_str().to_owned();
    if !store
        .finalize_poll(poll_id, &serde_json::to_string(&audit)?)
        .await?
    {
        anyhow::bail!("poll {poll_id} changed while it was being resolved; try again");
    }
    Ok(audit)
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

    async fn leases(entries: &[(ShardId, Checkpoint, Vec<ShardId>)]) -> tally_lease::MemoryStore {
        let store = tally_lease::MemoryStore::new();
        store.ensure_table().await.unwrap();
        for (epoch, (key, checkpoint, parents)) in entries.iter().enumerate() {
            let mut lease = tally_lease::Lease::new(key.clone(), checkpoint.clone());
            lease.parents = parents.clone();
            let created = store.create_lease(&lease, epoch as u64).await.unwrap();
            assert_eq!(created, tally_lease::store::Created::Yes);
        }
        store
    }

    /// Found by the chaos run: a shard whose last record was an aggregate,
    /// checkpointed at its last user record, was never done.
    #[tokio::test]
    async fn a_checkpoint_at_an_aggregates_last_user_record_is_past_it() {
        use tally_lease::{ExtendedSequence, MemoryStream};
        let stream = MemoryStream::with_shards(1);
        let shard = stream.open_shards()[0].clone();
        let records: Vec<tally_lease::kpl::UserRecord> = (0..3)
            .map(|index| tally_lease::kpl::UserRecord {
                partition_key: format!("voter-{index}"),
                explicit_hash_key: None,
                data: bytes::Bytes::from(format!("vote {index}")),
            })
            .collect();
        let (_, sequence) = stream.put(
            "aggregate",
            bytes::Bytes::from(tally_lease::kpl::aggregate(&records)),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        let close_ms = tally_contract::time::now_millis();
        let at = |sub_sequence| {
            Checkpoint::At(ExtendedSequence {
                sequence: sequence.clone(),
                sub_sequence,
            })
        };
        for (sub, behind) in [(1, true), (2, false)] {
            let store = leases(&[(shard.clone(), at(sub), vec![])]).await;
            let pending = pending_shards(&stream, &store, close_ms).await.unwrap();
            assert_eq!(
                !pending.is_empty(),
                behind,
                "checkpoint at user record {sub} of 3"
            );
        }
        // A record after the aggregate, before the close, is still to read.
        let close_ms = {
            stream.put("later", bytes::Bytes::from_static(b"x"));
            tokio::time::sleep(Duration::from_millis(5)).await;
            tally_contract::time::now_millis()
        };
        let store = leases(&[(shard.clone(), at(2), vec![])]).await;
        assert_eq!(
            pending_shards(&stream, &store, close_ms)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    /// Found by the chaos run: after a merge and then a split of the merged
    /// shard, the merge's parents and the merged shard had their leases
    /// cleaned up, no lease named the first parents any more, and they were
    /// read again from the start.
    #[tokio::test]
    async fn parents_cleaned_up_two_generations_back_are_done() {
        use tally_lease::MemoryStream;
        let stream = MemoryStream::with_shards(2);
        let roots = stream.open_shards();
        for index in 0..20 {
            stream.put(&format!("early{index}"), bytes::Bytes::from_static(b"x"));
        }
        stream.merge(&roots[0], &roots[1]).unwrap();
        let merged = stream.open_shards()[0].clone();
        stream.split(&merged).unwrap();
        let grandchildren = stream.open_shards();
        assert_eq!(grandchildren.len(), 2);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let close_ms = tally_contract::time::now_millis();
        // Only the open shards have leases, nothing read yet (they are empty).
        let entries: Vec<(ShardId, Checkpoint, Vec<ShardId>)> = grandchildren
            .iter()
            .map(|shard| (shard.clone(), Checkpoint::TrimHorizon, vec![merged.clone()]))
            .collect();
        let store = leases(&entries).await;
        let pending = pending_shards(&stream, &store, close_ms).await.unwrap();
        assert_eq!(pending, Vec::new());
        // Without a descendant's lease, the first parents are still to read.
        let store = leases(&[]).await;
        let mut pending: Vec<String> = pending_shards(&stream, &store, close_ms)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.shard)
            .collect();
        pending.sort();
        let mut expected: Vec<String> = roots.iter().map(|r| r.as_str().to_owned()).collect();
        expected.sort();
        assert_eq!(pending, expected);
    }

    #[tokio::test]
    async fn shards_are_done_past_the_close_across_a_split() {
        use tally_lease::{ExtendedSequence, MemoryStream};
        let stream = MemoryStream::with_shards(1);
        let parent = stream.open_shards()[0].clone();
        stream.put("early", bytes::Bytes::from_static(b"x"));
        stream.split(&parent).unwrap();
        let children = stream.open_shards();
        let mut last_before: BTreeMap<ShardId, tally_lease::SequenceNumber> = BTreeMap::new();
        for index in 0..200 {
            let (shard, sequence) =
                stream.put(&format!("k{index}"), bytes::Bytes::from_static(b"x"));
            last_before.insert(shard, sequence);
            if last_before.len() == children.len() && index > 20 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let close_ms = tally_contract::time::now_millis();
        tokio::time::sleep(Duration::from_millis(5)).await;
        for index in 0..20 {
            stream.put(&format!("late{index}"), bytes::Bytes::from_static(b"x"));
        }
        let at = |shard: &ShardId| {
            Checkpoint::At(ExtendedSequence {
                sequence: last_before[shard].clone(),
                sub_sequence: 0,
            })
        };
        let pending = |entries: Vec<(ShardId, Checkpoint, Vec<ShardId>)>| {
            let stream = &stream;
            async move {
                let store = leases(&entries).await;
                let mut shards: Vec<String> = pending_shards(stream, &store, close_ms)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|pending| pending.shard)
                    .collect();
                shards.sort();
                shards
            }
        };
        let all: Vec<String> = std::iter::once(&parent)
            .chain(&children)
            .map(|shard| shard.as_str().to_owned())
            .collect();
        let nothing_done: Vec<_> =
            std::iter::once((parent.clone(), Checkpoint::TrimHorizon, vec![]))
                .chain(
                    children.iter().map(|child| {
                        (child.clone(), Checkpoint::TrimHorizon, vec![parent.clone()])
                    }),
                )
                .collect();
        let mut expected = all.clone();
        expected.sort();
        assert_eq!(
            pending(nothing_done).await,
            expected,
            "nothing processed: every shard waits"
        );
        let children_done: Vec<_> = children
            .iter()
            .map(|child| (child.clone(), at(child), vec![parent.clone()]))
            .collect();
        let mut with_parent_ended = children_done.clone();
        with_parent_ended.push((parent.clone(), Checkpoint::ShardEnd, vec![]));
        let left = pending(with_parent_ended).await;
        assert!(
            left.is_empty(),
            "the next records arrived after the close: {left:?}"
        );
        assert!(
            pending(children_done.clone()).await.is_empty(),
            "a cleaned-up parent named by its children is done"
        );
        let mut one_behind = children_done;
        one_behind[0].1 = Checkpoint::TrimHorizon;
        assert_eq!(pending(one_behind).await, [children[0].as_str().to_owned()]);
        assert_eq!(
            pending(vec![]).await.len(),
            all.len(),
            "shards without leases are read from the start"
        );
    }
}
