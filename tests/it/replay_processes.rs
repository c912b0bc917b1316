//! `tally replay --from stream` next to a live run, with real `tally`
//! processes on ministack: a polling `tally worker` counts a steady load
//! while a replay reads the same stream through its own fan-out consumer
//! (the replay's default). The live worker's `GetRecords` calls a second and
//! its counting rate stay what they were before the replay, its counts end
//! exact, the replay agrees with the live tallies, and the replay's stream
//! consumer is gone when it ends. The replay itself makes no `GetRecords`
//! call through its worker (its report says so).

use crate::local_stack;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use local_stack::{eventually, output_text, put_votes, Process, Stack};
use tally_producer::{KinesisSink, Producer, ProducerConfig, VoteBuilder};
use tally_store::prelude::*;
use tally_testkit::process::last_metrics;

/// Votes a second of the steady load.
const LOAD_PER_SECOND: u64 = 50;

fn number(metrics: &serde_json::Value, name: &str) -> f64 {
    metrics[name].as_f64().unwrap_or(0.0)
}

/// `name` a second between two metrics lines.
fn per_second(from: &serde_json::Value, to: &serde_json::Value, name: &str) -> f64 {
    let millis = number(to, "uptime_ms") - number(from, "uptime_ms");
    assert!(millis > 0.0, "two distinct metrics lines: {from} {to}");
    (number(to, name) - number(from, name)) * 1000.0 / millis
}

