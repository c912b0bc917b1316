//! `consumer-modes [--records N] [--seconds S]`: polling (`GetRecords`
//! every 200 ms) against enhanced fan-out (`SubscribeToShard`) in one run,
//! on the same emulator (ministack), with real `tally tail` processes:
//! - latency: a worker in each mode follows a fresh 4-shard stream while
//!   100 records a second, each holding the time it was put, are put for S
//!   seconds; from its `--output` lines (`delivered_ms`, stamped when the
//!   processor is handed the record), the time from `PutRecords` to the
//!   processor, median and p99;
//! - drain: a worker in each mode drains N pre-loaded records (a processor
//!   that only checkpoints): records per second and CPU seconds per 100,000
//!   records;
//! - the ratios fan-out/polling.
//!
//! What the emulator bounds: the emulator decides when a subscription's
//! event is pushed (ministack every few seconds on an idle shard, and under
//! this load within about the same 200 ms as a poll; kinesis-mock about once
//! a second), and how many records one event holds; AWS pushes a record
//! about 70 ms after it was put. So the fan-out latency and drain rate here
//! are the emulator's, not what fan-out gives on AWS; polling's latency
//! (half the 200 ms interval plus a call, on average) is Tally's own.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tally_testkit::emulators::{create_stream, unique_name};

use crate::{deliveries, figure, metrics_lines, now_ms, signal, Drained, Figure, Stack};

/// Records put a second in the latency run (10 every 100 ms).
const RATE_PER_S: usize = 100;

/// What the printed note and the design doc say about the emulator.
const EMULATOR_NOTE: &str = "on ministack, which decides when a fan-out event is pushed (every few seconds on an idle shard; kinesis-mock about once a second) and how many records it holds: the fan-out latency and drain rate are the emulator's, not AWS's (about 70 ms from the put); polling's latency is Tally's own (a 200 ms interval)";

/// Latencies of one mode, milliseconds: (median, p99, records).
struct Latency {
    median_ms: f64,
    p99_ms: f64,
    records: usize,
}

