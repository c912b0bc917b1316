//! Exactly-once counting with real `tally worker` processes on ministack,
//! through the real AWS SDK. The generated workload (over 10,000 votes from
//! over 1,000 voters, repeats, malformed records, unknown and closed polls,
//! KPL aggregates) must end exactly as its ground truth says, in the
//! counts, the votes table and the rejects, in each run:
//! - clean (with the command line's results and vote-status checked, and a
//!   SIGTERM that releases the leases);
//! - every record put twice (producer retries);
//! - the worker aborted at each crash point of the protocol, then restarted;
//! - two workers, with a lease moved away from one in the middle of a batch;
//! - every kind of injected fault;
//! - in fan-out mode (`SubscribeToShard`): put twice, each crash point, and
//!   a lease moved in the middle of a batch.

use crate::local_stack::endpoint;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tally_lease::{Checkpoint, DynamoStore, LeaseStore, SequenceNumber};
use tally_store::dynamo::{DynamoVoteStore, TableNames};
use tally_store::prelude::*;
use tally_testkit::emulators::{create_stream, sdk_config, unique_name};
use tally_testkit::workload::{self, Shape, Workload};
use tokio::sync::OnceCell;

use tally_testkit::process::Process;

/// A stream with a workload on it, and the last sequence number per shard.
struct Loaded {
    stream: String,
    workload: Workload,
    last: BTreeMap<String, SequenceNumber>,
}

async fn put_workload(workload: Workload, shards: i32) -> Loaded {
    let config = sdk_config(&endpoint()).await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("votes");
    create_stream(&kinesis, &stream, shards).await;
    let mut last: BTreeMap<String, SequenceNumber> = BTreeMap::new();
    for chunk in workload.puts.chunks(500) {
        let entries: Vec<PutRecordsRequestEntry> = chunk
            .iter()
            .map(|put| {
                PutRecordsRequestEntry::builder()
                    .partition_key(put.partition_key())
                    .data(Blob::new(put.data().to_vec()))
                    .build()
                    .unwrap()
            })
            .collect();
        for record in &tally_testkit::emulators::put_records(&kinesis, &stream, entries).await {
            let shard = record.shard_id().unwrap().to_owned();
            let sequence = SequenceNumber::parse(record.sequence_number().unwrap()).unwrap();
            let entry = last.entry(shard).or_insert_with(|| sequence.clone());
            if sequence > *entry {
                *entry = sequence;
            }
        }
    }
    Loaded {
        stream,
        workload,
        last,
    }
}

/// The default workload on a 4-shard stream, put once for every test.
async fn shared() -> &'static Loaded {
    static LOADED: OnceCell<Loaded> = OnceCell::const_new();
    LOADED
        .get_or_init(|| async {
            // Put from a runtime of its own: the tests' runtimes come and go.
            std::thread::spawn(|| {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(put_workload(workload::generate(&Shape::default()), 4))
            })
            .join()
            .unwrap()
        })
        .await
}

/// One run: its own application (lease table) and table prefix.
struct Run {
    loaded: &'static Loaded,
    app: String,
    prefix: String,
    dir: PathBuf,
    store: DynamoVoteStore,
    leases: DynamoStore,
    /// `TALLY_CONSUMER_MODE` of every command.
    mode: &'static str,
}

impl Run {
    async fn new(loaded: &'static Loaded) -> Self {
        Self::with_mode(loaded, "polling").await
    }