/// Waits for the next metrics line after the current one.
async fn next_metrics(log: &std::path::Path) -> serde_json::Value {
    let before = number(&last_metrics(log), "uptime_ms");
    tally_testkit::process::wait_for_metrics(
        log,
        Duration::from_secs(60),
        "a new metrics line (the worker stopped logging?)",
        |now| number(now, "uptime_ms") > before,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_replay_during_a_live_run_leaves_the_live_get_records_and_throughput_unchanged() {
    let stack = Stack::new().await;
    let store = stack.store.clone();
    stack.create_open_polls(&["fixed", "steady"]).await;
    let sink = Arc::new(KinesisSink::new(stack.kinesis.clone(), &stack.stream));
    let producer = Arc::new(Producer::start(sink, ProducerConfig::default()));

    // The replayed poll: all its votes are in before the replay starts.
    let fixed_votes = (0..200).map(|index| {
        let option = if index % 4 == 0 { "a" } else { "b" };
        VoteBuilder::new(format!("f{index}"), "fixed", option, format!("fv{index}"))
    });
    put_votes(&producer, fixed_votes).await;

    // The live application: one polling worker, metrics every 500 ms.
    let log = stack.dir.join("live.log");
    let _live = Process(
        stack
            .tally()
            .args(["worker", "--worker-id", "live"])
            .env("TALLY_CONSUMER_MODE", "polling")
            .env("TALLY_METRICS_INTERVAL_MS", "500")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tally worker"),
    );

    // The steady load on another poll, until told to stop.
    let stop_load = Arc::new(AtomicBool::new(false));
    let sent_a = Arc::new(AtomicU64::new(0));
    let sent_b = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn({
        let (producer, stop_load) = (producer.clone(), stop_load.clone());
        let (sent_a, sent_b) = (sent_a.clone(), sent_b.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut index = 0u64;
            while !stop_load.load(Ordering::Relaxed) {
                tick.tick().await;
                let batch = index..index + LOAD_PER_SECOND / 10;
                index = batch.end;
                let votes = batch.map(|vote| {
                    let option = if vote % 3 == 0 { "a" } else { "b" };
                    VoteBuilder::new(format!("s{vote}"), "steady", option, format!("sv{vote}"))
                });
                put_votes(&producer, votes).await;
                sent_a.store(index.div_ceil(3), Ordering::Relaxed);
                sent_b.store(index - index.div_ceil(3), Ordering::Relaxed);
            }
        }
    });

    let fixed = store.get_poll("fixed").await.unwrap().unwrap();
    eventually(
        Duration::from_secs(60),
        "the live worker counts the fixed poll",
        || {
            let (store, fixed) = (store.clone(), fixed.clone());
            async move {
                let counts = store.counts(&fixed).await.unwrap();
                counts.by_option.get("a") == Some(&50) && counts.by_option.get("b") == Some(&150)
            }
        },
    )
    .await;

    // Before the replay: the live worker's rates over a few seconds.
    let before_start = next_metrics(&log).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before_end = next_metrics(&log).await;

    // The replay, in its default consumer mode (fan-out).
    let mut replay = stack.replay("fixed", "stream");
    let output = tokio::task::spawn_blocking(move || replay.output().unwrap())
        .await
        .unwrap();
    let during_end = next_metrics(&log).await;
    let replay_text = output_text(&output);
    assert!(output.status.success(), "replay: {replay_text}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["equal"], true, "{report}");
    assert_eq!(report["replay"]["a"], 50, "{report}");
    assert_eq!(report["replay"]["b"], 150, "{report}");
    // The replay read through its own subscriptions, never GetRecords.
    let reads = &report["reads"];
    assert_eq!(reads["consumer_mode"], "fan-out", "{report}");
    assert_eq!(reads["get_records"], 0, "{report}");
    assert!(reads["subscriptions"].as_u64().unwrap() >= 2, "{report}");
    assert!(
        replay_text.contains("deregistered"),
        "the replay deregisters its consumer: {replay_text}"
    );

    // The live application's reads and counting rate, before and during.
    let calls_before = per_second(&before_start, &before_end, "tally_lease_get_records_total");
    let calls_during = per_second(&before_end, &during_end, "tally_lease_get_records_total");
    let counted_before = per_second(&before_start, &before_end, "tally_votes_counted_total");
    let counted_during = per_second(&before_end, &during_end, "tally_votes_counted_total");
    let figures = format!(
        "GetRecords/s before {calls_before:.2}, during {calls_during:.2}; votes/s before {counted_before:.1}, during {counted_during:.1}"
    );
    eprintln!("{figures}; replay reads {reads}");
    assert!(calls_before > 0.0, "{figures}");
    assert!(calls_during <= calls_before * 1.2, "{figures}");
    assert!(calls_during >= calls_before * 0.8, "{figures}");
    assert!(
        counted_during >= counted_before * 0.7 && counted_during <= counted_before * 1.3,
        "{figures}"
    );
    assert_eq!(
        number(&during_end, "tally_lease_subscriptions_total"),
        0.0,
        "the live worker polls: {during_end}"
    );

    // The replay's consumer is gone; the live counts end exact.
    let shown = tally_testkit::process::tally(env!("CARGO_BIN_EXE_tally"))
        .args(["--stream", &stack.stream, "--app", &stack.replay_app()])
        .args(["consumer", "show"])
        .env("AWS_ENDPOINT_URL", local_stack::endpoint())
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(
        shown["registered"] == false || shown["status"] == "DELETING",
        "{shown}"
    );
    stop_load.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let steady = store.get_poll("steady").await.unwrap().unwrap();
    let (want_a, want_b) = (
        sent_a.load(Ordering::Relaxed),
        sent_b.load(Ordering::Relaxed),
    );
    assert!(want_a + want_b > 0);
    eventually(
        Duration::from_secs(60),
        "the live counts equal the load",
        || {
            let (store, steady) = (store.clone(), steady.clone());
            async move {
                let counts = store.counts(&steady).await.unwrap();
                counts.by_option.get("a").copied().unwrap_or(0) == want_a
                    && counts.by_option.get("b").copied().unwrap_or(0) == want_b
            }
        },
    )
    .await;
    let fixed_counts = store.counts(&fixed).await.unwrap();
    assert_eq!(fixed_counts.by_option.get("a"), Some(&50));
    assert_eq!(fixed_counts.by_option.get("b"), Some(&150));
}
