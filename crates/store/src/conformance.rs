//! The conformance suite every [`VoteStore`] must pass: the in-memory store
//! and the DynamoDB adapter run the same checks
//! ([`vote_store_conformance!`](crate::vote_store_conformance)).
//! Each check is given a vote store and the lease store its commits fence
//! on, both empty.

use std::collections::BTreeMap;

use tally_lease::store::LeaseUpdate;
use tally_lease::{Checkpoint, ExtendedSequence, Lease, LeaseStore, SequenceNumber, ShardId};

use super::{
    Commit, CommitOutcome, Origin, PutVote, RejectItem, VoteItem, VoteStore, VoteStoreError,
};
use tally_contract::vote::Reason;
use tally_core::count::{CounterKey, Deltas};
use tally_core::poll::{parse_option, Poll, PollStatus};

fn poll(id: &str, counter_shards: u32) -> Poll {
    Poll {
        id: id.into(),
        question: "Which one?".into(),
        options: vec![
            parse_option("a=Alpha").unwrap(),
            parse_option("b=Beta").unwrap(),
        ],
        opens_at: Some(1_000),
        closes_at: None,
        status: PollStatus::Open,
        counter_shards,
        created_at: 500,
    }
}

fn origin(shard: &str, sequence: &str, sub: u64) -> Origin {
    Origin {
        shard: shard.into(),
        sequence: sequence.into(),
        sub_sequence: sub,
    }
}

fn vote(poll_id: &str, voter: &str, option: &str, from: Origin) -> VoteItem {
    VoteItem {
        poll_id: poll_id.into(),
        voter_id: voter.into(),
        option: option.into(),
        vote_id: format!("{voter}-{}", from.sequence),
        origin: from,
        arrival_ms: 1_500,
    }
}

fn at(sequence: &str) -> Checkpoint {
    Checkpoint::At(ExtendedSequence {
        sequence: SequenceNumber::parse(sequence).unwrap(),
        sub_sequence: 0,
    })
}

pub async fn polls(store: &dyn VoteStore) {
    store.ensure_tables().await.unwrap();
    let mut first = poll("p-1", 4);
    first.closes_at = Some(9_000);
    assert!(store.create_poll(&first).await.unwrap());
    assert!(
        !store.create_poll(&poll("p-1", 8)).await.unwrap(),
        "an existing poll is never overwritten"
    );
    assert_eq!(store.get_poll("p-1").await.unwrap(), Some(first.clone()));
    assert_eq!(store.get_poll("nope").await.unwrap(), None);
    let second = poll("p-0", 1);
    store.create_poll(&second).await.unwrap();
    assert_eq!(
        store.list_polls().await.unwrap(),
        vec![second.clone(), first.clone()]
    );
    let mut closed = first.clone();
    closed.close(5_000).unwrap();
    assert!(
        !store.update_poll(&closed, PollStatus::Draft).await.unwrap(),
        "a status change expects the current status"
    );
    assert!(store.update_poll(&closed, PollStatus::Open).await.unwrap());
    assert_eq!(store.get_poll("p-1").await.unwrap(), Some(closed));
    let mut unbounded = second.clone();
    unbounded.opens_at = None;
    assert!(store
        .update_poll(&unbounded, PollStatus::Open)
        .await
        .unwrap());
    assert_eq!(store.get_poll("p-0").await.unwrap(), Some(unbounded));
}

pub async fn votes_dedupe_on_origin(store: &dyn VoteStore) {
    store.ensure_tables().await.unwrap();
    let first = vote("p", "u1", "a", origin("shardId-1", "100", 0));
    assert_eq!(store.put_vote(&first).await.unwrap(), PutVote::Counted);
    assert_eq!(
        store.put_vote(&first).await.unwrap(),
        PutVote::Counted,
        "a replay of the stored record still counts"
    );
    let again = vote("p", "u1", "b", origin("shardId-1", "101", 0));
    assert_eq!(store.put_vote(&again).await.unwrap(), PutVote::Duplicate);
    let same_record_other_sub = vote("p", "u1", "b", origin("shardId-1", "100", 1));
    assert_eq!(
        store.put_vote(&same_record_other_sub).await.unwrap(),
        PutVote::Duplicate,
        "another sub-record is another record"
    );
    let other_poll = vote("q", "u1", "b", origin("shardId-1", "101", 0));
    assert_eq!(store.put_vote(&other_poll).await.unwrap(), PutVote::Counted);
    assert_eq!(
        store.get_vote("p", "u1").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.get_vote("q", "u1").await.unwrap(),
        Some(other_poll.clone())
    );
    assert_eq!(store.get_vote("p", "u2").await.unwrap(), None);
    let key = |poll: &str, voter: &str| (poll.to_owned(), voter.to_owned());
    assert_eq!(
        store
            .get_votes(&[
                key("p", "u1"),
                key("p", "u2"),
                key("q", "u1"),
                key("p", "u1")
            ])
            .await
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
        vec![
            Some(first.clone()),
            None,
            Some(other_poll.clone()),
            Some(first)
        ],
        "several at once, in order, a key asked twice answered twice"
    );
}

