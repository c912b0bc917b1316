//! The vote pipeline in one process, over the in-memory stream, lease table
//! and vote tables, with the real lease `Worker`: the generated workload
//! ends exactly as its ground truth says, also when the workload is put
//! twice and when commits fail between the parts of a batch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tally_core::poll::{Poll, PollStatus};
use tally_lease::{LeaseStore, MemoryStore, MemoryStream, Worker, WorkerConfig};
use tally_store::memory::MemoryVoteStore;
use tally_store::{
    AuditStore, Commit, CommitOutcome, CountStore, Counts, PollStore, PutVote, RejectItem,
    VoteItem, VoteReads, VoteStore, VoteStoreError,
};
use tally_testkit::workload::{self, Shape, Workload};
use tally_worker::metrics::Metrics;
use tally_worker::pipeline::{Pipeline, PipelineConfig, VoteProcessorFactory};
use tokio_util::sync::CancellationToken;

/// Fails one commit in `one_in` (chosen by its token, the first time it
/// is seen, 20 in all) with an error that is not retryable, so the lease library
/// offers the batch again after some of its parts were committed.
struct FlakyCommits {
    inner: MemoryVoteStore,
    one_in: u64,
    commits: AtomicU64,
    failed: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[async_trait]
impl PollStore for FlakyCommits {
    async fn ensure_tables(&self) -> Result<(), VoteStoreError> {
        self.inner.ensure_tables().await
    }

    async fn create_poll(&self, poll: &Poll) -> Result<bool, VoteStoreError> {
        self.inner.create_poll(poll).await
    }

    async fn update_poll(&self, poll: &Poll, expected: PollStatus) -> Result<bool, VoteStoreError> {
        self.inner.update_poll(poll, expected).await
    }

    async fn get_poll(&self, id: &str) -> Result<Option<Poll>, VoteStoreError> {
        self.inner.get_poll(id).await
    }

    async fn list_polls(&self) -> Result<Vec<Poll>, VoteStoreError> {
        self.inner.list_polls().await
    }
}

#[async_trait]
impl CountStore for FlakyCommits {
    async fn put_vote(&self, vote: &VoteItem) -> Result<PutVote, VoteStoreError> {
        self.inner.put_vote(vote).await
    }

    async fn put_reject(&self, reject: &RejectItem) -> Result<(), VoteStoreError> {
        self.inner.put_reject(reject).await
    }

    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome, VoteStoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        let chosen = u64::from_str_radix(&commit.token[..8], 16).unwrap() % self.one_in == 0;
        let fail = {
            let mut failed = self.failed.lock().unwrap();
            // At most 20 failures, so that the lease library's growing
            // backoff between offers of one batch stays short.
            chosen && failed.len() < 20 && failed.insert(commit.token.clone())
        };
        if fail {
            return Err(VoteStoreError::Other("injected commit failure".into()));
        }
        self.inner.commit(commit).await
    }
}

#[async_trait]
impl VoteReads for FlakyCommits {
    async fn get_vote(&self, poll: &str, voter: &str) -> Result<Option<VoteItem>, VoteStoreError> {
        self.inner.get_vote(poll, voter).await
    }

    async fn rejects_of(&self, poll: &str, voter: &str) -> Result<Vec<RejectItem>, VoteStoreError> {
        self.inner.rejects_of(poll, voter).await
    }

    async fn counts(&self, poll: &Poll) -> Result<Counts, VoteStoreError> {
        self.inner.counts(poll).await
    }
}

#[async_trait]
impl AuditStore for FlakyCommits {
    async fn scan_votes_page(
        &self,
        poll_id: &str,
        segment: u32,
        segments: u32,
        start: Option<String>,
    ) -> Result<tally_store::VotePage, VoteStoreError> {
        self.inner
            .scan_votes_page(poll_id, segment, segments, start)
            .await
    }

    async fn finalize_poll(&self, poll_id: &str, audit: &str) -> Result<bool, VoteStoreError> {
        self.inner.finalize_poll(poll_id, audit).await
    }

