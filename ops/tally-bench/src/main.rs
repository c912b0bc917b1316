//! Lease benchmarks with real `tally tail` processes on the local stack.
//!
//! `failover [--runs N]`: time until a killed (SIGKILL) or stopped (SIGTERM)
//! worker's shards are processed again by the survivor (2 workers, 4
//! shards, a record put into every shard every 50 ms), median and max over
//! N runs; and idle lease-table requests per worker per minute with 2
//! workers at 4 and 64 shards.
//!
//! `drain [--records N] [--peer-bin PATH]`: one worker drains a pre-loaded
//! 4-shard stream with a processor that only checkpoints; records per
//! second, CPU seconds per 100,000 records, peak memory and start-up time.
//! With a peer program (`--peer-bin`, or `TALLY_PEER_BIN`), the peer then
//! drains the same stream, and the table shows both and their ratios.
//!
//! `consumer-modes [--records N] [--seconds S]`: polling against enhanced
//! fan-out in one run; see [`modes`].
//!
//! `peer [--peer-bin PATH] [--records N] [--runs N]`: Tally against a peer
//! consumer in one run; see [`peer`].
//!
//! `producer [--records N]`: the producer SDK puts N records (100-byte
//! votes, 10,000 keys) on a 4-shard stream, with aggregation off and on:
//! records per second and `PutRecords` calls per 1,000 records; then the
//! same records with a plain boto3 `put_records` loop (500 per call) as the
//! baseline.
//!
//! `pipeline [--votes N]`: one `tally worker` counts a pre-loaded 4-shard
//! stream of votes (10% repeats) end to end; votes per second, the
//! emulator's own rate for the same conditional puts at the same
//! concurrency (and the ratio), DynamoDB requests and write units per 1,000
//! votes, CPU seconds and peak memory of the worker.
//!
//! `all [--quick] [--out FILE] [--compare OLD.json] [--criterion-dir DIR] [--peer-bin PATH]`:
//! see [`report`].
//!
//! `gateway [--votes N] [--concurrency C] [--clients K]`: see [`gateway`].
//!
//! `recount [--votes N] [--segments S] [--concurrency C]`: see [`recount`].
//!
//! `fuzz --target vote|kpl|gateway [--seconds N] [--seed S]`: see [`fuzz`].
//!
//! `scale [--shards S] [--workers W] [--seed N]`: see [`scale`].
//!
//! `chaos [--seconds N] [--seed S] [--workers W] [--rate R] [--gateway-rate G] [--quiet-timeout-s Q] [--sabotage all|MODE,...]`:
//! see [`chaos`].

mod chaos;
mod fuzz;
mod gateway;
mod modes;
mod peer;
mod recount;
mod report;
mod scale;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tally_testkit::emulators::{
    create_stream, put_records, sdk_config, unique_name, Emulator, EmulatorKind,
};
use tally_testkit::process::metrics_lines;

/// One figure of a benchmark, for the combined report of `all`.
#[derive(Clone, Debug)]
pub struct Figure {
    /// A stable name, the key in the JSON report.
    pub key: &'static str,
    pub label: String,
    pub value: f64,
    pub unit: &'static str,
    /// Why the value is missing (it is then NaN, `null` in the JSON).
    pub note: Option<String>,
}

pub fn figure(
    key: &'static str,
    label: impl Into<String>,
    value: f64,
    unit: &'static str,
) -> Figure {
    Figure {
        key,
        label: label.into(),
        value,
        unit,
        note: None,
    }
}

/// A figure that could not be measured, and why: printed as "n/a".
pub fn not_measured(
    key: &'static str,
    label: impl Into<String>,
    unit: &'static str,
    reason: impl Into<String>,
) -> Figure {
    Figure {
        note: Some(reason.into()),
        ..figure(key, label, f64::NAN, unit)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Stack {
    endpoint: String,
    kinesis: aws_sdk_kinesis::Client,
    tally: PathBuf,
    dir: PathBuf,
    emulator: Emulator,
}

impl Drop for Stack {
    /// One benchmark's emulator stops when it is done (`all` runs several).
    fn drop(&mut self) {
        self.emulator.stop();
    }
}

impl Stack {
    async fn new() -> Self {
        let emulator = Emulator::start(EmulatorKind::Ministack);
        let config = sdk_config(&emulator.endpoint).await;
        let tally = PathBuf::from(std::env::var("TALLY_BIN").expect("TALLY_BIN: the tally binary"));
        let dir = std::env::temp_dir().join(unique_name("tally-bench"));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            endpoint: emulator.endpoint.clone(),
            kinesis: aws_sdk_kinesis::Client::new(&config),
            tally,
            dir,
            emulator,
        }
    }

    fn worker(&self, stream: &str, app: &str, id: &str, extra: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.join(format!("{app}-{id}.log"))).unwrap();
        tally_testkit::process::tally(&self.tally)
            .args(["--stream", stream, "--app", app, "tail", "--worker-id", id])
            .args(extra)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tally")
    }

    fn log(&self, app: &str, id: &str) -> PathBuf {
        self.dir.join(format!("{app}-{id}.log"))
    }
}

fn signal(child: &Child, name: &str) {
    Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
}