/// Waits until the worker logged that it holds every shard (and, in fan-out
/// mode, opened a subscription on each).
async fn wait_ready(log: &std::path::Path, shards: i64, fan_out: bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = metrics_lines(log).last().is_some_and(|(_, metrics)| {
            let held = metrics["tally_lease_leases_held"].as_i64().unwrap_or(0);
            let subscribed = metrics["tally_lease_subscriptions_total"]
                .as_i64()
                .unwrap_or(0);
            held >= shards && (!fan_out || subscribed >= shards)
        });
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not take every shard; log {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One `tally tail` in `mode` follows a fresh stream under a steady load.
async fn latency(stack: &Stack, mode: &str, seconds: u64) -> Latency {
    let stream = unique_name("latency");
    create_stream(&stack.kinesis, &stream, 4).await;
    let app = unique_name("app");
    let output = stack.dir.join(format!("{app}-records.jsonl"));
    let output_flag = output.to_string_lossy().into_owned();
    let mut worker = stack.worker(
        &stream,
        &app,
        "latency",
        &[
            "--consumer-mode",
            mode,
            "--output",
            &output_flag,
            "--metrics-interval-ms",
            "200",
        ],
    );
    wait_ready(&stack.log(&app, "latency"), 4, mode == "fan-out").await;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut put = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        let sent_ms = now_ms();
        let entries: Vec<PutRecordsRequestEntry> = (put..put + RATE_PER_S / 10)
            .map(|index| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{}", index % 997))
                    .data(Blob::new(sent_ms.to_string()))
                    .build()
                    .unwrap()
            })
            .collect();
        tally_testkit::emulators::put_records(&stack.kinesis, &stream, entries).await;
        put += RATE_PER_S / 10;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let lines = loop {
        let lines = deliveries(&output);
        if lines.len() >= put {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {put} records delivered in {mode} mode; output {}",
            lines.len(),
            output.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    signal(&worker, "-TERM");
    let _ = worker.wait();
    let mut latencies: Vec<f64> = lines
        .iter()
        .filter_map(|line| {
            let sent: f64 = line["data"].as_str()?.parse().ok()?;
            Some(line["delivered_ms"].as_f64()? - sent)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Latency {
        median_ms: crate::percentile(&latencies, 0.5),
        p99_ms: crate::percentile(&latencies, 0.99),
        records: latencies.len(),
    }
}

/// One worker in `mode` drains `records` pre-loaded records.
async fn drain(stack: &Stack, mode: &str, records: usize) -> Drained {
    let stream = unique_name("drain");
    create_stream(&stack.kinesis, &stream, 4).await;
    crate::preload(&stack.kinesis, &stream, records).await;
    crate::drain_tally_with(stack, &stream, records, &["--consumer-mode", mode]).await
}

/// Both modes in one run: prints a table and returns the figures.
pub async fn consumer_modes(records: usize, seconds: u64) -> Vec<Figure> {
    let stack = Stack::new().await;
    eprintln!("consumer modes: latency at {RATE_PER_S} records/s for {seconds} s, polling");
    let polling_latency = latency(&stack, "polling", seconds).await;
    eprintln!("consumer modes: latency, fan-out");
    let fan_out_latency = latency(&stack, "fan-out", seconds).await;
    eprintln!("consumer modes: drain {records} records, polling");
    let polling_drain = drain(&stack, "polling", records).await;
    eprintln!("consumer modes: drain {records} records, fan-out");
    let fan_out_drain = drain(&stack, "fan-out", records).await;

    println!(
        "consumer modes: 1 worker (tally tail), 4 shards; latency at {RATE_PER_S} records/s for {seconds} s ({} and {} records), drain of {records} records",
        polling_latency.records, fan_out_latency.records
    );
    println!(
        "{:<44} {:>12} {:>12} {:>16}",
        "figure", "polling", "fan-out", "fan-out/polling"
    );
    let rows = [
        (
            "PutRecords to processor, median (ms)",
            polling_latency.median_ms,
            fan_out_latency.median_ms,
        ),
        (
            "PutRecords to processor, p99 (ms)",
            polling_latency.p99_ms,
            fan_out_latency.p99_ms,
        ),
        (
            "records per second drained by one worker",
            polling_drain.records_per_s,
            fan_out_drain.records_per_s,
        ),
        (
            "worker CPU seconds per 100,000 records",
            polling_drain.cpu_s_per_100k,
            fan_out_drain.cpu_s_per_100k,
        ),
    ];
    for (label, polling, fan_out) in rows {
        println!(
            "{:<44} {:>12} {:>12} {:>16}",
            label,
            crate::peer::amount(polling),
            crate::peer::amount(fan_out),
            format!("{:.2}", fan_out / polling)
        );
    }
    println!("(measured {EMULATOR_NOTE})");

    let ratio = |fan_out: f64, polling: f64| fan_out / polling;
    vec![
        figure(
            "modes_polling_latency_median_ms",
            "polling: PutRecords to processor, median",
            polling_latency.median_ms,
            "ms",
        ),
        figure(
            "modes_fan_out_latency_median_ms",
            "fan-out (emulator-bound): PutRecords to processor, median",
            fan_out_latency.median_ms,
            "ms",
        ),
        figure(
            "modes_polling_latency_p99_ms",
            "polling: PutRecords to processor, p99",
            polling_latency.p99_ms,
            "ms",
        ),
        figure(
            "modes_fan_out_latency_p99_ms",
            "fan-out (emulator-bound): PutRecords to processor, p99",
            fan_out_latency.p99_ms,
            "ms",
        ),
        figure(
            "modes_polling_drain_records_per_s",
            "polling: records/s drained by one worker",
            polling_drain.records_per_s,
            "/s",
        ),
        figure(
            "modes_fan_out_drain_records_per_s",
            "fan-out (emulator-bound): records/s drained by one worker",
            fan_out_drain.records_per_s,
            "/s",
        ),
        figure(
            "modes_polling_cpu_s_per_100k",
            "polling: worker CPU s per 100,000 records",
            polling_drain.cpu_s_per_100k,
            "s",
        ),
        figure(
            "modes_fan_out_cpu_s_per_100k",
            "fan-out: worker CPU s per 100,000 records",
            fan_out_drain.cpu_s_per_100k,
            "s",
        ),
        figure(
            "modes_latency_median_ratio",
            "fan-out/polling: latency median",
            ratio(fan_out_latency.median_ms, polling_latency.median_ms),
            "x",
        ),
        figure(
            "modes_drain_rate_ratio",
            "fan-out/polling: drain records/s",
            ratio(fan_out_drain.records_per_s, polling_drain.records_per_s),
            "x",
        ),
        figure(
            "modes_cpu_ratio",
            "fan-out/polling: CPU per 100,000 records",
            ratio(fan_out_drain.cpu_s_per_100k, polling_drain.cpu_s_per_100k),
            "x",
        ),
    ]
}