/// `put_votes` follows the same rule as `put_vote`, vote by vote, over
/// more votes than one request carries: new votes count, a replay of a
/// stored record counts again, another record of a voter who has a vote is
/// a duplicate, and a whole batch put twice comes back the same.
pub async fn batched_votes_dedupe_on_origin(store: &dyn VoteStore) {
    store.ensure_tables().await.unwrap();
    let stored = vote("b", "u-stored", "a", origin("shardId-1", "50", 0));
    assert_eq!(store.put_vote(&stored).await.unwrap(), PutVote::Counted);
    let other = vote("b", "u-other", "a", origin("shardId-1", "51", 0));
    assert_eq!(store.put_vote(&other).await.unwrap(), PutVote::Counted);
    let mut batch: Vec<VoteItem> = (0..60)
        .map(|i| {
            vote(
                "b",
                &format!("u{i:02}"),
                "a",
                origin("shardId-1", &format!("{}", 100 + i), 0),
            )
        })
        .collect();
    // A replay of the stored record, and another record of a voter who
    // has a vote, in the middle of the batch.
    batch.insert(10, stored.clone());
    batch.insert(40, vote("b", "u-other", "b", origin("shardId-1", "999", 0)));
    let expected: Vec<PutVote> = (0..batch.len())
        .map(|at| {
            if at == 40 {
                PutVote::Duplicate
            } else {
                PutVote::Counted
            }
        })
        .collect();
    let outcomes = |results: Vec<Result<PutVote, VoteStoreError>>| -> Vec<PutVote> {
        results.into_iter().map(|result| result.unwrap()).collect()
    };
    assert_eq!(outcomes(store.put_votes(&batch).await.unwrap()), expected);
    assert_eq!(
        outcomes(store.put_votes(&batch).await.unwrap()),
        expected,
        "the whole batch again: every insert refused, decided by origin"
    );
    assert_eq!(store.get_vote("b", "u-other").await.unwrap(), Some(other));
    assert_eq!(
        store.get_vote("b", "u07").await.unwrap(),
        Some(batch[7].clone())
    );
    assert!(store.put_votes(&[]).await.unwrap().is_empty());
    // One key twice in a call: refused whole, as DynamoDB refuses it, and
    // nothing of it stored.
    let twice = [
        vote("b", "u-twice", "a", origin("shardId-1", "700", 0)),
        vote("b", "u-fresh", "a", origin("shardId-1", "701", 0)),
        vote("b", "u-twice", "b", origin("shardId-1", "702", 0)),
    ];
    let refused = store.put_votes(&twice).await;
    assert!(
        matches!(&refused, Err(VoteStoreError::Other(text)) if text.contains("twice")),
        "{refused:?}"
    );
    assert_eq!(store.get_vote("b", "u-twice").await.unwrap(), None);
    assert_eq!(store.get_vote("b", "u-fresh").await.unwrap(), None);
}

pub async fn rejects_are_kept_once(store: &dyn VoteStore) {
    store.ensure_tables().await.unwrap();
    let reject = RejectItem {
        origin: origin("shardId-2", "77", 3),
        reason: Reason::InvalidOption,
        detail: "poll p has no option \"z\"".into(),
        raw: b"{\"option\":\"z\"}".to_vec(),
        raw_len: 14,
        partition_key: "u9".into(),
        arrival_ms: 1_234,
        poll_id: Some("p".into()),
        voter_id: Some("u9".into()),
        vote_id: Some("v-9".into()),
    };
    store.put_reject(&reject).await.unwrap();
    store.put_reject(&reject).await.unwrap();
    let malformed = RejectItem {
        origin: origin("shardId-2", "78", 0),
        reason: Reason::Malformed,
        detail: "not a vote".into(),
        raw: vec![0xff, 0x00],
        raw_len: 2,
        partition_key: "x".into(),
        arrival_ms: 1_235,
        poll_id: None,
        voter_id: None,
        vote_id: None,
    };
    store.put_reject(&malformed).await.unwrap();
    assert_eq!(store.rejects_of("p", "u9").await.unwrap(), vec![reject]);
    assert!(store.rejects_of("p", "u8").await.unwrap().is_empty());
    let (raw, len) = RejectItem::truncate_raw(&vec![b'x'; 10_000]);
    assert_eq!((raw.len(), len), (super::MAX_REJECT_RAW_BYTES, 10_000));
}