    async fn with_mode(loaded: &'static Loaded, mode: &'static str) -> Self {
        let app = unique_name("app");
        let prefix = format!("{}-", unique_name("t"));
        let client = aws_sdk_dynamodb::Client::new(&sdk_config(&endpoint()).await);
        let names = TableNames::with_prefix(&prefix, format!("{app}-leases"));
        let store = DynamoVoteStore::new(client.clone(), names.clone());
        let leases = DynamoStore::new(client, names.leases.clone());
        let dir = std::env::temp_dir().join(unique_name("tally-votes-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let run = Self {
            loaded,
            app,
            prefix,
            dir,
            store,
            leases,
            mode,
        };
        tally_testkit::process::succeed(run.tally().args(["init", "--shards", "4"]), "tally init");
        for poll in &loaded.workload.polls {
            assert!(run.store.create_poll(poll).await.unwrap());
        }
        run
    }

    fn tally(&self) -> Command {
        let mut command = tally_testkit::process::tally(env!("CARGO_BIN_EXE_tally"));
        command
            .args(["--stream", &self.loaded.stream, "--app", &self.app])
            .args(["--table-prefix", &self.prefix])
            .env("AWS_ENDPOINT_URL", endpoint())
            .env("TALLY_METRICS_INTERVAL_MS", "1000")
            .env("TALLY_CONSUMER_MODE", self.mode);
        command
    }

    /// Starts `tally worker`; `extra` adds environment variables.
    fn worker(&self, id: &str, extra: &[(&str, &str)]) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(id))
            .unwrap();
        let mut command = self.tally();
        command
            .args(["worker", "--worker-id", id])
            .stdout(Stdio::null())
            .stderr(log);
        for (name, value) in extra {
            command.env(name, value);
        }
        Process(command.spawn().expect("start tally worker"))
    }

    fn log(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// Waits (up to [`LIMIT`]) for a metrics line of worker `id` that
    /// satisfies `ready`, and returns it.
    async fn wait_for_metrics(
        &self,
        id: &str,
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        tally_testkit::process::wait_for_metrics(&self.log(id), LIMIT, what, ready).await
    }

    /// The last metrics line a worker logged.
    fn last_metrics(&self, id: &str) -> serde_json::Value {
        tally_testkit::process::last_metrics(&self.log(id))
    }

    /// True when every shard is checkpointed at or past its last record.
    async fn caught_up(&self) -> bool {
        let Ok(leases) = self.leases.list_leases().await else {
            return false;
        };
        self.loaded.last.iter().all(|(shard, last)| {
            leases.iter().any(|lease| {
                lease.key.as_str() == shard
                    && matches!(&lease.checkpoint, Checkpoint::At(at) if at.sequence >= *last)
            })
        })
    }

    async fn compare(&self) -> Result<(), String> {
        let mut counts = BTreeMap::new();
        for poll in &self.loaded.workload.polls {
            counts.insert(
                poll.id.clone(),
                self.store
                    .counts(poll)
                    .await
                    .map_err(|e| e.to_string())?
                    .by_option,
            );
        }
        let votes = self.store.scan_votes().await.map_err(|e| e.to_string())?;
        let rejects = self.store.scan_rejects().await.map_err(|e| e.to_string())?;
        workload::compare(
            &self
                .loaded
                .workload
                .truth(tally_contract::time::now_millis()),
            &counts,
            &votes,
            &rejects,
        )
    }

    /// Waits until every shard is caught up, then checks the tables twice
    /// (the second time a moment later: nothing more is counted).
    async fn wait_and_verify(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.caught_up().await {
            assert!(
                Instant::now() < deadline,
                "the workers did not catch up in {limit:?}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if let Err(problem) = self.compare().await {
            panic!(
                "the tables do not match the truth: {problem}; logs in {}",
                self.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if let Err(problem) = self.compare().await {
            panic!("the tables changed after catching up: {problem}");
        }
    }
}

const LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_run_with_the_command_line_and_a_graceful_stop() {
    let run = Run::new(shared().await).await;
    // The one-put-per-vote path, kept for comparison, counts exactly too
    // (every other run here uses the batched default).
    let mut worker = run.worker("w1", &[("TALLY_VOTE_WRITES", "single")]);
    run.wait_and_verify(LIMIT).await;

    // The results and vote-status commands read the same truth.
    let truth = run
        .loaded
        .workload
        .truth(tally_contract::time::now_millis());
    let poll = &run.loaded.workload.polls[1];
    let output = run
        .tally()
        .args(["results", &poll.id, "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let expected = &truth.counts[&poll.id];
    assert_eq!(results["total"], expected.values().sum::<u64>());
    for option in results["options"].as_array().unwrap() {
        assert_eq!(option["votes"], expected[option["id"].as_str().unwrap()]);
    }
    assert_eq!(results["poll_id"], poll.id.as_str());
    let status = |poll: &str, voter: &str| {
        let output = run
            .tally()
            .args(["vote-status", "--poll", poll, "--voter", voter])
            .output()
            .unwrap();
        assert!(output.status.success());
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        value["status"].as_str().unwrap().to_owned()
    };
    let ((counted_poll, counted_voter), _) = truth.votes.iter().next().unwrap();
    assert_eq!(status(counted_poll, counted_voter), "counted");
    assert_eq!(status(&poll.id, "nobody-at-all"), "unknown");
    let rejected = run.store.scan_rejects().await.unwrap();
    let invalid = rejected
        .iter()
        .find(|r| {
            r.voter_id.is_some()
                && !truth
                    .votes
                    .contains_key(&(r.poll_id.clone().unwrap(), r.voter_id.clone().unwrap()))
        })
        .expect("a voter with only rejected votes in a poll");
    assert_eq!(
        status(
            invalid.poll_id.as_deref().unwrap(),
            invalid.voter_id.as_deref().unwrap()
        ),
        "rejected"
    );

    // The health and metrics endpoints, on the address the worker logged.
    let address = std::fs::read_to_string(run.log("w1"))
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|line| line["health_addr"].as_str().map(str::to_owned))
        .expect("the worker logs its health address");
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut connection = std::net::TcpStream::connect(&address).unwrap();
        write!(connection, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        connection.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (
            status,
            serde_json::from_str::<serde_json::Value>(body).unwrap(),
        )
    };
    let (status, health) = get("/health");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    assert_eq!(health["worker_id"], "w1");
    let (status, metrics) = get("/metrics");
    assert_eq!(status, 200);
    assert_eq!(metrics["tally_votes_counted_total"], truth.counted());
    assert_eq!(metrics["tally_votes_duplicate_total"], truth.duplicates);
    // Reading the stream costs Kinesis requests, counted for the benchmarks.
    assert!(
        metrics["tally_kinesis_requests_total"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{metrics}"
    );
    let (status, missing) = get("/nope");
    assert_eq!(status, 404);
    assert!(missing["error"].is_string());

    // SIGTERM: exit 0 well inside 30 s, leases released.
    worker.signal("TERM");
    let exit = worker.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}");
    for lease in run.leases.list_leases().await.unwrap() {
        assert_eq!(lease.owner, None, "{} still owned", lease.key);
    }
}

/// The generated workload in fan-out mode: a worker counting through its
/// subscriptions is killed (SIGKILL) part way, another takes over from the
/// checkpoints and subscribes again, and the counts are exact; its
/// graceful stop exits 0 and releases the leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_clean_run_through_a_kill_counts_exactly() {
    let run = Run::with_mode(shared().await, "fan-out").await;
    let mut first = run.worker("w1", &[("TALLY_METRICS_INTERVAL_MS", "200")]);
    // Kill it once it has counted some votes, not all.
    run.wait_for_metrics("w1", "the first worker counted votes", |m| {
        m["tally_votes_counted_total"].as_u64().unwrap_or(0) > 0
    })
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    let mut second = run.worker("w2", &[("TALLY_METRICS_INTERVAL_MS", "200")]);
    run.wait_and_verify(LIMIT).await;
    // The second worker took over part way: it read records, through
    // subscriptions.
    run.wait_for_metrics("w2", "the second worker read through subscriptions", |m| {
        m["tally_lease_subscriptions_total"].as_u64().unwrap_or(0) > 0
            && m["tally_lease_user_records_total"].as_u64().unwrap_or(0) > 0
    })
    .await;
    second.signal("TERM");
    assert!(second.wait_exit(Duration::from_secs(30)).success());
    for lease in run.leases.list_leases().await.unwrap() {
        assert_eq!(lease.owner, None, "{} still owned", lease.key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_put_twice_is_counted_once() {
    every_record_put_twice_counted_once("polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_every_record_put_twice_is_counted_once() {
    every_record_put_twice_counted_once("fan-out").await;
}

async fn every_record_put_twice_counted_once(mode: &'static str) {
    static DOUBLED: OnceCell<Loaded> = OnceCell::const_new();
    let loaded = DOUBLED
        .get_or_init(|| async {
            std::thread::spawn(|| {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(put_workload(
                        workload::generate(&Shape {
                            seed: 5,
                            poll_prefix: "twice".into(),
                            ..Shape::default()
                        })
                        .doubled(),
                        4,
                    ))
            })
            .join()
            .unwrap()
        })
        .await;
    let run = Run::with_mode(loaded, mode).await;
    let _worker = run.worker("w1", &[]);
    run.wait_and_verify(LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_aborted_at_each_crash_point_loses_and_doubles_nothing() {
    aborted_at_each_crash_point("polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_a_worker_aborted_at_each_crash_point_loses_and_doubles_nothing() {
    aborted_at_each_crash_point("fan-out").await;
}

async fn aborted_at_each_crash_point(mode: &'static str) {
    let loaded = shared().await;
    let runs = futures::future::join_all(tally_faults::CRASH_POINTS.iter().map(|point| {
        let point = point.to_string();
        async move {
            let run = Run::with_mode(loaded, mode).await;
            // Eight actions per transaction: a batch touching the eight open
            // polls' counters commits in two parts.
            let small = ("TALLY_MAX_TRANSACTION_ACTIONS", "8");
            let mut crashing = run.worker(
                "crashing",
                &[("TALLY_CRASH_POINT", &format!("{point}:2")), small],
            );
            let exit = tokio::task::spawn_blocking(move || {
                let status = crashing.wait_exit(LIMIT);
                drop(crashing);
                status
            })
            .await
            .unwrap();
            assert_eq!(
                exit.signal(),
                Some(6),
                "{point}: the worker aborted ({exit:?})"
            );
            let _restarted = run.worker("restarted", &[small]);
            run.wait_and_verify(LIMIT).await;
            point
        }
    }))
    .await;
    assert_eq!(runs.len(), tally_faults::CRASH_POINTS.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_moved_in_the_middle_of_a_batch_counts_once() {
    lease_moved_in_the_middle_of_a_batch("polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_a_lease_moved_in_the_middle_of_a_batch_counts_once() {
    lease_moved_in_the_middle_of_a_batch("fan-out").await;
}

async fn lease_moved_in_the_middle_of_a_batch(mode: &'static str) {
    let run = Run::with_mode(shared().await, mode).await;
    // Every TransactWriteItems of the first worker waits 2.5 s before it is
    // sent. Its lease creations are TransactWriteItems too, so a commit has
    // started only when the count of delays grows after it holds every
    // lease; it is paused then, in the middle of a batch, whatever the
    // machine's speed.
    let slow = run.worker(
        "slow",
        &[
            ("TALLY_FAULTS", "TransactWriteItems:latency:1:2500"),
            ("TALLY_METRICS_INTERVAL_MS", "200"),
        ],
    );
    let delays = |metrics: &serde_json::Value| {
        metrics["tally_faults_injected_total"]["latency"]
            .as_u64()
            .unwrap_or(0)
    };
    let holding = run
        .wait_for_metrics("slow", "it holds all four leases", |m| {
            m["tally_lease_leases_held"].as_u64() == Some(4)
        })
        .await;
    let before = delays(&holding);
    run.wait_for_metrics("slow", "a commit of it waits to be sent", |m| {
        delays(m) > before
    })
    .await;
    // Paused past the lease duration, its leases are taken over; resumed,
    // its pending commit must be refused.
    slow.signal("STOP");
    let _other = run.worker("other", &[]);
    let started = Instant::now();
    loop {
        let leases = run.leases.list_leases().await.unwrap();
        if leases.len() == 4
            && leases
                .iter()
                .all(|lease| lease.owner.as_deref() == Some("other"))
        {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the other worker took every lease: {leases:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slow.signal("CONT");
    run.wait_for_metrics("slow", "the paused worker's commit was refused", |m| {
        m["tally_commits_lost_total"].as_u64().unwrap_or(0) > 0
    })
    .await;
    run.wait_and_verify(LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_of_every_kind_lose_and_double_nothing() {
    injected_faults_of_every_kind("polling").await;
}

/// The same faults through subscriptions, and the subscribe calls
/// themselves failing now and then (a 5xx, or throttled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_injected_faults_of_every_kind_lose_and_double_nothing() {
    injected_faults_of_every_kind("fan-out").await;
}

async fn injected_faults_of_every_kind(mode: &'static str) {
    let run = Run::with_mode(shared().await, mode).await;
    let faults = [
        "GetRecords:throttle:0.1",
        // Subscribe calls throttled as AWS throttles a second call within a
        // second (no SDK retries there: the reader waits). With this seed
        // one of the four first calls is (each operation draws from a
        // seeded source of its own).
        "SubscribeToShard:throttle:0.5",
        "PutItem:throttle:0.03",
        "BatchExecuteStatement:throttle:0.05",
        "TransactWriteItems:throttle:0.05",
        "TransactWriteItems:conflict:0.15",
        "*:5xx:0.02",
        "*:latency:0.05:40",
        "PutItem:lost:0.02",
        // A batch of inserts applied and its answer lost: sent again, every
        // insert comes back DuplicateItem and is decided by its origin.
        "BatchExecuteStatement:lost:0.1",
        // Statements throttled or failed with a 5xx code inside a 200.
        "BatchExecuteStatement:partial:0.2",
        "TransactWriteItems:lost:0.1",
    ]
    .join(",");
    let mut worker = run.worker(
        "faulty",
        &[
            ("TALLY_FAULTS", faults.as_str()),
            ("TALLY_FAULTS_SEED", "42"),
            // Smaller batches, each committed in two parts: more commits to fail.
            ("TALLY_MAX_RECORDS", "500"),
            ("TALLY_MAX_TRANSACTION_ACTIONS", "8"),
        ],
    );
    run.wait_and_verify(LIMIT).await;
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).success());
    let metrics = run.last_metrics("faulty");
    if mode == "fan-out" {
        assert!(
            metrics["tally_lease_subscribe_throttles_total"]
                .as_u64()
                .unwrap_or(0)
                > 0,
            "subscribe calls throttled: {metrics}"
        );
        assert_eq!(
            metrics["tally_lease_get_records_total"],
            metrics["tally_lease_fan_out_end_checks_total"],
            "read through subscriptions only: {metrics}"
        );
    }
    for kind in ["throttle", "conflict", "5xx", "latency", "lost", "partial"] {
        assert!(
            metrics["tally_faults_injected_total"][kind]
                .as_u64()
                .unwrap_or(0)
                > 0,
            "{kind} injected: {metrics}"
        );
    }
    let retries = &metrics["tally_retries_total"];
    assert!(
        retries["throttled"].as_u64().unwrap_or(0) + retries["conflict"].as_u64().unwrap_or(0) > 0,
        "retries counted by cause: {metrics}"
    );
}

#[test]
fn bad_worker_settings_fail_at_start_naming_the_setting() {
    for (name, value, needle) in [
        ("TALLY_FAULTS", "GetRecords:explode:0.1", "TALLY_FAULTS"),
        ("TALLY_CRASH_POINT", "nowhere", "TALLY_CRASH_POINT"),
        ("TALLY_TABLE_PREFIX", "bad prefix", "TALLY_TABLE_PREFIX"),
        ("TALLY_PUT_CONCURRENCY", "0", "put-concurrency"),
        ("TALLY_VOTE_WRITES", "sometimes", "vote-writes"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tally"))
            .arg("worker")
            .env(name, value)
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{name}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{name}: {stderr}");
    }
}