    async fn set_mismatch(
        &self,
        poll_id: &str,
        report: Option<&str>,
    ) -> Result<(), VoteStoreError> {
        self.inner.set_mismatch(poll_id, report).await
    }

    async fn audit_records(
        &self,
        poll_id: &str,
    ) -> Result<(Option<String>, Option<String>), VoteStoreError> {
        self.inner.audit_records(poll_id).await
    }

    async fn set_counts(&self, poll: &Poll, counts: &Counts) -> Result<(), VoteStoreError> {
        self.inner.set_counts(poll, counts).await
    }
}

async fn state(store: &MemoryVoteStore, workload: &Workload) -> Result<(), String> {
    let mut counts = BTreeMap::new();
    for poll in &workload.polls {
        counts.insert(poll.id.clone(), store.counts(poll).await.unwrap().by_option);
    }
    let truth = workload.truth(tally_contract::time::now_millis());
    workload::compare(
        &truth,
        &counts,
        &store.all_votes().await,
        &store.all_rejects().await,
    )
}

/// Puts the workload, runs one worker until the tables match the truth
/// (or a deadline passes), and returns the pipeline's metrics.
async fn run(
    workload: &Workload,
    memory: MemoryVoteStore,
    store: Arc<dyn VoteStore>,
    leases: Arc<MemoryStore>,
    max_actions: usize,
) -> Arc<Metrics> {
    for poll in &workload.polls {
        store.create_poll(poll).await.unwrap();
    }
    let stream = Arc::new(MemoryStream::with_shards(4));
    for put in &workload.puts {
        stream.put(put.partition_key(), put.data());
    }
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("TEST_LOG").unwrap())
            .try_init();
    }
    let metrics = Arc::new(Metrics::default());
    let config = PipelineConfig {
        max_transaction_actions: max_actions,
        ..PipelineConfig::default()
    };
    let pipeline = Pipeline::new(store, config, metrics.clone());
    let mut worker_config = WorkerConfig::new("w1");
    worker_config.max_records = 50;
    worker_config.poll_interval = Duration::from_millis(20);
    let worker = Worker::new(
        worker_config,
        leases,
        stream,
        Arc::new(VoteProcessorFactory { pipeline }),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let mut last = Err(String::from("not checked"));
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = state(&memory, workload).await;
        if last.is_ok() {
            break;
        }
    }
    // Still right a moment later: nothing is counted twice afterwards.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    running.await.unwrap().unwrap();
    if let Err(problem) = last.and(state(&memory, workload).await) {
        panic!("the tables do not match the truth: {problem}");
    }
    metrics
}

fn stores() -> (MemoryVoteStore, Arc<MemoryStore>) {
    let leases = Arc::new(MemoryStore::new());
    let lease_store: Arc<dyn LeaseStore> = leases.clone();
    (MemoryVoteStore::new(lease_store), leases)
}

#[tokio::test]
async fn the_workload_is_counted_exactly() {
    let workload = workload::generate(&Shape::default());
    let truth = workload.truth(tally_contract::time::now_millis());
    let (memory, leases) = stores();
    let metrics = run(&workload, memory.clone(), Arc::new(memory), leases, 100).await;
    assert_eq!(
        metrics.votes_counted.load(Ordering::Relaxed),
        truth.counted()
    );
    assert_eq!(
        metrics.votes_duplicate.load(Ordering::Relaxed),
        truth.duplicates
    );
    for (reason, count) in &truth.rejects {
        assert_eq!(metrics.rejected(*reason), *count, "{reason}");
    }
}

#[tokio::test]
async fn records_put_twice_are_counted_once() {
    let workload = workload::generate(&Shape {
        seed: 2,
        voters: 300,
        aggregated_voters: 40,
        ..Shape::default()
    })
    .doubled();
    let (memory, leases) = stores();
    run(&workload, memory.clone(), Arc::new(memory), leases, 100).await;
}

