//! The lease library with real `tally tail` worker processes on the
//! emulators: failover after SIGKILL, handover after SIGTERM, no
//! redelivery after a restart (ministack), and a split, a kill and a merge
//! mid-stream (kinesis-mock), each in both consumer modes (polling and
//! enhanced fan-out).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tally_lease::{Checkpoint, DynamoStore, LeaseStore, SequenceNumber};
use tally_testkit::emulators::{
    create_stream, sdk_config, unique_name, wait_stream_active, Emulator, EmulatorKind,
};

/// A worker process, killed when dropped (a failing test leaves none behind).
use tally_testkit::process::Process as Worker;

struct Setup {
    endpoint: String,
    stream: String,
    app: String,
    dir: PathBuf,
    kinesis: aws_sdk_kinesis::Client,
    store: DynamoStore,
    /// `TALLY_CONSUMER_MODE` of every command.
    mode: &'static str,
}

impl Setup {
    async fn new(kind: EmulatorKind, shards: i32) -> Self {
        Self::with_mode(kind, shards, "polling").await
    }

    async fn with_mode(kind: EmulatorKind, shards: i32, mode: &'static str) -> Self {
        let endpoint = Emulator::shared(kind).endpoint.clone();
        let config = sdk_config(&endpoint).await;
        let stream = unique_name("stream");
        let app = unique_name("app");
        let kinesis = aws_sdk_kinesis::Client::new(&config);
        create_stream(&kinesis, &stream, shards).await;
        let dir = std::env::temp_dir().join(unique_name("tally-lease-test"));
        std::fs::create_dir_all(&dir).unwrap();
        // Leases always live in ministack's DynamoDB.
        let dynamodb = sdk_config(&Emulator::shared(EmulatorKind::Ministack).endpoint).await;
        let store = DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&dynamodb),
            format!("{app}-leases"),
        );
        Self {
            endpoint,
            stream,
            app,
            dir,
            kinesis,
            store,
            mode,
        }
    }

    /// `tally` with this setup's stream, application and endpoints.
    fn tally(&self, dynamodb_endpoint: &str) -> Command {
        let mut command = tally_testkit::process::tally(env!("CARGO_BIN_EXE_tally"));
        command
            .args(["--stream", &self.stream, "--app", &self.app])
            .env("AWS_ENDPOINT_URL_KINESIS", &self.endpoint)
            .env("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint)
            .env("TALLY_CONSUMER_MODE", self.mode);
        command
    }

    /// Starts `tally tail` as a worker process.
    fn worker(&self, id: &str, dynamodb_endpoint: &str) -> Worker {
        let log = std::fs::File::create(self.dir.join(format!("{id}.log"))).unwrap();
        self.tally(dynamodb_endpoint)
            .args(["tail", "--worker-id", id, "--output"])
            .arg(self.dir.join(format!("{id}.jsonl")))
            .env("TALLY_SHARD_SYNC_INTERVAL_MS", "5000")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(Worker)
            .expect("start tally tail")
    }

    /// Every shard of the stream, as Kinesis lists it.
    async fn shards(&self) -> Vec<aws_sdk_kinesis::types::Shard> {
        let listed = self
            .kinesis
            .list_shards()
            .stream_name(&self.stream)
            .send()
            .await
            .unwrap();
        listed.shards().to_vec()
    }

    async fn put(&self, from: usize, to: usize, keys: usize) {
        let entries: Vec<PutRecordsRequestEntry> = (from..to)
            .map(|index| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("key-{}", index % keys))
                    .data(Blob::new(format!("record-{index}")))
                    .build()
                    .unwrap()
            })
            .collect();
        tally_testkit::emulators::put_records(&self.kinesis, &self.stream, entries).await;
    }

    /// Every record line written so far by any worker, parsed.
    fn deliveries(&self) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                let text = std::fs::read_to_string(&path).unwrap();
                // A worker may be writing: only whole lines count.
                let complete = &text[..text.rfind('\n').map_or(0, |at| at + 1)];
                for line in complete.lines() {
                    all.push(serde_json::from_str(line).expect("a JSON line"));
                }
            }
        }
        all
    }

    fn delivered_ids(&self) -> BTreeSet<String> {
        self.deliveries()
            .iter()
            .map(|d| d["data"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn wait_delivered(&self, count: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.delivered_ids().len();
            if got >= count {
                assert_eq!(got, count, "more distinct records than were put");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {got} of {count} records delivered after 60 s; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every delivered record is at or before its shard's
    /// checkpoint (a record is written before it is checkpointed): a kill
    /// after that has nothing in flight.
    async fn wait_checkpointed(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let checkpoints: HashMap<String, Checkpoint> = self
                .store
                .list_leases()
                .await
                .unwrap()
                .into_iter()
                .map(|lease| (lease.key.to_string(), lease.checkpoint))
                .collect();
            let deliveries = self.deliveries();
            let behind: Vec<&serde_json::Value> = deliveries
                .iter()
                .filter(|delivery| {
                    let sequence =
                        SequenceNumber::parse(delivery["sequence"].as_str().unwrap()).unwrap();
                    match checkpoints.get(delivery["shard"].as_str().unwrap()) {
                        // A delivered record's shard had a lease; gone now,
                        // it was a finished parent's, deleted once its
                        // children started.
                        None | Some(Checkpoint::ShardEnd) => false,
                        Some(Checkpoint::At(position)) => position.sequence < sequence,
                        Some(_) => true,
                    }
                })
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} delivered records not checkpointed after 60 s (first {}); logs in {}",
                behind.len(),
                behind[0],
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn owners(&self) -> BTreeMap<String, Option<String>> {
        self.store
            .list_leases()
            .await
            .unwrap()
            .into_iter()
            .filter(|l| !l.is_finished())
            .map(|l| (l.key.to_string(), l.owner))
            .collect()
    }

    /// Waits until no ready lease is owned by `gone` (or free), returning how long it took.
    async fn wait_owned_by_others(&self, gone: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let owners = self.owners().await;
            let settled = !owners.is_empty()
                && owners
                    .values()
                    .all(|owner| owner.as_deref().is_some_and(|o| o != gone));
            if settled {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "leases still with {gone} or free after {limit:?}: {owners:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn stop(child: &mut Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_eight_shards_through_kill_stop_and_restart() {
    three_workers_through_kill_stop_and_restart("polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_three_workers_share_eight_shards_through_kill_stop_and_restart() {
    three_workers_through_kill_stop_and_restart("fan-out").await;
}

async fn three_workers_through_kill_stop_and_restart(mode: &'static str) {
    let setup = Setup::with_mode(EmulatorKind::Ministack, 8, mode).await;
    let dynamodb = setup.endpoint.clone();
    setup.put(0, 400, 50).await;
    let mut workers: HashMap<&str, Worker> = ["w1", "w2", "w3"]
        .into_iter()
        .map(|id| (id, setup.worker(id, &dynamodb)))
        .collect();
    setup.wait_delivered(400, "initial").await;

    // Balanced: 3, 3, 2.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let owners = setup.owners().await;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for owner in owners.values().flatten() {
            *counts.entry(owner.clone()).or_default() += 1;
        }
        let mut sizes: Vec<usize> = counts.values().copied().collect();
        sizes.sort();
        if sizes == vec![2, 3, 3] {
            break;
        }
        assert!(Instant::now() < deadline, "not balanced: {owners:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // `tally leases` reads the same table: the whole of it, and one
    // worker's leases through the owner index.
    let table_owners = setup.owners().await;
    let output = setup
        .tally(&dynamodb)
        .args(["leases", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = view["leases"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    for row in rows {
        assert_eq!(row["state"], "processing");
        let shard = row["shard"].as_str().unwrap();
        assert_eq!(row["owner"].as_str(), table_owners[shard].as_deref());
    }
    assert_eq!(view["workers"].as_array().unwrap().len(), 3);
    let output = setup
        .tally(&dynamodb)
        .args(["leases", "--json", "--owner", "w1"])
        .output()
        .unwrap();
    let mine: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let expected = table_owners
        .values()
        .filter(|o| o.as_deref() == Some("w1"))
        .count();
    let rows = mine["leases"].as_array().unwrap();
    assert_eq!(rows.len(), expected);
    assert!(rows.iter().all(|row| row["owner"] == "w1"));
    let output = setup.tally(&dynamodb).arg("leases").output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("SHARD"), "{text}");
    assert_eq!(
        text.lines()
            .filter(|line| line.starts_with("shardId-"))
            .count(),
        8
    );

    // SIGKILL: the victim's shards resume on the survivors.
    stop(workers.get_mut("w1").unwrap(), "-KILL");
    workers.remove("w1").unwrap().wait().unwrap();
    let took = setup
        .wait_owned_by_others("w1", Duration::from_secs(15))
        .await;
    eprintln!("killed worker's leases taken after {took:?}");
    setup.put(400, 600, 50).await;
    setup.wait_delivered(600, "after kill").await;

    // SIGTERM: the stopping worker gives its leases up itself (a kill's
    // leases wait for the expiry, 3 s here): its log says it released
    // every lease it held, and the moment it has exited none is still its
    // own (free, or already taken by a survivor).
    let held_by_w2 = setup
        .owners()
        .await
        .values()
        .filter(|owner| owner.as_deref() == Some("w2"))
        .count();
    assert!(held_by_w2 > 0, "w2 held leases before its stop");
    stop(workers.get_mut("w2").unwrap(), "-TERM");
    assert!(
        workers.remove("w2").unwrap().wait().unwrap().success(),
        "graceful stop exits 0"
    );
    let w2_log = std::fs::read_to_string(setup.dir.join("w2.log")).unwrap();
    // (At least one: the fleet may still move a lease between the read
    // above and the stop.)
    assert!(
        w2_log.contains("lease released"),
        "w2 released the leases it held ({held_by_w2} just before): {w2_log}"
    );
    let owners = setup.owners().await;
    assert!(
        owners.values().all(|owner| owner.as_deref() != Some("w2")),
        "a lease still owned by the stopped worker: {owners:?}"
    );
    let took = setup
        .wait_owned_by_others("w2", Duration::from_secs(15))
        .await;
    eprintln!("stopped worker's leases taken after {took:?}");
    setup.put(600, 800, 50).await;
    setup.wait_delivered(800, "after stop").await;

    // Restart: nothing before a checkpoint is delivered again.
    stop(workers.get_mut("w3").unwrap(), "-TERM");
    assert!(workers.remove("w3").unwrap().wait().unwrap().success());
    let mut fresh = setup.worker("w4", &dynamodb);
    setup.put(800, 850, 50).await;
    setup.wait_delivered(850, "after restart").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let by_w4: Vec<String> = setup
        .deliveries()
        .iter()
        .filter(|d| d["worker"] == "w4")
        .map(|d| d["data"].as_str().unwrap().to_owned())
        .collect();
    let replayed: Vec<&String> = by_w4
        .iter()
        .filter(|id| id.trim_start_matches("record-").parse::<usize>().unwrap() < 800)
        .collect();
    assert!(
        replayed.is_empty(),
        "checkpointed records delivered again: {replayed:?}"
    );
    assert_eq!(by_w4.len(), 50);
    stop(&mut fresh, "-TERM");
    assert!(fresh.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_mid_stream_deliver_everything_parents_first() {
    split_and_merge_mid_stream("polling").await;
}

/// kinesis-mock never ends a closed parent's subscription: the workers
/// find the end through the shard sync's listing and one `GetRecords`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_split_and_merge_mid_stream_deliver_everything_once_parents_first() {
    split_and_merge_mid_stream("fan-out").await;
}

async fn split_and_merge_mid_stream(mode: &'static str) {
    // kinesis-mock for the stream (resharding), ministack for the leases.
    let setup = Setup::with_mode(EmulatorKind::KinesisMock, 2, mode).await;
    let dynamodb = Emulator::shared(EmulatorKind::Ministack).endpoint.clone();
    let mut workers = [setup.worker("a", &dynamodb), setup.worker("b", &dynamodb)];
    setup.put(0, 100, 20).await;
    setup.wait_delivered(100, "before split").await;

    let shards = setup.shards().await;
    let first = &shards[0];
    let range = first.hash_key_range().unwrap();
    let start: u128 = range.starting_hash_key().parse().unwrap();
    let end: u128 = range.ending_hash_key().parse().unwrap();
    setup
        .kinesis
        .split_shard()
        .stream_name(&setup.stream)
        .shard_to_split(first.shard_id())
        .new_starting_hash_key((start + (end - start) / 2).to_string())
        .send()
        .await
        .expect("split");
    wait_stream_active(&setup.kinesis, &setup.stream).await;
    setup.put(100, 200, 20).await;
    setup.wait_delivered(200, "after split").await;

    // SIGKILL one worker once its last batch is checkpointed: its shards,
    // and the children it would have started, go on elsewhere without a
    // repeat.
    setup.wait_checkpointed("before the kill").await;
    stop(&mut workers[0], "-KILL");
    workers[0].wait().unwrap();
    workers[0] = setup.worker("c", &dynamodb);

    // Merge the two open shards at the top of the hash space.
    let listed = setup.shards().await;
    let mut open: Vec<(u128, String)> = listed
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_none()
        })
        .map(|s| {
            (
                s.hash_key_range()
                    .unwrap()
                    .starting_hash_key()
                    .parse()
                    .unwrap(),
                s.shard_id().to_owned(),
            )
        })
        .collect();
    open.sort();
    assert_eq!(open.len(), 3);
    setup
        .kinesis
        .merge_shards()
        .stream_name(&setup.stream)
        .shard_to_merge(&open[1].1)
        .adjacent_shard_to_merge(&open[2].1)
        .send()
        .await
        .expect("merge");
    wait_stream_active(&setup.kinesis, &setup.stream).await;
    setup.put(200, 300, 20).await;
    setup.wait_delivered(300, "after split and merge").await;

    // Parents finished before children started, by delivery time.
    let listed = setup.shards().await;
    let deliveries = setup.deliveries();
    // Nothing was in flight at the kill: every record exactly once.
    assert_eq!(deliveries.len(), 300, "a record was delivered twice");
    let times = |shard: &str| -> Vec<u64> {
        deliveries
            .iter()
            .filter(|d| d["shard"] == shard)
            .map(|d| d["delivered_ms"].as_u64().unwrap())
            .collect()
    };
    let mut checked = 0;
    for shard in &listed {
        for parent in [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
            .into_iter()
            .flatten()
        {
            let (child_times, parent_times) = (times(shard.shard_id()), times(parent));
            if let (Some(first_child), Some(last_parent)) =
                (child_times.iter().min(), parent_times.iter().max())
            {
                assert!(
                    first_child >= last_parent,
                    "{} started before parent {parent} finished",
                    shard.shard_id()
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 3,
        "split and merge children were all checked ({checked})"
    );
    // Per key, records arrive in the order they were put. Deliveries are
    // ordered by time, and within one worker's file by line (a stable sort);
    // only two shards delivering in the same millisecond are left unordered.
    let mut last_by_key: HashMap<String, (usize, u64, String)> = HashMap::new();
    let mut ordered: Vec<&serde_json::Value> = deliveries.iter().collect();
    ordered.sort_by_key(|d| d["delivered_ms"].as_u64().unwrap());
    for delivery in ordered {
        let index: usize = delivery["data"]
            .as_str()
            .unwrap()
            .trim_start_matches("record-")
            .parse()
            .unwrap();
        let key = delivery["partition_key"].as_str().unwrap().to_owned();
        let at = delivery["delivered_ms"].as_u64().unwrap();
        let shard = delivery["shard"].as_str().unwrap().to_owned();
        if let Some((previous, previous_at, previous_shard)) =
            last_by_key.insert(key.clone(), (index, at, shard.clone()))
        {
            let tie_across_shards = previous_at == at && previous_shard != shard;
            assert!(
                previous < index || tie_across_shards,
                "key {key}: record {index} after {previous}"
            );
        }
    }
    // Parent leases end as SHARD_END (or are cleaned up once children started).
    let leases = setup.store.list_leases().await.unwrap();
    for lease in leases.iter().filter(|l| !l.children.is_empty()) {
        assert!(
            lease.is_finished(),
            "{} has children but did not end",
            lease.key
        );
    }
    for worker in workers.iter_mut() {
        stop(worker, "-TERM");
        assert!(worker.wait().unwrap().success());
    }
}

/// An operator's broken script writes an item that is not a lease just
/// after two workers started: they skip it (a warning, a gauge), take every
/// shard and deliver everything, and `tally leases` lists the item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_that_is_not_a_lease_is_skipped_not_fatal() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let setup = Setup::new(EmulatorKind::Ministack, 4).await;
    let dynamodb = setup.endpoint.clone();
    let workers: Vec<Worker> = ["a", "b"]
        .iter()
        .map(|id| {
            let log = std::fs::File::create(setup.dir.join(format!("{id}.log"))).unwrap();
            setup
                .tally(&dynamodb)
                .args(["tail", "--worker-id", id, "--output"])
                .arg(setup.dir.join(format!("{id}.jsonl")))
                .env("TALLY_METRICS_INTERVAL_MS", "500")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map(Worker)
                .expect("start tally tail")
        })
        .collect();
    // As soon as the workers have made the table, the broken item.
    let client =
        aws_sdk_dynamodb::Client::new(&tally_testkit::emulators::sdk_config(&dynamodb).await);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let put = client
            .put_item()
            .table_name(setup.store.table_name())
            .item("leaseKey", AttributeValue::S("shardId-typo".into()))
            .item("leaseCounter", AttributeValue::S("seven".into()))
            .item("checkpoint", AttributeValue::S("TRIM_HORIZON".into()))
            .send()
            .await;
        if put.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no lease table after 30 s: {put:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    setup.put(0, 200, 40).await;
    setup
        .wait_delivered(200, "with an item that is not a lease")
        .await;
    let owners = setup.owners().await;
    assert_eq!(owners.len(), 4, "{owners:?}");
    assert!(owners.values().all(Option::is_some), "{owners:?}");

    let output = setup
        .tally(&dynamodb)
        .args(["leases", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed["skipped"][0]["key"], "shardId-typo", "{listed}");
    assert!(
        listed["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("leaseCounter"),
        "{listed}"
    );
    // Each worker says so, and its gauge counts it.
    let deadline = Instant::now() + Duration::from_secs(15);
    for id in ["a", "b"] {
        loop {
            let log = std::fs::read_to_string(setup.dir.join(format!("{id}.log"))).unwrap();
            if log.contains("not a lease")
                && (log.contains(r#"lease_table_skipped_items\":1"#)
                    || log.contains(r#"lease_table_skipped_items":1"#))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "worker {id} did not report the item:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    drop(workers);
}

/// Bad settings fail at start-up, before any request, naming the setting.
#[test]
fn bad_settings_fail_naming_the_setting() {
    let cases: [(&[&str], &str, &str); 4] = [
        (&["tail"], "TALLY_MAX_RECORDS", "0"),
        (&["tail"], "TALLY_LEASE_DURATION_MS", "100"),
        (&["tail"], "TALLY_INITIAL_POSITION", "yesterday"),
        (&["leases"], "TALLY_STREAM", "no spaces allowed"),
    ];
    for (args, variable, value) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(args)
            .env(variable, value)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}={value} accepted");
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["leases", "--owner", "no/slashes"])
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--owner"));
}

/// A fan-out worker registers the application's stream consumer; `tally
/// consumer` shows it, a graceful stop leaves it, and only `tally consumer
/// deregister` removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_consumer_stays_until_an_operator_deregisters_it() {
    let setup = Setup::with_mode(EmulatorKind::Ministack, 1, "fan-out").await;
    let dynamodb = setup.endpoint.clone();
    let consumer = |action: &str| -> serde_json::Value {
        let output = setup
            .tally(&dynamodb)
            .args(["consumer", action])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    assert_eq!(consumer("show")["registered"], false);
    let mut worker = setup.worker("w1", &dynamodb);
    setup.put(0, 20, 5).await;
    setup.wait_delivered(20, "through fan-out").await;
    let shown = consumer("show");
    assert_eq!(shown["status"], "ACTIVE", "{shown}");
    assert_eq!(shown["consumer"], setup.app.as_str());
    stop(&mut worker, "-TERM");
    assert!(worker.wait().unwrap().success());
    assert_eq!(
        consumer("show")["registered"],
        true,
        "a worker never deregisters"
    );
    assert_eq!(consumer("deregister")["deregistered"], true);
    // Deregistration may take a moment (DELETING).
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumer("show")["registered"] == true {
        assert!(Instant::now() < deadline, "still registered after 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(consumer("deregister")["deregistered"], false);
}