pub async fn commits_are_fenced_and_apply_once(store: &dyn VoteStore, leases: &dyn LeaseStore) {
    store.ensure_tables().await.unwrap();
    leases.ensure_table().await.unwrap();
    let the_poll = poll("p", 4);
    store.create_poll(&the_poll).await.unwrap();
    let lease = Lease::new(
        ShardId::new("shardId-000000000009"),
        Checkpoint::TrimHorizon,
    );
    leases
        .create_lease(&lease, leases.fleet().await.unwrap().epoch)
        .await
        .unwrap();
    let mine = leases
        .update_lease(&lease.fence().into(), &LeaseUpdate::take("w"))
        .await
        .unwrap()
        .unwrap();
    let mut deltas = Deltas::new();
    for (shard, option, count) in [(0, "a", 3u64), (0, "b", 1), (3, "a", 2)] {
        deltas
            .entry(CounterKey {
                poll_id: "p".into(),
                shard,
            })
            .or_default()
            .insert(option.into(), count);
    }
    let first = Commit {
        fence: mine.fence(),
        previous: Checkpoint::TrimHorizon,
        next: at("10"),
        deltas: deltas.clone(),
        token: "a".repeat(32),
    };
    assert_eq!(
        store.commit(&first).await.unwrap(),
        CommitOutcome::Committed
    );
    let counts = store.counts(&the_poll).await.unwrap();
    assert_eq!(
        counts.by_option,
        BTreeMap::from([("a".into(), 5), ("b".into(), 1)])
    );
    assert_eq!(counts.total(), 6);
    assert_eq!(
        leases
            .get_lease(&lease.key)
            .await
            .unwrap()
            .unwrap()
            .checkpoint,
        at("10")
    );
    assert_eq!(
        store.commit(&first).await.unwrap(),
        CommitOutcome::Committed,
        "a retried commit that was applied reports committed"
    );
    assert_eq!(
        store.counts(&the_poll).await.unwrap().total(),
        6,
        "and adds nothing"
    );
    // A checkpoint-only commit (every record rejected or duplicate).
    let empty = Commit {
        fence: mine.fence(),
        previous: at("10"),
        next: at("12"),
        deltas: Deltas::new(),
        token: "b".repeat(32),
    };
    assert_eq!(
        store.commit(&empty).await.unwrap(),
        CommitOutcome::Committed
    );
    // The lease moves: the ex-owner's commit applies nothing.
    leases
        .update_lease(&mine.fence().into(), &LeaseUpdate::take("other"))
        .await
        .unwrap()
        .unwrap();
    let stale = Commit {
        fence: mine.fence(),
        previous: at("12"),
        next: at("20"),
        deltas,
        token: "c".repeat(32),
    };
    assert_eq!(store.commit(&stale).await.unwrap(), CommitOutcome::Lost);
    assert_eq!(store.counts(&the_poll).await.unwrap().total(), 6);
    assert_eq!(
        leases
            .get_lease(&lease.key)
            .await
            .unwrap()
            .unwrap()
            .checkpoint,
        at("12")
    );
}

pub async fn counts_of_an_untouched_poll_are_zero(store: &dyn VoteStore) {
    store.ensure_tables().await.unwrap();
    let the_poll = poll("quiet", 3);
    let counts = store.counts(&the_poll).await.unwrap();
    assert_eq!(
        counts.by_option,
        BTreeMap::from([("a".into(), 0), ("b".into(), 0)])
    );
}