#[tokio::test]
async fn batches_offered_again_after_a_failed_commit_part_count_once() {
    let workload = workload::generate(&Shape {
        seed: 3,
        voters: 300,
        aggregated_voters: 40,
        ..Shape::default()
    });
    let (memory, leases) = stores();
    let flaky = Arc::new(FlakyCommits {
        inner: memory.clone(),
        one_in: 30,
        commits: AtomicU64::new(0),
        failed: Default::default(),
    });
    // Two actions per transaction: most batches commit in several parts,
    // and some fail after their first parts were committed.
    run(&workload, memory, flaky.clone(), leases, 2).await;
    assert!(flaky.commits.load(Ordering::SeqCst) > 100);
    assert!(
        flaky.failed.lock().unwrap().len() > 5,
        "some commits failed after earlier parts of their batch committed"
    );
}

/// A hostile aggregate (a sub-record under a 0.5 MB key) and a record of
/// 1 MiB become rejects small enough for DynamoDB (the memory store
/// refuses items over 400 KB as DynamoDB does), and the shard moves on.
#[tokio::test]
async fn hostile_records_become_rejects_within_the_item_limit() {
    let (memory, leases) = stores();
    let stream = Arc::new(MemoryStream::with_shards(1));
    let hostile = tally_contract::kpl::aggregate(&[tally_contract::kpl::UserRecord {
        partition_key: "k".repeat(500_000),
        explicit_hash_key: None,
        data: bytes::Bytes::from_static(b"{}"),
    }]);
    stream.put("p1", bytes::Bytes::from(hostile));
    stream.put("p2", bytes::Bytes::from(vec![b'x'; 1 << 20]));
    let pipeline = Pipeline::new(
        Arc::new(memory.clone()),
        PipelineConfig::default(),
        Arc::new(Metrics::default()),
    );
    let mut config = WorkerConfig::new("w1");
    config.poll_interval = Duration::from_millis(20);
    let worker = Worker::new(
        config,
        leases,
        stream,
        Arc::new(VoteProcessorFactory { pipeline }),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let mut rejects = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rejects = memory.all_rejects().await;
        if rejects.len() == 2 {
            break;
        }
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    let reasons: Vec<_> = rejects.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons, ["bad_aggregate", "malformed"], "{rejects:?}");
    for reject in &rejects {
        assert!(reject.item_bytes() < 8 * 1024, "{}", reject.item_bytes());
    }
    assert_eq!(rejects[1].raw_len, 1 << 20, "the full length is recorded");
}

/// A poll is looked up once per batch, not once per vote.
#[tokio::test]
async fn a_batch_looks_each_poll_up_once() {
    let (memory, leases) = stores();
    let poll = Poll {
        id: "once".into(),
        question: "?".into(),
        options: vec![
            tally_core::poll::parse_option("a").unwrap(),
            tally_core::poll::parse_option("b").unwrap(),
        ],
        opens_at: None,
        closes_at: None,
        status: PollStatus::Open,
        counter_shards: 4,
        created_at: 0,
    };
    memory.create_poll(&poll).await.unwrap();
    let stream = Arc::new(MemoryStream::with_shards(1));
    for index in 0..300 {
        let vote = tally_contract::vote::Vote {
            vote_id: format!("id{index}"),
            poll_id: "once".into(),
            option: if index % 2 == 0 { "a" } else { "b" }.into(),
            voter_id: format!("v{index}"),
            cast_at: None,
        };
        stream.put(
            &vote.voter_id,
            bytes::Bytes::from(tally_contract::vote::encode(&vote)),
        );
    }
    let pipeline = Pipeline::new(
        Arc::new(memory.clone()),
        PipelineConfig::default(),
        Arc::new(Metrics::default()),
    );
    let mut config = WorkerConfig::new("w1");
    config.max_records = 100;
    config.poll_interval = Duration::from_millis(20);
    let worker = Worker::new(
        config,
        leases,
        stream,
        Arc::new(VoteProcessorFactory {
            pipeline: pipeline.clone(),
        }),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if memory.counts(&poll).await.unwrap().total() == 300 {
            break;
        }
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(memory.counts(&poll).await.unwrap().total(), 300);
    let lookups = pipeline.polls.lookups();
    assert!(
        (3..=10).contains(&lookups),
        "300 votes in batches of 100 made {lookups} poll lookups"
    );
}
