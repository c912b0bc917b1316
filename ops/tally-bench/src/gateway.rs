//! `gateway [--votes N] [--concurrency C] [--clients K]`: a `tally gateway`
//! process on the local stack. A load client posts N votes (distinct
//! voters, C in flight): accepted votes per second and the vote endpoint's
//! p50/p99 latency. Then K results streams are opened on one poll and its
//! counters are bumped 5 times: the time from the counter write to each
//! client's event, median and p99, and the gateway's resident memory per
//! stream. Last, cached results requests: how many one gateway answers per
//! second and per CPU second, as 304s (a matching `If-None-Match`, what a
//! CDN's revalidation costs) and as 200s, and the counter reads behind
//! them all.
//!
//! The design point is 20,000 streams per process; this machine allows a
//! process 20,000 open files (a hard limit), and both the gateway and the
//! load client hold one per stream, so `ops/bench` opens [`SSE_CLIENTS`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use tally_gateway::auth::{AuthConfig, KeySource, Verifier};
use tally_testkit::emulators::{sdk_config, unique_name};

use crate::{figure, percentile, Figure, Stack};

/// Mints and checks tokens the way a gateway with the local-mode defaults
/// and this HS256 secret does.
pub fn local_verifier(secret: &str) -> Verifier {
    Verifier::new(AuthConfig {
        keys: KeySource::Secret(secret.as_bytes().to_vec()),
        audience: "tally".into(),
        issuer: "tally-local".into(),
        voter_claim: "sub".into(),
        role_claim: "roles".into(),
        admin_role: "admin".into(),
        leeway: Duration::from_secs(5),
    })
    .expect("a valid local auth configuration")
}

