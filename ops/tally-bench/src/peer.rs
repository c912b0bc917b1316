//! `peer [--peer-bin PATH] [--records N] [--runs N]`: Tally and a peer
//! consumer in one run, on one emulator, so that the machine's drift
//! between days does not enter the ratios.
//!
//! The peer is `ruststream-kinesis` 0.7.1 with its `DynamoDB` lease store,
//! run as the program `benches/peer_drain.rs` (a dev-dependency of this
//! crate, never of the product; `ops/bench` builds it and passes its path;
//! `TALLY_PEER_BIN` works too). In turn, on ministack:
//! - drain: `tally tail` and then the peer drain the same pre-loaded 4-shard
//!   stream (N records, default 100,000), each with a processor that only
//!   checkpoints each batch; records/s, CPU seconds per 100,000 records,
//!   peak memory, start-up (spawn to first record);
//! - failover: 2 workers of each on a fresh 4-shard stream with a record
//!   into every shard every 50 ms; the one holding shards is killed
//!   (SIGKILL) and the time until the survivor delivers every shard it held
//!   is taken, median of `--runs` (default 3);
//! - idle lease-table requests: 2 idle workers of each at 4 shards, at the
//!   same time, for 60 s after 10 s of settling, each pair's `DynamoDB`
//!   requests counted by its own counting proxy in front of the emulator
//!   (the peer has no request metrics, so both are counted from outside).
//!
//! Prints both and the ratio tally/peer for each figure. A figure that
//! could not be measured is "n/a" with the reason, never a guess.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_testkit::emulators::{create_stream, sdk_config, unique_name};

use crate::{
    all_resumed_at, cpu_and_peak, deliveries, drain_tally, failover_run, figure, not_measured,
    now_ms, preload, shards_delivered_after, signal, spawn_ticker, summary, Drained, Figure, Stack,
};

/// The peer's name in tables.
pub const PEER_NAME: &str = "ruststream-kinesis";