/// A parallel scan in any number of segments sees each of the poll's votes
/// once, and nothing of other polls.
pub async fn scans_see_each_vote_once(store: &dyn VoteStore) {
    store.ensure_tables().await.unwrap();
    let mut expected = std::collections::BTreeSet::new();
    for index in 0..230 {
        let poll_id = if index % 5 == 0 { "other" } else { "scanned" };
        let voter = format!("u{index:03}");
        let item = vote(
            poll_id,
            &voter,
            "a",
            origin("s", &format!("{}", 10 + index), 0),
        );
        store.put_vote(&item).await.unwrap();
        if poll_id == "scanned" {
            expected.insert(voter);
        }
    }
    for segments in [1, 3, 8] {
        let mut seen = Vec::new();
        let mut scanned = 0;
        for segment in 0..segments {
            let mut start = None;
            loop {
                let page = store
                    .scan_votes_page("scanned", segment, segments, start.take())
                    .await
                    .unwrap();
                scanned += page.scanned;
                seen.extend(page.votes.iter().map(|vote| {
                    assert_eq!(vote.poll_id, "scanned");
                    vote.voter_id.clone()
                }));
                match page.next {
                    Some(next) => start = Some(next),
                    None => break,
                }
            }
        }
        seen.sort();
        assert_eq!(
            seen,
            expected.iter().cloned().collect::<Vec<_>>(),
            "{segments} segments"
        );
        assert!(scanned >= 230, "every item is scanned: {scanned}");
    }
}

/// Only a closed poll becomes final; the audit record and a mismatch
/// report are kept; replaced counters read back.
pub async fn finalizing_and_audit_records(store: &dyn VoteStore) {
    store.ensure_tables().await.unwrap();
    let mut open = poll("fin", 4);
    assert!(store.create_poll(&open).await.unwrap());
    assert!(
        !store.finalize_poll("fin", "{}").await.unwrap(),
        "an open poll does not become final"
    );
    store
        .set_mismatch("fin", Some("{\"equal\":false}"))
        .await
        .unwrap();
    assert_eq!(
        store.audit_records("fin").await.unwrap(),
        (None, Some("{\"equal\":false}".to_owned()))
    );
    open.status = PollStatus::Closed;
    open.closes_at = Some(2_000);
    assert!(store.update_poll(&open, PollStatus::Open).await.unwrap());
    let counts = super::Counts {
        by_option: BTreeMap::from([("a".into(), 7), ("b".into(), 3)]),
    };
    store.set_counts(&open, &counts).await.unwrap();
    assert_eq!(store.counts(&open).await.unwrap(), counts);
    assert!(store
        .finalize_poll("fin", "{\"equal\":true}")
        .await
        .unwrap());
    assert_eq!(
        store.get_poll("fin").await.unwrap().unwrap().status,
        PollStatus::Final
    );
    assert_eq!(
        store.audit_records("fin").await.unwrap(),
        (Some("{\"equal\":true}".to_owned()), None),
        "finalizing clears the mismatch"
    );
    assert!(
        !store.finalize_poll("fin", "{}").await.unwrap(),
        "a final poll stays as it is"
    );
    assert!(store.set_mismatch("nope", Some("{}")).await.is_err());
}

/// Runs the suite against a store. `$make` is an async expression giving
/// `(Arc<dyn VoteStore>, Arc<dyn LeaseStore>)`, both fresh.
#[macro_export]
macro_rules! vote_store_conformance {
    ($make:expr) => {
        #[tokio::test]
        async fn conformance_polls() {
            let (store, _leases) = $make;
            $crate::conformance::polls(store.as_ref()).await;
        }
        #[tokio::test]
        async fn conformance_votes_dedupe_on_origin() {
            let (store, _leases) = $make;
            $crate::conformance::votes_dedupe_on_origin(store.as_ref()).await;
        }
        #[tokio::test]
        async fn conformance_batched_votes_dedupe_on_origin() {
            let (store, _leases) = $make;
            $crate::conformance::batched_votes_dedupe_on_origin(store.as_ref()).await;
        }
        #[tokio::test]
        async fn conformance_rejects_are_kept_once() {
            let (store, _leases) = $make;
            $crate::conformance::rejects_are_kept_once(store.as_ref()).await;
        }
        #[tokio::test]
        async fn conformance_commits_are_fenced_and_apply_once() {
            let (store, leases) = $make;
            $crate::conformance::commits_are_fenced_and_apply_once(store.as_ref(), leases.as_ref())
                .await;
        }
        #[tokio::test]
        async fn conformance_scans_see_each_vote_once() {
            let (store, _leases) = $make;
            $crate::conformance::scans_see_each_vote_once(store.as_ref()).await;
        }
        #[tokio::test]
        async fn conformance_finalizing_and_audit_records() {
            let (store, _leases) = $make;
            $crate::conformance::finalizing_and_audit_records(store.as_ref()).await;
        }
        #[tokio::test]
        async fn conformance_counts_of_an_untouched_poll_are_zero() {
            let (store, _leases) = $make;
            $crate::conformance::counts_of_an_untouched_poll_are_zero(store.as_ref()).await;
        }
    };
}