/// Streams `ops/bench` opens: as many as the open-file limit of 20,000
/// per process leaves room for (a stream is one socket in the gateway and
/// one in the load client).
pub const SSE_CLIENTS: usize = 19_000;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    crate::status_kib(&status, "VmRSS:")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn gateway(votes: usize, concurrency: usize, clients: usize) -> Vec<Figure> {
    let stack = Stack::new().await;
    let stream = unique_name("votes");
    let app = unique_name("app");
    let prefix = format!("{}-", unique_name("b"));
    let secret = format!("{:032x}", now_nanos());
    let env = |command: &mut std::process::Command| {
        command
            .args([
                "--stream",
                &stream,
                "--app",
                &app,
                "--table-prefix",
                &prefix,
            ])
            .env("AWS_ENDPOINT_URL", &stack.endpoint);
    };
    let mut init = tally_testkit::process::tally(&stack.tally);
    env(&mut init);
    let status = init.args(["init", "--shards", "4"]).status().unwrap();
    assert!(status.success(), "tally init");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(stack.dir.join("gateway.log")).unwrap();
    let mut command = tally_testkit::process::tally(&stack.tally);
    env(&mut command);
    let mut gateway = command
        .arg("gateway")
        .env("TALLY_GATEWAY_ADDR", format!("127.0.0.1:{port}"))
        .env("TALLY_AUTH_SECRET", &secret)
        .env("TALLY_RATE_IP_PER_S", "1000000")
        .env("TALLY_RATE_IP_BURST", "1000000")
        .env("TALLY_MAX_SSE_CLIENTS", (clients * 2).to_string())
        // Every stream comes from 127.0.0.1 here.
        .env("TALLY_MAX_SSE_PER_ADDRESS", (clients * 2).to_string())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tally gateway");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await {
            if response.status() == 200 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the gateway did not get ready; see {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let verifier = local_verifier(&secret);
    let admin = verifier
        .mint("bench-admin", true, Duration::from_secs(3600))
        .unwrap();
    for poll in ["load", "fanout"] {
        let response = http
            .post(format!("{base}/v1/polls"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"poll_id": poll, "question": "Which?", "options": [{"id": "a"}, {"id": "b"}], "open": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }

    // Votes.
    eprintln!("bench: posting {votes} votes, {concurrency} in flight");
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..votes)
            .map(|index| {
                verifier
                    .mint(&format!("voter-{index}"), false, Duration::from_secs(3600))
                    .unwrap()
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let (cpu_before, _) = crate::cpu_and_peak(gateway.id());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, base, tokens, next) = (http.clone(), base.clone(), tokens.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut refused = 0usize;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(token) = tokens.get(index) else {
                    break;
                };
                let sent = Instant::now();
                let response = http
                    .post(format!("{base}/v1/polls/load/votes"))
                    .bearer_auth(token)
                    .json(&serde_json::json!({"option": if index % 2 == 0 { "a" } else { "b" }}))
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status() == 202 => {
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0)
                    }
                    _ => refused += 1,
                }
            }
            (latencies, refused)
        }));
    }
    let mut latencies = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (mut some, other) = task.await.unwrap();
        latencies.append(&mut some);
        refused += other;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, _) = crate::cpu_and_peak(gateway.id());
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let accepted = latencies.len();
    let cpu_per_vote_us = (cpu_after - cpu_before) / accepted.max(1) as f64 * 1e6;

    // Results streams.
    eprintln!("bench: opening {clients} results streams");
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let connected = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::new();
    let rss_before = rss_kib(gateway.id());
    let stream_client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    for _ in 0..clients {
        let (base, sender, connected) = (base.clone(), sender.clone(), connected.clone());
        let (client, opening) = (stream_client.clone(), opening.clone());
        streams.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await.unwrap();
            let mut response = client
                .get(format!("{base}/v1/polls/fanout/results/stream"))
                .send()
                .await
                .expect("open a results stream");
            drop(permit);
            connected.fetch_add(1, Ordering::Relaxed);
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                let at = Instant::now();
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    if let Some(id) = event.lines().find_map(|line| line.strip_prefix("id: ")) {
                        let total = id
                            .split('-')
                            .next()
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(0);
                        let _ = sender.send((total, at));
                    }
                }
            }
        }));
    }
    drop(sender);
    let started = Instant::now();
    while connected.load(Ordering::Relaxed) < clients {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "streams did not connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut first_events = 0;
    while first_events < clients {
        let (total, _) = tokio::time::timeout(Duration::from_secs(30), receiver.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(total, 0);
        first_events += 1;
    }
    let stream_kib = (rss_kib(gateway.id()) - rss_before) / clients as f64;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk_config(&stack.endpoint).await);
    let mut delays = Vec::new();
    for update in 1..=5u64 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        dynamodb
            .update_item()
            .table_name(format!("{prefix}tallies"))
            .key("counter_id", AttributeValue::S("fanout#000".into()))
            .update_expression("SET poll_id = :poll ADD opt_a :one")
            .expression_attribute_values(":poll", AttributeValue::S("fanout".into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .send()
            .await
            .unwrap();
        let written = Instant::now();
        let mut reached = 0;
        while reached < clients {
            let (total, at) = tokio::time::timeout(Duration::from_secs(30), receiver.recv())
                .await
                .expect("every client gets the update")
                .unwrap();
            if total == update {
                delays.push(at.saturating_duration_since(written).as_secs_f64() * 1000.0);
                reached += 1;
            }
        }
    }
    for stream in &streams {
        stream.abort();
    }
    delays.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let counter_reads = || async {
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("tally_gateway_results_reads_total "))
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let reads = counter_reads().await;

    // Cached results: 304s (the tag still matches), then 200s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results_url = format!("{base}/v1/polls/fanout/results");
    let etag = http
        .get(&results_url)
        .send()
        .await
        .unwrap()
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned())
        .expect("an ETag");
    let mut cached = Vec::new();
    for (label, tag) in [("304", Some(etag.clone())), ("200", None)] {
        let (cpu_before, _) = crate::cpu_and_peak(gateway.id());
        let reads_before = counter_reads().await;
        let answered = Arc::new(AtomicUsize::new(0));
        let until = Instant::now() + Duration::from_secs(5);
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (http, url, tag, answered) = (
                    http.clone(),
                    results_url.clone(),
                    tag.clone(),
                    answered.clone(),
                );
                tokio::spawn(async move {
                    while Instant::now() < until {
                        let mut request = http.get(&url);
                        if let Some(tag) = &tag {
                            request = request.header("if-none-match", tag);
                        }
                        if let Ok(response) = request.send().await {
                            let expected = if tag.is_some() { 304 } else { 200 };
                            if response.status() == expected {
                                let _ = response.bytes().await;
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        let started = Instant::now();
        for task in tasks {
            task.await.unwrap();
        }
        let seconds = started.elapsed().as_secs_f64();
        let (cpu_after, _) = crate::cpu_and_peak(gateway.id());
        let count = answered.load(Ordering::Relaxed) as f64;
        cached.push((
            label,
            count / seconds,
            count / (cpu_after - cpu_before).max(1e-9),
            counter_reads().await - reads_before,
        ));
    }
    let _ = gateway.kill();
    let _ = gateway.wait();

    println!("gateway benchmark (one gateway process and the load client on this machine, ministack behind)");
    println!("  {:<52} {:>12}", "votes posted", votes);
    println!("  {:<52} {:>12}", "votes accepted (202)", accepted);
    println!("  {:<52} {:>12}", "votes refused or failed", refused);
    println!(
        "  {:<52} {:>12.0}",
        "accepted votes per second",
        accepted as f64 / elapsed
    );
    println!(
        "  {:<52} {:>12.1}",
        "gateway CPU per accepted vote (µs)", cpu_per_vote_us
    );
    println!(
        "  {:<52} {:>12.1}",
        "vote latency p50 (ms)",
        percentile(&latencies, 0.50)
    );
    println!(
        "  {:<52} {:>12.1}",
        "vote latency p99 (ms)",
        percentile(&latencies, 0.99)
    );
    println!("  {:<52} {:>12}", "results streams (SSE clients)", clients);
    println!(
        "  {:<52} {:>12.1}",
        "update to every client, median (ms)",
        percentile(&delays, 0.50)
    );
    println!(
        "  {:<52} {:>12.1}",
        "update to every client, p99 (ms)",
        percentile(&delays, 0.99)
    );
    println!(
        "  {:<52} {:>12.0}",
        "counter reads by the gateway for all of it", reads
    );
    println!(
        "  {:<52} {:>12.1}",
        "gateway resident memory per stream (KiB)", stream_kib
    );
    for (label, per_second, per_cpu_second, reads) in &cached {
        println!(
            "  {:<52} {:>12.0}",
            format!("cached results answered {label} per second"),
            per_second
        );
        println!(
            "  {:<52} {:>12.0}",
            format!("cached results answered {label} per gateway CPU second"),
            per_cpu_second
        );
        println!(
            "  {:<52} {:>12.0}",
            format!("counter reads behind those {label}s"),
            reads
        );
    }
    println!(
        "  {:<52} {:>12.1}",
        "p99 update time / results interval (250 ms)",
        percentile(&delays, 0.99) / 250.0
    );
    vec![
        figure(
            "gateway_votes_per_s",
            "gateway accepted votes/s",
            accepted as f64 / elapsed,
            "/s",
        ),
        figure(
            "gateway_cpu_us_per_vote",
            "gateway CPU per accepted vote",
            cpu_per_vote_us,
            "µs",
        ),
        figure(
            "gateway_p50_ms",
            "gateway vote latency p50",
            percentile(&latencies, 0.50),
            "ms",
        ),
        figure(
            "gateway_p99_ms",
            "gateway vote latency p99",
            percentile(&latencies, 0.99),
            "ms",
        ),
        figure(
            "gateway_refused",
            "gateway votes refused or failed",
            refused as f64,
            "",
        ),
        figure(
            "sse_update_median_ms",
            format!("SSE update to {clients} clients, median"),
            percentile(&delays, 0.50),
            "ms",
        ),
        figure(
            "sse_update_p99_ms",
            format!("SSE update to {clients} clients, p99"),
            percentile(&delays, 0.99),
            "ms",
        ),
        figure(
            "sse_stream_kib",
            "gateway memory per SSE stream",
            stream_kib,
            "KiB",
        ),
        figure(
            "results_304_per_cpu_s",
            "cached results 304s per gateway CPU second",
            cached[0].2,
            "/s",
        ),
        figure(
            "results_200_per_cpu_s",
            "cached results 200s per gateway CPU second",
            cached[1].2,
            "/s",
        ),
    ]
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