/// The peer program: `--peer-bin PATH`, else `TALLY_PEER_BIN`.
pub fn peer_bin(args: &[String]) -> Option<PathBuf> {
    let flag = args.iter().position(|arg| arg == "--peer-bin").map(|at| {
        args.get(at + 1).cloned().unwrap_or_else(|| {
            eprintln!("tally-bench: --peer-bin needs the path of the peer_drain program");
            std::process::exit(2);
        })
    });
    flag.or_else(|| std::env::var("TALLY_PEER_BIN").ok())
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

/// A value for a table: grouped thousands, or 1 to 3 decimals.
pub fn amount(value: f64) -> String {
    if !value.is_finite() {
        "n/a".into()
    } else if value.abs() >= 1000.0 {
        let digits = format!("{:.0}", value.abs());
        let mut grouped = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        format!("{}{grouped}", if value < 0.0 { "-" } else { "" })
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// Creates the peer's lease table: a string partition key `lease_key`,
/// on-demand, as the crate documents.
async fn create_lease_table(dynamodb: &aws_sdk_dynamodb::Client, table: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        TableStatus,
    };
    dynamodb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("lease_key")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("lease_key")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create the peer's lease table");
    for _ in 0..100 {
        let described = dynamodb.describe_table().table_name(table).send().await;
        let status = described
            .ok()
            .and_then(|d| d.table().and_then(|t| t.table_status().cloned()));
        if status == Some(TableStatus::Active) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the peer's lease table {table} is not active");
}

/// A peer process on the stack's emulator; its progress lines go to
/// `<dir>/<name>.out`, its log to `<dir>/<name>.log`.
fn spawn_peer(
    stack: &Stack,
    bin: &Path,
    name: &str,
    stream: &str,
    table: &str,
    extra: &[&str],
) -> Child {
    Command::new(bin)
        .args(["--endpoint", &stack.endpoint, "--stream", stream])
        .args(["--lease-table", table, "--owner", name])
        .args(extra)
        .stdout(std::fs::File::create(stack.dir.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(stack.dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start the peer {}: {e}", bin.display()))
}

/// The peer's progress lines: (uptime ms, records handled).
fn progress(path: &Path) -> Vec<(u64, u64)> {
    deliveries(path)
        .iter()
        .filter(|line| line.get("event").is_none())
        .filter_map(|line| Some((line["uptime_ms"].as_u64()?, line["records"].as_u64()?)))
        .collect()
}

/// The peer drains the pre-loaded `stream` from its horizon, with its own
/// lease table, progress every 100 ms.
pub(crate) async fn drain_peer(stack: &Stack, bin: &Path, stream: &str, records: usize) -> Drained {
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk_config(&stack.endpoint).await);
    let table = unique_name("peer-leases");
    create_lease_table(&dynamodb, &table).await;
    let name = unique_name("peer-drain");
    let records_arg = records.to_string();
    let mut peer = spawn_peer(
        stack,
        bin,
        &name,
        stream,
        &table,
        &["--records", &records_arg, "--progress-ms", "100"],
    );
    let out = stack.dir.join(format!("{name}.out"));
    let deadline = Instant::now() + Duration::from_secs(600);
    let (first_ms, done_ms) = loop {
        let lines = progress(&out);
        let first = lines.iter().find(|(_, handled)| *handled > 0);
        let done = lines.iter().find(|(_, handled)| *handled >= records as u64);
        if let (Some(first), Some(done)) = (first, done) {
            break (first.0, done.0);
        }
        assert!(
            Instant::now() < deadline && peer.try_wait().unwrap().is_none(),
            "the peer did not drain the stream; its output {} and log beside it",
            out.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (cpu, peak_kib) = cpu_and_peak(peer.id());
    signal(&peer, "-TERM");
    let _ = peer.wait();
    Drained::new(records, first_ms, done_ms, cpu, peak_kib)
}

/// One failover run of the peer: 2 peers on a fresh 4-shard stream, the
/// one holding shards is killed, and the seconds until the survivor
/// delivers every shard it held. The peer does not balance (the first
/// worker may keep all 4 shards), so the victim is whichever holds most.
async fn peer_failover_run(stack: &Stack, bin: &Path) -> Result<f64, String> {
    let stream = unique_name("peer-failover");
    create_stream(&stack.kinesis, &stream, 4).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk_config(&stack.endpoint).await);
    let table = unique_name("peer-leases");
    create_lease_table(&dynamodb, &table).await;
    let names = [unique_name("peer-a"), unique_name("peer-b")];
    let outputs: Vec<PathBuf> = names
        .iter()
        .map(|name| stack.dir.join(format!("{name}.jsonl")))
        .collect();
    let mut peers: Vec<Child> = names
        .iter()
        .zip(&outputs)
        .map(|(name, output)| {
            spawn_peer(
                stack,
                bin,
                name,
                &stream,
                &table,
                &["--output", output.to_str().unwrap()],
            )
        })
        .collect();
    let ticker = spawn_ticker(&stack.kinesis, &stream).await;
    let result = async {
        // Every shard delivered by one of the two in the last second.
        let deadline = Instant::now() + Duration::from_secs(60);
        let held = loop {
            let since = now_ms() - 1000;
            let held: Vec<BTreeSet<String>> = outputs
                .iter()
                .map(|p| shards_delivered_after(p, since))
                .collect();
            if held.iter().map(BTreeSet::len).sum::<usize>() >= 4 {
                break held;
            }
            if Instant::now() > deadline {
                return Err("the peers did not read every shard within 60 s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let victim = usize::from(held[1].len() > held[0].len());
        let survivor = 1 - victim;
        let stopped_at = now_ms();
        signal(&peers[victim], "-KILL");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(at) = all_resumed_at(&outputs[survivor], &held[victim], stopped_at) {
                return Ok((at - stopped_at) as f64 / 1000.0);
            }
            if Instant::now() > deadline {
                return Err("the survivor did not resume the killed peer's shards in 90 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .await;
    ticker.abort();
    for peer in &mut peers {
        if peer.try_wait().ok().flatten().is_none() {
            signal(peer, "-TERM");
        }
        let _ = peer.wait();
    }
    result
}

/// An HTTP proxy in front of the emulator that counts the requests it
/// forwards, by `X-Amz-Target` operation.
struct CountingProxy {
    url: String,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    total: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    async fn start(upstream: &str) -> Self {
        use axum::body::{to_bytes, Body};
        use axum::extract::Request;
        use axum::http::{header, StatusCode};
        use axum::response::Response;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let total = Arc::new(AtomicU64::new(0));
        let client = reqwest::Client::new();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let forward = {
            let counts = Arc::clone(&counts);
            let total = Arc::clone(&total);
            move |request: Request| {
                let (counts, total, client, upstream) = (
                    Arc::clone(&counts),
                    Arc::clone(&total),
                    client.clone(),
                    upstream.clone(),
                );
                async move {
                    let (parts, body) = request.into_parts();
                    let operation = parts
                        .headers
                        .get("x-amz-target")
                        .and_then(|v| v.to_str().ok())
                        .map_or("other", |v| v.rsplit('.').next().unwrap_or(v))
                        .to_owned();
                    total.fetch_add(1, Ordering::Relaxed);
                    *counts.lock().unwrap().entry(operation).or_default() += 1;
                    let body = to_bytes(body, 64 << 20).await.unwrap_or_default();
                    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    let mut outgoing = client.request(parts.method, format!("{upstream}{path}"));
                    for (name, value) in &parts.headers {
                        if name != header::HOST && name != header::CONTENT_LENGTH {
                            outgoing = outgoing.header(name, value);
                        }
                    }
                    let answer = match outgoing.body(body).send().await {
                        Ok(answer) => answer,
                        Err(_) => {
                            return Response::builder()
                                .status(StatusCode::BAD_GATEWAY)
                                .body(Body::empty())
                                .unwrap();
                        }
                    };
                    let mut response = Response::builder().status(answer.status());
                    for (name, value) in answer.headers() {
                        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
                            response = response.header(name, value);
                        }
                    }
                    let bytes = answer.bytes().await.unwrap_or_default();
                    response.body(Body::from(bytes)).unwrap()
                }
            }
        };
        let app = axum::Router::new().fallback(forward);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            counts,
            total,
            task,
        }
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn by_operation(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Idle lease-table requests per worker per minute of 2 Tally workers and
/// 2 peers, each pair on its own idle 4-shard stream, measured in the same
/// 60-second window through two counting proxies.
async fn idle_both(stack: &Stack, bin: &Path) -> (f64, f64, String) {
    let tally_proxy = CountingProxy::start(&stack.endpoint).await;
    let peer_proxy = CountingProxy::start(&stack.endpoint).await;
    let tally_stream = unique_name("idle-tally");
    let peer_stream = unique_name("idle-peer");
    create_stream(&stack.kinesis, &tally_stream, 4).await;
    create_stream(&stack.kinesis, &peer_stream, 4).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk_config(&stack.endpoint).await);
    let table = unique_name("peer-leases");
    create_lease_table(&dynamodb, &table).await;
    let app = unique_name("app");
    let mut workers: Vec<Child> = ["a", "b"]
        .iter()
        .map(|id| {
            let log = std::fs::File::create(stack.log(&app, id)).unwrap();
            tally_testkit::process::tally(&stack.tally)
                .args(["--stream", &tally_stream, "--app", &app, "tail"])
                .args(["--worker-id", id, "--quiet"])
                .env("AWS_ENDPOINT_URL", &stack.endpoint)
                .env("AWS_ENDPOINT_URL_DYNAMODB", &tally_proxy.url)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start tally")
        })
        .collect();
    for name in [unique_name("peer-idle-a"), unique_name("peer-idle-b")] {
        workers.push(spawn_peer(
            stack,
            bin,
            &name,
            &peer_stream,
            &table,
            &[
                "--dynamodb-endpoint",
                &peer_proxy.url,
                "--progress-ms",
                "60000",
            ],
        ));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (tally_start, peer_start, started) =
        (tally_proxy.total(), peer_proxy.total(), Instant::now());
    let tally_ops_start = tally_proxy.by_operation();
    let peer_ops_start = peer_proxy.by_operation();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let (tally_end, peer_end) = (tally_proxy.total(), peer_proxy.total());
    let delta = |end: BTreeMap<String, u64>, start: &BTreeMap<String, u64>| {
        end.iter()
            .map(|(op, n)| format!("{op} {}", n - start.get(op).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let detail = format!(
        "in the window: tally {}; peer {}",
        delta(tally_proxy.by_operation(), &tally_ops_start),
        delta(peer_proxy.by_operation(), &peer_ops_start)
    );
    for worker in &mut workers {
        signal(worker, "-TERM");
        let _ = worker.wait();
    }
    let per_worker = |requests: u64| requests as f64 / 2.0 / minutes;
    (
        per_worker(tally_end - tally_start),
        per_worker(peer_end - peer_start),
        detail,
    )
}

/// The median of the peer's successful failover runs, or why there is none;
/// and a note saying how many runs failed, if any did.
fn peer_failover_median(runs: &[Result<f64, String>]) -> (Result<f64, String>, Option<String>) {
    let mut seconds: Vec<f64> = runs
        .iter()
        .filter_map(|run| run.as_ref().ok().copied())
        .collect();
    let failures: Vec<&String> = runs.iter().filter_map(|run| run.as_ref().err()).collect();
    let Some(first_failure) = failures.first() else {
        return (Ok(summary(&mut seconds).0), None);
    };
    if seconds.is_empty() {
        let reason = format!(
            "all {} {PEER_NAME} failover runs failed; the first: {first_failure}",
            runs.len()
        );
        return (Err(reason), None);
    }
    let note = format!(
        "{PEER_NAME} failover: {} of {} runs failed, the median is of the other {}; the first failure: {first_failure}",
        failures.len(),
        runs.len(),
        seconds.len()
    );
    (Ok(summary(&mut seconds).0), Some(note))
}

/// One row of the comparison: the figure for each and their ratio.
struct Row {
    /// The report's keys of Tally's figure, the peer's and the ratio.
    keys: [&'static str; 3],
    label: &'static str,
    unit: &'static str,
    tally: f64,
    peer: Result<f64, String>,
    lower_is_better: bool,
}

/// Runs the comparison; the figures of the report (`all`).
pub async fn peer(bin: Option<&Path>, records: usize, runs: usize) -> Vec<Figure> {
    let Some(bin) = bin else {
        let reason =
            "no peer program (ops/bench builds benches/peer_drain.rs and passes --peer-bin)";
        eprintln!("peer: {reason}");
        return vec![not_measured(
            "peer_drain_records_per_s",
            format!("{PEER_NAME} drain records/s"),
            "/s",
            reason,
        )];
    };
    let stack = Stack::new().await;
    let stream = unique_name("drain");
    create_stream(&stack.kinesis, &stream, 4).await;
    preload(&stack.kinesis, &stream, records).await;
    eprintln!("peer: tally drains");
    let tally_drain = drain_tally(&stack, &stream, records).await;
    eprintln!("peer: {PEER_NAME} drains the same stream");
    let peer_drain = drain_peer(&stack, bin, &stream, records).await;

    let mut tally_kills = Vec::new();
    let mut peer_runs: Vec<Result<f64, String>> = Vec::new();
    for run in 0..runs {
        let tally_seconds = failover_run(&stack, true).await;
        let peer_run = peer_failover_run(&stack, bin).await;
        eprintln!(
            "peer: failover run {}/{runs}: tally {tally_seconds:.2} s, {PEER_NAME} {}",
            run + 1,
            match &peer_run {
                Ok(seconds) => format!("{seconds:.2} s"),
                Err(reason) => format!("failed: {reason}"),
            }
        );
        tally_kills.push(tally_seconds);
        peer_runs.push(peer_run);
    }
    let (tally_kill, _) = summary(&mut tally_kills);
    let (peer_kill, peer_failover_note) = peer_failover_median(&peer_runs);
    eprintln!("peer: idle lease-table requests, both at once (70 s)");
    let (tally_idle, peer_idle, idle_detail) = idle_both(&stack, bin).await;

    let rows = [
        Row {
            keys: [
                "vs_peer_tally_drain_records_per_s",
                "peer_drain_records_per_s",
                "vs_peer_ratio_drain_records_per_s",
            ],
            label: "drain records/s",
            unit: "/s",
            tally: tally_drain.records_per_s,
            peer: Ok(peer_drain.records_per_s),
            lower_is_better: false,
        },
        Row {
            keys: [
                "vs_peer_tally_drain_cpu_s_per_100k",
                "peer_drain_cpu_s_per_100k",
                "vs_peer_ratio_drain_cpu_s_per_100k",
            ],
            label: "drain CPU s per 100,000 records",
            unit: "s",
            tally: tally_drain.cpu_s_per_100k,
            peer: Ok(peer_drain.cpu_s_per_100k),
            lower_is_better: true,
        },
        Row {
            keys: [
                "vs_peer_tally_drain_peak_mib",
                "peer_drain_peak_mib",
                "vs_peer_ratio_drain_peak_mib",
            ],
            label: "drain peak memory (VmHWM)",
            unit: "MiB",
            tally: tally_drain.peak_mib,
            peer: Ok(peer_drain.peak_mib),
            lower_is_better: true,
        },
        Row {
            keys: [
                "vs_peer_tally_startup_s",
                "peer_startup_s",
                "vs_peer_ratio_startup_s",
            ],
            label: "start-up, spawn to first record",
            unit: "s",
            tally: tally_drain.startup_s,
            peer: Ok(peer_drain.startup_s),
            lower_is_better: true,
        },
        Row {
            keys: [
                "vs_peer_tally_failover_kill_median_s",
                "peer_failover_kill_median_s",
                "vs_peer_ratio_failover_kill_median_s",
            ],
            label: "failover after SIGKILL, median",
            unit: "s",
            tally: tally_kill,
            peer: peer_kill,
            lower_is_better: true,
        },
        Row {
            keys: [
                "vs_peer_tally_idle_lease_requests_4",
                "peer_idle_lease_requests_4",
                "vs_peer_ratio_idle_lease_requests_4",
            ],
            label: "idle lease requests/worker/min, 4 sh",
            unit: "/min",
            tally: tally_idle,
            peer: Ok(peer_idle),
            lower_is_better: true,
        },
    ];
    println!("settings: ministack, 4 shards; drain: 1 worker each, {records} records pre-loaded once, tally first, processors that only checkpoint each batch (peer: batches of 10,000, one checkpoint per shard per batch); failover: 2 workers each, a record per shard every 50 ms, {runs} runs; idle: 2 workers each, one 60 s window, requests counted by a proxy; defaults otherwise (tally: renew 600 ms, lease 3000 ms, poll 200 ms; {PEER_NAME} 0.7.1: lease 10 s, renew 3 s, shard sync 10 s, poll 1 s)");
    println!(
        "{:<44} {:>12} {:>20} {:>11}",
        "figure", "tally", PEER_NAME, "tally/peer"
    );
    let mut figures = Vec::new();
    for row in rows {
        let (peer_text, ratio_text) = match &row.peer {
            Ok(peer) => (
                format!("{}{}", amount(*peer), row.unit),
                format!("{:.2}", row.tally / peer),
            ),
            Err(_) => ("n/a".to_owned(), "n/a".to_owned()),
        };
        println!(
            "{:<44} {:>12} {:>20} {:>11}  {}",
            row.label,
            format!("{}{}", amount(row.tally), row.unit),
            peer_text,
            ratio_text,
            if row.lower_is_better {
                "(lower is better)"
            } else {
                "(higher is better)"
            }
        );
        if let Err(reason) = &row.peer {
            println!("    n/a: {reason}");
        }
        figures.push(figure(
            row.keys[0],
            format!("tally, peer run: {}", row.label),
            row.tally,
            row.unit,
        ));
        match &row.peer {
            Ok(peer) => {
                figures.push(figure(
                    row.keys[1],
                    format!("{PEER_NAME} {}", row.label),
                    *peer,
                    row.unit,
                ));
                figures.push(figure(
                    row.keys[2],
                    format!("tally/peer: {}", row.label),
                    row.tally / peer,
                    "x",
                ));
            }
            Err(reason) => {
                figures.push(not_measured(
                    row.keys[1],
                    format!("{PEER_NAME} {}", row.label),
                    row.unit,
                    reason.clone(),
                ));
                figures.push(not_measured(
                    row.keys[2],
                    format!("tally/peer: {}", row.label),
                    "x",
                    reason.clone(),
                ));
            }
        }
    }
    if let Some(note) = peer_failover_note {
        println!("({note})");
    }
    println!("({idle_detail})");
    println!("(the peer is killed while holding all the shards it took, often all 4; a Tally worker while holding 2 of 4 after balancing)");
    figures
}