/// Whole lines of a worker's record output.
fn deliveries(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |at| at + 1)];
    complete
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The shards a worker's record output delivered after `since_ms`.
fn shards_delivered_after(path: &Path, since_ms: u64) -> std::collections::BTreeSet<String> {
    deliveries(path)
        .iter()
        .filter(|d| d["delivered_ms"].as_u64().unwrap_or(0) > since_ms)
        .filter_map(|d| d["shard"].as_str().map(str::to_owned))
        .collect()
}

/// When the last of `shards` had its first delivery after `after_ms` in a
/// worker's record output; `None` while one has none yet.
fn all_resumed_at(
    path: &Path,
    shards: &std::collections::BTreeSet<String>,
    after_ms: u64,
) -> Option<u64> {
    let lines = deliveries(path);
    shards
        .iter()
        .map(|shard| {
            lines
                .iter()
                .filter(|d| d["shard"] == shard.as_str())
                .filter_map(|d| d["delivered_ms"].as_u64())
                .filter(|at| *at > after_ms)
                .min()
        })
        .try_fold(after_ms, |latest, first| first.map(|at| latest.max(at)))
}

async fn shard_hash_keys(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> Vec<(String, String)> {
    let listed = kinesis
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    listed
        .shards()
        .iter()
        .map(|s| {
            (
                s.shard_id().to_owned(),
                s.hash_key_range().unwrap().starting_hash_key().to_owned(),
            )
        })
        .collect()
}

/// Puts a record into every shard of `stream` every 50 ms until aborted.
async fn spawn_ticker(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
) -> tokio::task::JoinHandle<()> {
    let shards = shard_hash_keys(kinesis, stream).await;
    let kinesis = kinesis.clone();
    let stream = stream.to_owned();
    tokio::spawn(async move {
        let mut tick = 0u64;
        loop {
            let entries = shards
                .iter()
                .map(|(_, hash)| {
                    PutRecordsRequestEntry::builder()
                        .partition_key("tick")
                        .explicit_hash_key(hash)
                        .data(Blob::new(format!("{tick}")))
                        .build()
                        .unwrap()
                })
                .collect();
            let _ = kinesis
                .put_records()
                .stream_name(&stream)
                .set_records(Some(entries))
                .send()
                .await;
            tick += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// One failover run: returns seconds until every shard the victim held
/// was delivered again by the survivor.
async fn failover_run(stack: &Stack, kill: bool) -> f64 {
    let stream = unique_name("bench");
    let app = unique_name("app");
    create_stream(&stack.kinesis, &stream, 4).await;
    let outputs: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|id| stack.dir.join(format!("{app}-{id}.jsonl")))
        .collect();
    let mut a = stack.worker(
        &stream,
        &app,
        "a",
        &["--output", outputs[0].to_str().unwrap()],
    );
    let mut b = stack.worker(
        &stream,
        &app,
        "b",
        &["--output", outputs[1].to_str().unwrap()],
    );
    let ticker = spawn_ticker(&stack.kinesis, &stream).await;
    // Wait until both workers deliver (balanced 2/2).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recent = now_ms() - 1000;
        let busy = outputs
            .iter()
            .all(|path| shards_delivered_after(path, recent).len() == 2);
        if busy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers did not balance; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let victim_shards = shards_delivered_after(&outputs[0], now_ms() - 1000);
    let stopped_at = now_ms();
    signal(&a, if kill { "-KILL" } else { "-TERM" });
    let deadline = Instant::now() + Duration::from_secs(30);
    let took = loop {
        if let Some(at) = all_resumed_at(&outputs[1], &victim_shards, stopped_at) {
            break (at - stopped_at) as f64 / 1000.0;
        }
        assert!(
            Instant::now() < deadline,
            "shards not resumed in 30 s; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ticker.abort();
    signal(&b, "-TERM");
    let _ = a.wait();
    let _ = b.wait();
    took
}

/// Idle lease-table requests per worker per minute, 2 workers.
async fn idle_rate(stack: &Stack, shards: i32) -> f64 {
    let stream = unique_name("idle");
    let app = unique_name("app");
    create_stream(&stack.kinesis, &stream, shards).await;
    let extra = ["--quiet", "--metrics-interval-ms", "2000"];
    let mut workers = [
        stack.worker(&stream, &app, "a", &extra),
        stack.worker(&stream, &app, "b", &extra),
    ];
    // Settle (take and balance), then measure a 60 s window.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let start: Vec<(u64, i64)> = ["a", "b"]
        .iter()
        .map(|id| last_requests(&stack.log(&app, id)))
        .collect();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let end: Vec<(u64, i64)> = ["a", "b"]
        .iter()
        .map(|id| last_requests(&stack.log(&app, id)))
        .collect();
    for worker in workers.iter_mut() {
        signal(worker, "-TERM");
        let _ = worker.wait();
    }
    let rates: Vec<f64> = start
        .iter()
        .zip(&end)
        .map(|((t0, r0), (t1, r1))| (r1 - r0) as f64 / ((t1 - t0) as f64 / 60_000.0))
        .collect();
    rates.iter().sum::<f64>() / rates.len() as f64
}

fn last_requests(log: &Path) -> (u64, i64) {
    let lines = metrics_lines(log);
    let (uptime, metrics) = lines.last().expect("a metrics line");
    (
        *uptime,
        metrics["tally_lease_lease_table_requests_total"]
            .as_i64()
            .unwrap(),
    )
}

/// The median and the largest of `values` (sorted in place).
fn summary(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (percentile(values, 0.5), percentile(values, 1.0))
}

async fn failover(runs: usize) -> Vec<Figure> {
    let stack = Stack::new().await;
    println!("settings: 2 workers, 4 shards, defaults (renew 600 ms, lease 3000 ms, take 600 ms, poll 200 ms)");
    let mut killed = Vec::new();
    let mut stopped = Vec::new();
    for run in 0..runs {
        killed.push(failover_run(&stack, true).await);
        stopped.push(failover_run(&stack, false).await);
        eprintln!(
            "run {}/{runs}: killed {:.2} s, stopped {:.2} s",
            run + 1,
            killed[run],
            stopped[run]
        );
    }
    let (killed_median, killed_max) = summary(&mut killed);
    let (stopped_median, stopped_max) = summary(&mut stopped);
    eprintln!("measuring idle lease-table requests (60 s windows)");
    let idle4 = idle_rate(&stack, 4).await;
    let idle64 = idle_rate(&stack, 64).await;
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "figure", "median", "max", "target"
    );
    println!(
        "{:<44} {:>9.2}s {:>9.2}s {:>10}",
        format!("failover after SIGKILL ({runs} runs)"),
        killed_median,
        killed_max,
        "max < 5 s"
    );
    println!(
        "{:<44} {:>9.2}s {:>9.2}s {:>10}",
        format!("failover after SIGTERM ({runs} runs)"),
        stopped_median,
        stopped_max,
        "< 1 s"
    );
    println!(
        "{:<44} {:>10.1} {:>10} {:>10}",
        "idle lease-table requests/worker/min, 4 sh", idle4, "", "<= 120"
    );
    println!(
        "{:<44} {:>10.1} {:>10} {:>10}",
        "idle lease-table requests/worker/min, 64 sh", idle64, "", "= 4 sh"
    );
    println!("ratio 64/4 shards: {:.2} (peers measured here: disney-kinesis-client-rust 30/min, kcl-rs 82/min at 4 shards, linear in shards)", idle64 / idle4);
    vec![
        figure(
            "failover_kill_median_s",
            "failover after SIGKILL, median",
            killed_median,
            "s",
        ),
        figure(
            "failover_kill_max_s",
            "failover after SIGKILL, max",
            killed_max,
            "s",
        ),
        figure(
            "failover_stop_median_s",
            "failover after SIGTERM, median",
            stopped_median,
            "s",
        ),
        figure(
            "failover_stop_max_s",
            "failover after SIGTERM, max",
            stopped_max,
            "s",
        ),
        figure(
            "idle_lease_requests_4",
            "idle lease-table requests/worker/min, 4 shards",
            idle4,
            "/min",
        ),
        figure(
            "idle_lease_requests_64",
            "idle lease-table requests/worker/min, 64 shards",
            idle64,
            "/min",
        ),
    ]
}

/// CPU seconds and peak resident memory (KiB) of a running process.
pub(crate) fn cpu_and_peak(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let clock: f64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    (ticks / clock, status_kib(&status, "VmHWM:"))
}

/// A `/proc/<pid>/status` size field, in KiB.
pub(crate) fn status_kib(status: &str, field: &str) -> f64 {
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn producer_run(stack: &Stack, records: usize, aggregate: bool) -> (f64, f64) {
    use tally_producer::{Aggregation, KinesisSink, Producer, ProducerConfig, VoteBuilder};
    let stream = unique_name("producer");
    create_stream(&stack.kinesis, &stream, 4).await;
    let producer = Producer::start(
        std::sync::Arc::new(KinesisSink::new(stack.kinesis.clone(), &stream)),
        ProducerConfig {
            aggregation: aggregate.then(Aggregation::default),
            ..ProducerConfig::default()
        },
    );
    let started = Instant::now();
    let mut receipts = Vec::with_capacity(records);
    for n in 0..records {
        let record = VoteBuilder::new(
            format!("v{n:012}"),
            "bench",
            "a",
            format!("voter-{}", n % 10_000),
        )
        .build()
        .unwrap();
        receipts.push(producer.send(record).await.unwrap());
    }
    producer.close().await.unwrap();
    for receipt in receipts {
        receipt.await.expect("record put");
    }
    let seconds = started.elapsed().as_secs_f64();
    let calls = producer
        .metrics()
        .calls
        .load(std::sync::atomic::Ordering::Relaxed) as f64;
    (records as f64 / seconds, calls * 1000.0 / records as f64)
}

async fn producer_bench(records: usize) -> Vec<Figure> {
    let stack = Stack::new().await;
    let plain = producer_run(&stack, records, false).await;
    let aggregated = producer_run(&stack, records, true).await;
    // The baseline: boto3, put_records of 500 at a time, one call after another.
    let python = String::from_utf8(
        Command::new("bash")
            .args(["ops/emulators", "tools-python"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let stream = unique_name("boto3");
    create_stream(&stack.kinesis, &stream, 4).await;
    let script = format!(
        r#"
import json, time, boto3
k = boto3.client("kinesis", endpoint_url="{endpoint}", region_name="us-east-1",
                 aws_access_key_id="bench", aws_secret_access_key="bench")
records = [{{"Data": json.dumps({{"vote_id": "v%012d" % n, "poll_id": "bench", "option": "a",
             "voter_id": "voter-%d" % (n % 10000)}}).encode(), "PartitionKey": "voter-%d" % (n % 10000)}}
           for n in range({records})]
start = time.time(); calls = 0
pending = records
while pending:
    batch, pending = pending[:500], pending[500:]
    out = k.put_records(StreamName="{stream}", Records=batch); calls += 1
    pending = [r for r, res in zip(batch, out["Records"]) if "ErrorCode" in res] + pending
print(json.dumps({{"rate": {records} / (time.time() - start), "calls": calls}}))
"#,
        endpoint = stack.endpoint,
    );
    let output = Command::new(python).arg("-c").arg(script).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let baseline: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let boto_rate = baseline["rate"].as_f64().unwrap();
    let boto_calls = baseline["calls"].as_f64().unwrap() * 1000.0 / records as f64;
    println!("settings: {records} vote records (~100 bytes, 10,000 keys), a 4-shard stream on ministack, producer defaults (linger 50 ms)");
    println!(
        "{:<40} {:>16} {:>24}",
        "", "records/s", "PutRecords per 1,000"
    );
    println!(
        "{:<40} {:>16.0} {:>24.2}",
        "tally-producer, plain records", plain.0, plain.1
    );
    println!(
        "{:<40} {:>16.0} {:>24.2}",
        "tally-producer, KPL aggregation", aggregated.0, aggregated.1
    );
    println!(
        "{:<40} {:>16.0} {:>24.2}",
        "boto3 put_records loop (baseline)", boto_rate, boto_calls
    );
    println!(
        "ratios to the baseline: plain {:.2}x, aggregated {:.2}x",
        plain.0 / boto_rate,
        aggregated.0 / boto_rate
    );
    vec![
        figure(
            "producer_plain_rps",
            "producer records/s, plain",
            plain.0,
            "/s",
        ),
        figure(
            "producer_aggregated_rps",
            "producer records/s, KPL aggregation",
            aggregated.0,
            "/s",
        ),
        figure(
            "producer_boto3_rps",
            "boto3 put_records loop records/s (baseline)",
            boto_rate,
            "/s",
        ),
        figure(
            "producer_aggregated_vs_boto3",
            "producer aggregated / boto3",
            aggregated.0 / boto_rate,
            "x",
        ),
        figure(
            "producer_aggregated_calls_per_1k",
            "PutRecords calls per 1,000 records, aggregated",
            aggregated.1,
            "",
        ),
    ]
}

/// The pipeline benchmark with batched vote writes and then, in the same
/// run, with one conditional put per vote, and their ratios.
async fn pipeline(votes: usize) -> Vec<Figure> {
    let mut figures = pipeline_on(votes, 4, "batched").await;
    let single = pipeline_on(votes, 4, "single").await;
    let value = |figures: &[Figure], key: &str| {
        figures
            .iter()
            .find(|f| f.key == key)
            .map_or(f64::NAN, |f| f.value)
    };
    let cpu =
        value(&single, "single_worker_cpu_s_per_100k") / value(&figures, "worker_cpu_s_per_100k");
    let requests = value(&single, "single_dynamodb_requests_per_1k")
        / value(&figures, "dynamodb_requests_per_1k");
    println!("batched writes against one put per vote, same run: {cpu:.1}x less worker CPU per vote, {requests:.1}x fewer DynamoDB requests");
    figures.extend(single);
    figures.push(figure(
        "batched_cpu_gain",
        "worker CPU per vote, single puts / batched",
        cpu,
        "x",
    ));
    figures.push(figure(
        "batched_request_gain",
        "DynamoDB requests per vote, single puts / batched",
        requests,
        "x",
    ));
    figures
}

/// The pipeline benchmark on a stream of `shards` shards, with the vote
/// writes `writes` (`batched` or `single`; the emulator's raw rate is
/// measured only for 4 shards).
async fn pipeline_on(votes: usize, shards: i32, writes: &'static str) -> Vec<Figure> {
    use tally_store::dynamo::{DynamoVoteStore, TableNames};
    use tally_store::prelude::*;
    use tally_store::{Origin, VoteItem};
    let stack = Stack::new().await;
    let stream = unique_name("pipeline");
    let app = unique_name("app");
    let prefix = format!("{}-", unique_name("b"));
    create_stream(&stack.kinesis, &stream, shards).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk_config(&stack.endpoint).await);
    let store = DynamoVoteStore::new(
        dynamodb.clone(),
        TableNames::with_prefix(&prefix, format!("{app}-leases")),
    );
    store.ensure_tables().await.unwrap();
    let poll = tally_store::admin::new_poll(
        "bench",
        "Which one?",
        &["a".into(), "b".into(), "c".into(), "d".into()],
        None,
        None,
        tally_core::poll::DEFAULT_COUNTER_SHARDS,
    )
    .unwrap();
    tally_store::admin::create_poll(&store, poll, true)
        .await
        .unwrap();
    eprintln!("pre-loading {votes} votes");
    let voters = (votes * 9 / 10).max(1);
    for start in (0..votes).step_by(500) {
        let entries: Vec<PutRecordsRequestEntry> = (start..(start + 500).min(votes))
            .map(|index| {
                let voter = format!("v{}", index % voters);
                let vote = tally_contract::vote::Vote {
                    vote_id: format!("id{index}"),
                    poll_id: "bench".into(),
                    option: ["a", "b", "c", "d"][index % 4].into(),
                    voter_id: voter.clone(),
                    cast_at: None,
                };
                PutRecordsRequestEntry::builder()
                    .partition_key(voter)
                    .data(Blob::new(tally_contract::vote::encode(&vote)))
                    .build()
                    .unwrap()
            })
            .collect();
        put_records(&stack.kinesis, &stream, entries).await;
    }
    eprintln!("counting");
    let log = stack.log(&app, "pipeline");
    let worker = tally_testkit::process::tally(&stack.tally)
        .args([
            "--stream",
            &stream,
            "--app",
            &app,
            "--table-prefix",
            &prefix,
        ])
        .args(["worker", "--worker-id", "pipeline"])
        .env("AWS_ENDPOINT_URL", &stack.endpoint)
        .env("TALLY_VOTE_WRITES", writes)
        .env("TALLY_METRICS_INTERVAL_MS", "100")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start tally worker");
    let pid = worker.id();
    let decided = |m: &serde_json::Value| {
        let rejected: i64 = m["tally_votes_rejected_total"]
            .as_object()
            .map(|reasons| reasons.values().filter_map(|v| v.as_i64()).sum())
            .unwrap_or(0);
        m["tally_votes_counted_total"].as_i64().unwrap_or(0)
            + m["tally_votes_duplicate_total"].as_i64().unwrap_or(0)
            + rejected
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    let (first, done) = loop {
        let lines = metrics_lines(&log);
        let first = lines
            .iter()
            .find(|(_, m)| m["tally_lease_user_records_total"].as_i64().unwrap_or(0) > 0);
        let done = lines.iter().find(|(_, m)| decided(m) >= votes as i64);
        if let (Some(first), Some(done)) = (first, done) {
            break (first.clone(), done.clone());
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not finish; log {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if shards != 4 {
        // Memory with every shard leased: wait for all the leases, then
        // let it run a while.
        let deadline = Instant::now() + Duration::from_secs(120);
        while metrics_lines(&log)
            .last()
            .and_then(|(_, m)| m["tally_lease_leases_held"].as_i64())
            .unwrap_or(0)
            < i64::from(shards)
        {
            assert!(
                Instant::now() < deadline,
                "the worker did not lease every shard; log {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let (peak, rss) = (
            status_kib(&status, "VmHWM:") / 1024.0,
            status_kib(&status, "VmRSS:") / 1024.0,
        );
        signal(&worker, "-TERM");
        let mut worker = worker;
        let _ = worker.wait();
        println!("settings: 1 worker holding {shards} shards, {votes} votes counted first, then 10 s leased");
        println!("{:<52} {:>13.1}M", "worker peak memory (MiB, VmHWM)", peak);
        println!(
            "{:<52} {:>13.1}M",
            "worker resident memory at the end (MiB, VmRSS)", rss
        );
        return vec![
            figure(
                "worker_memory_leased_peak_mib",
                format!("worker peak memory, {shards} leased shards"),
                peak,
                "MiB",
            ),
            figure(
                "worker_memory_leased_rss_mib",
                format!("worker resident memory, {shards} leased shards"),
                rss,
                "MiB",
            ),
        ];
    }
    let (cpu, peak_kib) = cpu_and_peak(pid);
    signal(&worker, "-TERM");
    let mut worker = worker;
    let _ = worker.wait();
    let counted = done.1["tally_votes_counted_total"].as_i64().unwrap_or(0);
    let kinesis_requests = done.1["tally_kinesis_requests_total"]
        .as_f64()
        .unwrap_or(0.0);
    let seconds = (done.0.saturating_sub(first.0)) as f64 / 1000.0;
    let rate = votes as f64 / seconds.max(0.001);
    let requests = done.1["tally_dynamodb_requests_total"]
        .as_f64()
        .unwrap_or(0.0)
        + done.1["tally_lease_lease_table_requests_total"]
            .as_f64()
            .unwrap_or(0.0);
    let write_units = done.1["tally_dynamodb_write_units_total"]
        .as_f64()
        .unwrap_or(0.0);

    // The emulator's own rate for the same writes (batches of 25 inserts,
    // or conditional puts), at the same concurrency as the worker (64
    // votes per shard, 4 shards), into a fresh table.
    let raw_store = DynamoVoteStore::new(
        dynamodb,
        TableNames::with_prefix(&format!("{}-", unique_name("raw")), format!("{app}-leases")),
    );
    raw_store.ensure_tables().await.unwrap();
    let raw_count = votes.min(20_000);
    let raw_started = Instant::now();
    use futures::StreamExt;
    let item = |index: usize| VoteItem {
        poll_id: "bench".into(),
        voter_id: format!("v{index}"),
        option: "a".into(),
        vote_id: format!("id{index}"),
        origin: Origin {
            shard: "shardId-000000000000".into(),
            sequence: format!("{index}"),
            sub_sequence: 0,
        },
        arrival_ms: 0,
    };
    if writes == "batched" {
        let batch = tally_store::MAX_BATCH_STATEMENTS;
        futures::stream::iter((0..raw_count).step_by(batch))
            .map(|start| {
                let store = &raw_store;
                let items: Vec<VoteItem> =
                    (start..(start + batch).min(raw_count)).map(item).collect();
                async move { store.put_votes(&items).await.unwrap() }
            })
            .buffer_unordered(4 * 64usize.div_ceil(batch))
            .for_each(|_| async {})
            .await;
    } else {
        futures::stream::iter(0..raw_count)
            .map(|index| {
                let store = &raw_store;
                let item = item(index);
                async move { store.put_vote(&item).await.unwrap() }
            })
            .buffer_unordered(256)
            .for_each(|_| async {})
            .await;
    }
    let raw_rate = raw_count as f64 / raw_started.elapsed().as_secs_f64();

    println!("settings: 1 worker, 4 shards, {votes} votes from {voters} voters (10% repeats), vote writes {writes}, put concurrency 64 per shard, defaults otherwise");
    println!("{:<52} {:>14}", "figure", "value");
    println!(
        "{:<52} {:>14.0}",
        "votes decided per second, end to end", rate
    );
    println!(
        "{:<52} {:>14.0}",
        format!("emulator: {writes} writes, votes per second, same code"),
        raw_rate
    );
    println!(
        "{:<52} {:>14.2}",
        "ratio (pipeline / raw puts)",
        rate / raw_rate
    );
    println!(
        "{:<52} {:>14.0}",
        "votes counted (the rest duplicates)", counted
    );
    println!(
        "{:<52} {:>14.1}",
        "DynamoDB requests per 1,000 votes",
        requests * 1000.0 / votes as f64
    );
    println!(
        "{:<52} {:>14.1}",
        "write units per 1,000 votes (as reported)",
        write_units * 1000.0 / votes as f64
    );
    println!(
        "{:<52} {:>14.3}",
        "worker CPU seconds per 100,000 votes",
        cpu / (votes as f64 / 100_000.0)
    );
    println!(
        "{:<52} {:>13.1}M",
        "worker peak memory (MiB, VmHWM)",
        peak_kib / 1024.0
    );
    println!(
        "{:<52} {:>14.1}",
        "Kinesis requests per 1,000 votes (reading)",
        kinesis_requests * 1000.0 / votes as f64
    );
    println!("(times from the worker's own metrics clock, first record read to last vote decided; CPU includes start-up)");
    let per_1k = |x: f64| x * 1000.0 / votes as f64;
    if writes != "batched" {
        return vec![
            figure(
                "single_pipeline_votes_per_s",
                "end to end votes/s, one put per vote",
                rate,
                "/s",
            ),
            figure(
                "single_dynamodb_requests_per_1k",
                "DynamoDB requests per 1,000 votes, one put per vote",
                per_1k(requests),
                "",
            ),
            figure(
                "single_worker_cpu_s_per_100k",
                "worker CPU seconds per 100,000 votes, one put per vote",
                cpu / (votes as f64 / 100_000.0),
                "s",
            ),
        ];
    }
    vec![
        figure(
            "pipeline_votes_per_s",
            "end to end votes/s (1 worker, 4 shards)",
            rate,
            "/s",
        ),
        figure(
            "emulator_raw_puts_per_s",
            "emulator raw batched writes, votes/s, same code",
            raw_rate,
            "/s",
        ),
        figure(
            "pipeline_vs_raw",
            "end to end / emulator raw rate",
            rate / raw_rate,
            "x",
        ),
        figure(
            "dynamodb_requests_per_1k",
            "DynamoDB requests per 1,000 votes",
            per_1k(requests),
            "",
        ),
        figure(
            "write_units_per_1k",
            "DynamoDB write units per 1,000 votes",
            per_1k(write_units),
            "",
        ),
        figure(
            "kinesis_requests_per_1k",
            "Kinesis requests per 1,000 votes (worker reads)",
            per_1k(kinesis_requests),
            "",
        ),
        figure(
            "worker_cpu_s_per_100k",
            "worker CPU seconds per 100,000 votes",
            cpu / (votes as f64 / 100_000.0),
            "s",
        ),
        figure(
            "worker_peak_mib_4_shards",
            "worker peak memory, 4 shards",
            peak_kib / 1024.0,
            "MiB",
        ),
    ]
}

/// Puts `records` small records on `stream` (500 per call, 997 keys).
async fn preload(kinesis: &aws_sdk_kinesis::Client, stream: &str, records: usize) {
    eprintln!("pre-loading {records} records");
    let loading = Instant::now();
    for start in (0..records).step_by(500) {
        let entries: Vec<PutRecordsRequestEntry> = (start..(start + 500).min(records))
            .map(|index| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{}", index % 997))
                    .data(Blob::new(format!("r{index}")))
                    .build()
                    .unwrap()
            })
            .collect();
        put_records(kinesis, stream, entries).await;
    }
    eprintln!(
        "pre-loaded in {:.1} s; draining",
        loading.elapsed().as_secs_f64()
    );
}

/// What one consumer process took to drain a pre-loaded stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Drained {
    pub records_per_s: f64,
    pub cpu_s_per_100k: f64,
    pub peak_mib: f64,
    /// Spawn to the first record handled, by the process's own clock.
    pub startup_s: f64,
}

impl Drained {
    /// From the process's own (uptime ms, records handled) at its first
    /// record and when it had handled them all, and its CPU and peak.
    fn new(records: usize, first_ms: u64, done_ms: u64, cpu_s: f64, peak_kib: f64) -> Self {
        let seconds = done_ms.saturating_sub(first_ms) as f64 / 1000.0;
        Self {
            records_per_s: records as f64 / seconds.max(0.001),
            cpu_s_per_100k: cpu_s / (records as f64 / 100_000.0),
            peak_mib: peak_kib / 1024.0,
            startup_s: first_ms as f64 / 1000.0,
        }
    }
}

/// One `tally tail` drains the pre-loaded `stream`, with a processor that
/// only checkpoints, metrics every 100 ms.
async fn drain_tally(stack: &Stack, stream: &str, records: usize) -> Drained {
    drain_tally_with(stack, stream, records, &[]).await
}

/// [`drain_tally`] with more `tally tail` flags (`--consumer-mode`).
async fn drain_tally_with(stack: &Stack, stream: &str, records: usize, extra: &[&str]) -> Drained {
    let app = unique_name("app");
    let mut flags = vec!["--quiet", "--metrics-interval-ms", "100"];
    flags.extend_from_slice(extra);
    let mut worker = stack.worker(stream, &app, "drain", &flags);
    let pid = worker.id();
    let log = stack.log(&app, "drain");
    let mut first: Option<u64> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (done_ms, first_ms) = loop {
        let lines = metrics_lines(&log);
        if first.is_none() {
            first = lines
                .iter()
                .find(|(_, m)| m["tally_lease_user_records_total"].as_i64().unwrap_or(0) > 0)
                .map(|(t, _)| *t);
        }
        if let Some((t, _)) = lines.iter().find(|(_, m)| {
            m["tally_lease_user_records_total"].as_i64().unwrap_or(0) >= records as i64
        }) {
            break (*t, first.unwrap_or(0));
        }
        if let Some(status) = worker.try_wait().expect("poll the drain worker") {
            panic!(
                "tally tail exited ({status}) before draining the stream; log {}",
                log.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "drain did not finish; log {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (cpu, peak_kib) = cpu_and_peak(pid);
    signal(&worker, "-TERM");
    let _ = worker.wait();
    Drained::new(records, first_ms, done_ms, cpu, peak_kib)
}

async fn drain(records: usize, peer_bin: Option<PathBuf>) {
    let stack = Stack::new().await;
    let stream = unique_name("drain");
    create_stream(&stack.kinesis, &stream, 4).await;
    preload(&stack.kinesis, &stream, records).await;
    let tally = drain_tally(&stack, &stream, records).await;
    let peer = match &peer_bin {
        Some(bin) => {
            eprintln!("draining the same stream with the peer");
            Some(peer::drain_peer(&stack, bin, &stream, records).await)
        }
        None => None,
    };
    println!("settings: 1 worker, 4 shards, {records} records, defaults (max records 10000, poll 200 ms), processor checkpoints each batch");
    let peer_column = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    println!(
        "{:<34} {:>12} {:>20} {:>12}",
        "figure",
        "tally",
        peer::PEER_NAME,
        "tally/peer"
    );
    let rows: [(&str, f64, Option<f64>, &str); 4] = [
        (
            "records per second",
            tally.records_per_s,
            peer.map(|p| p.records_per_s),
            "",
        ),
        (
            "CPU seconds per 100,000 records",
            tally.cpu_s_per_100k,
            peer.map(|p| p.cpu_s_per_100k),
            "",
        ),
        (
            "peak memory (MiB, VmHWM)",
            tally.peak_mib,
            peer.map(|p| p.peak_mib),
            "M",
        ),
        (
            "start-up (spawn to first record)",
            tally.startup_s,
            peer.map(|p| p.startup_s),
            "s",
        ),
    ];
    for (label, ours, theirs, unit) in rows {
        println!(
            "{:<34} {:>12} {:>20} {:>12}",
            label,
            format!("{}{unit}", peer::amount(ours)),
            peer_column(theirs.map(|v| format!("{}{unit}", peer::amount(v)))),
            peer_column(theirs.map(|v| format!("{:.2}", ours / v))),
        );
    }
    println!("(CPU includes start-up and the idle tail until the last metrics line; times from each process's own clock)");
    if peer.is_none() {
        println!("(no peer ran: --peer-bin or TALLY_PEER_BIN names the peer_drain program)");
    }
}

/// Every subcommand and the flags it reads.
const USAGE: &str = "\
usage: tally-bench SUBCOMMAND [FLAGS]
  all [--quick] [--out FILE] [--compare OLD.json] [--criterion-dir DIR] [--peer-bin PATH]
  failover [--runs N]
  drain [--records N] [--peer-bin PATH]
  peer [--peer-bin PATH] [--records N] [--runs N]
  consumer-modes [--records N] [--seconds S]
  pipeline [--votes N]
  producer [--records N]
  gateway [--votes N] [--concurrency C] [--clients K]
  recount [--votes N] [--segments S] [--concurrency C]
  fuzz --target vote|kpl|gateway [--seconds N] [--seed S]
  scale [--shards S] [--workers W] [--seed N]
  chaos [--seconds N] [--seed S] [--workers W] [--rate R] [--gateway-rate G]
        [--quiet-timeout-s Q] [--sabotage all|MODE,...]
numbers are positive whole numbers; --peer-bin names the peer_drain program
(default: TALLY_PEER_BIN); TALLY_BIN names the tally binary";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let number = |flag: &str, default: usize| match args.iter().position(|a| a == flag) {
        None => default,
        Some(at) => match args.get(at + 1).map(|value| value.parse::<usize>()) {
            Some(Ok(value)) if value > 0 => value,
            _ => usage(),
        },
    };
    match args.first().map(String::as_str) {
        Some("failover") => {
            failover(number("--runs", 5)).await;
        }
        Some("consumer-modes") => {
            modes::consumer_modes(number("--records", 100_000), number("--seconds", 20) as u64)
                .await;
        }
        Some("drain") => drain(number("--records", 200_000), peer::peer_bin(&args)).await,
        Some("peer") => {
            peer::peer(
                peer::peer_bin(&args).as_deref(),
                number("--records", 100_000),
                number("--runs", 3),
            )
            .await;
        }
        Some("pipeline") => {
            pipeline(number("--votes", 50_000)).await;
        }
        Some("producer") => {
            producer_bench(number("--records", 100_000)).await;
        }
        Some("all") => {
            let value = |flag: &str| {
                args.iter()
                    .position(|a| a == flag)
                    .map(|at| args.get(at + 1).cloned().unwrap_or_else(|| usage()))
            };
            report::all(report::Options {
                quick: args.iter().any(|a| a == "--quick"),
                out: PathBuf::from(value("--out").unwrap_or_else(|| "bench-report.json".into())),
                compare: value("--compare").map(PathBuf::from),
                criterion_dir: value("--criterion-dir").map(PathBuf::from),
                peer_bin: peer::peer_bin(&args),
            })
            .await;
        }
        Some("fuzz") => {
            let target = match args.iter().position(|a| a == "--target") {
                Some(at) => args.get(at + 1).cloned().unwrap_or_else(|| usage()),
                None => usage(),
            };
            fuzz::fuzz(
                &target,
                number("--seconds", 600) as u64,
                number("--seed", 1) as u64,
            )
        }
        Some("chaos") => {
            let (seconds, workers, rate) = (
                number("--seconds", 150) as u64,
                number("--workers", 3),
                number("--rate", 60) as u64,
            );
            // The workload and its ground truth are held in memory.
            let gateway_rate = number("--gateway-rate", 4) as u64;
            if workers > 32
                || rate.saturating_mul(seconds) > 5_000_000
                || gateway_rate.saturating_mul(seconds) > 1_000_000
            {
                eprintln!("tally-bench chaos: --workers must be at most 32, --rate × --seconds at most 5,000,000 records and --gateway-rate × --seconds at most 1,000,000 voters");
                std::process::exit(2);
            }
            let passed = chaos::chaos(chaos::Options {
                seconds,
                seed: number("--seed", 1) as u64,
                workers,
                rate,
                gateway_rate,
                quiet_timeout: Duration::from_secs(number("--quiet-timeout-s", 300) as u64),
                sabotage: match args.iter().position(|a| a == "--sabotage") {
                    None => Vec::new(),
                    Some(at) => match args.get(at + 1).map(|modes| chaos::Sabotage::parse(modes)) {
                        Some(Ok(modes)) => modes,
                        Some(Err(error)) => {
                            eprintln!("tally-bench chaos: {error}");
                            std::process::exit(2);
                        }
                        None => usage(),
                    },
                },
            })
            .await;
            std::process::exit(if passed { 0 } else { 1 });
        }
        Some("scale") => {
            let (shards, workers, seed) = (
                number("--shards", 334),
                number("--workers", 40),
                number("--seed", 1) as u64,
            );
            // A worker is lost and another stopped: three are the least
            // that leave one to converge.
            if !(3..=1_000).contains(&workers) || shards > 10_000 {
                eprintln!("tally-bench scale: --workers must be 3 to 1,000 (one is lost and one stopped) and --shards at most 10,000");
                std::process::exit(2);
            }
            // The model runs on a paused clock of its own runtime.
            let (events, _) = std::thread::spawn(move || scale::scale(shards, workers, seed))
                .join()
                .expect("the scale model");
            if let Some(stuck) = events
                .iter()
                .find(|event| event.event.contains("NOT converged"))
            {
                eprintln!("tally-bench scale: did not converge: {}", stuck.event);
                std::process::exit(1);
            }
        }
        Some("recount") => {
            recount::recount(
                number("--votes", 1_000_000),
                number("--segments", 16) as u32,
                number("--concurrency", 8),
            )
            .await
        }
        Some("gateway") => {
            gateway::gateway(
                number("--votes", 50_000),
                number("--concurrency", 64),
                number("--clients", 1_000),
            )
            .await;
        }
        _ => usage(),
    }
}

/// The nearest-rank percentile of sorted values (`quantile` in 0..=1):
/// the smallest value with at least that share of the values at or below
/// it; NaN when there is none. Every figure of the benchmarks uses it.
pub fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * quantile).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}
