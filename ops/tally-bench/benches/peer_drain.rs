//! The peer consumer of the drain and failover comparisons: a
//! `ruststream-kinesis` 0.7.1 subscription with its `DynamoDB` lease store,
//! used through the crate's public API only, with a processor that does
//! nothing but acknowledge (and so checkpoint) each batch.
//!
//! A standalone program, built as a benchmark target so that the peer is
//! a dev-dependency of `tally-bench` and never part of the product's
//! dependency tree. `ops/bench` builds it in its release build and hands its
//! path to `tally-bench` (`--peer-bin`), which starts it as a process beside
//! `tally tail`:
//!
//! ```text
//! peer_drain --endpoint URL --stream NAME --lease-table TABLE
//!            [--dynamodb-endpoint URL] [--owner ID] [--records N]
//!            [--batch N] [--progress-ms MS] [--output FILE]
//! ```
//!
//! - `--lease-table` must exist, with a string partition key `lease_key`
//!   (the schema the crate documents for `DynamoLeaseStore`).
//! - `--dynamodb-endpoint` sends the lease-table requests elsewhere than
//!   `--endpoint` (a counting proxy in front of the emulator).
//! - Every shard opens at the trim horizon when it has no checkpoint.
//! - Standard output carries JSON lines: `{"event":"subscribed",...}` once the
//!   subscription reads, `{"uptime_ms":U,"records":R}` every `--progress-ms`
//!   (100), and `{"event":"done",...}` once `--records` records were handled.
//!   The program runs until SIGTERM or SIGINT.
//! - `--output` appends one line per record, `{"shard":S,"delivered_ms":T}`
//!   (milliseconds since the epoch), as `tally tail --output` does.
//!
//! The crate checkpoints whenever an acknowledgement advances a shard's
//! watermark, so acknowledging a batch front to back would write the lease
//! table once per record. This processor acknowledges every record of a
//! batch but the first of each shard, then those firsts together: one
//! checkpoint per shard per batch, as `tally tail` writes.

use std::collections::HashSet;
use std::io::Write;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use ruststream::{BatchSubscriber, Broker, ConnectedBroker, IncomingMessage, Seekable, Seeker};
use ruststream_kinesis::{
    DynamoLeaseStore, KinesisBroker, KinesisMessage, KinesisPosition, KinesisStream, SHARD_HEADER,
};
use tally_testkit::emulators::sdk_config;

/// The command line.
struct Args {
    endpoint: String,
    dynamodb_endpoint: Option<String>,
    stream: String,
    lease_table: String,
    owner: Option<String>,
    records: Option<u64>,
    batch: NonZeroUsize,
    progress: Duration,
    output: Option<String>,
}

const USAGE: &str = "usage: peer_drain --endpoint URL --stream NAME --lease-table TABLE [--dynamodb-endpoint URL] [--owner ID] [--records N] [--batch N] [--progress-ms MS] [--output FILE]";

fn usage(problem: &str) -> ! {
    eprintln!("peer_drain: {problem}\n{USAGE}");
    std::process::exit(2);
}

/// The arguments, or `None` when `cargo bench` started the program on its
/// own (`--bench` and no `--endpoint`): there is nothing to measure then.
fn parse_args() -> Option<Args> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let started_by_cargo_bench = all.iter().any(|arg| arg == "--bench");
    if started_by_cargo_bench && !all.iter().any(|arg| arg == "--endpoint") {
        return None;
    }
    // `cargo bench` appends `--bench`; it means nothing here.
    let raw: Vec<String> = all.into_iter().filter(|arg| arg != "--bench").collect();
    let value = |flag: &str| -> Option<String> {
        let at = raw.iter().position(|arg| arg == flag)?;
        match raw.get(at + 1) {
            Some(value) if !value.starts_with("--") => Some(value.clone()),
            _ => usage(&format!("{flag} needs a value")),
        }
    };
    let number = |flag: &str| -> Option<u64> {
        value(flag).map(|text| match text.parse::<u64>() {
            Ok(number) if number > 0 => number,
            _ => usage(&format!("{flag} must be a positive whole number")),
        })
    };
    let required =
        |flag: &str| value(flag).unwrap_or_else(|| usage(&format!("{flag} is required")));
    let batch = number("--batch").unwrap_or(10_000);
    Some(Args {
        endpoint: required("--endpoint"),
        dynamodb_endpoint: value("--dynamodb-endpoint"),
        stream: required("--stream"),
        lease_table: required("--lease-table"),
        owner: value("--owner"),
        records: number("--records"),
        batch: usize::try_from(batch)
            .ok()
            .and_then(NonZeroUsize::new)
            .unwrap_or_else(|| usage("--batch is too large")),
        progress: Duration::from_millis(number("--progress-ms").unwrap_or(100)),
        output: value("--output"),
    })
}

fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis())
}

/// One JSON line on standard output, written whole.
fn emit(line: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn shard_of(message: &KinesisMessage) -> String {
    message
        .headers()
        .get(SHARD_HEADER)
        .map(|shard| String::from_utf8_lossy(shard).into_owned())
        .unwrap_or_default()
}

/// Acknowledges a batch with one checkpoint per shard: every record but
/// each shard's first settles without advancing the watermark, then the
/// firsts advance it to the batch's last record of their shard, together.
async fn acknowledge(batch: Vec<KinesisMessage>) {
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    let mut rest = Vec::new();
    for message in batch {
        if seen.insert(shard_of(&message)) {
            firsts.push(message);
        } else {
            rest.push(message);
        }
    }
    for message in rest {
        if let Err(error) = message.ack().await {
            eprintln!("peer_drain: acknowledgement failed: {error}");
        }
    }
    for outcome in futures::future::join_all(firsts.into_iter().map(IncomingMessage::ack)).await {
        if let Err(error) = outcome {
            eprintln!("peer_drain: checkpoint failed: {error}");
        }
    }
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let Some(args) = parse_args() else {
        println!("peer_drain: nothing to do under cargo bench; `tally-bench peer` (or `drain`/`all` with --peer-bin) runs this program");
        return;
    };
    let uptime_ms = move || started.elapsed().as_millis();

    // The local stack's settings: a fixed region and dummy credentials.
    let kinesis_config = sdk_config(&args.endpoint).await;
    let dynamodb_config =
        sdk_config(args.dynamodb_endpoint.as_deref().unwrap_or(&args.endpoint)).await;
    let leases = Arc::new(DynamoLeaseStore::new(&dynamodb_config, &args.lease_table));
    let mut broker = KinesisBroker::from_config(kinesis_config).lease_store(leases);
    if let Some(owner) = &args.owner {
        broker = broker.owner_id(owner);
    }
    let connected = broker
        .connect()
        .await
        .unwrap_or_else(|error| usage(&format!("connecting: {error}")));
    let mut subscriber = connected
        .subscribe_stream(KinesisStream::new(&args.stream))
        .await
        .unwrap_or_else(|error| usage(&format!("subscribing to {}: {error}", args.stream)));
    // The shards without a checkpoint open at the tip; the stream was
    // loaded before the start, so every shard, now and later, reads from
    // the horizon.
    subscriber
        .seeker()
        .seek(KinesisPosition::horizon())
        .await
        .unwrap_or_else(|error| usage(&format!("seeking to the horizon: {error}")));
    emit(&serde_json::json!({"event": "subscribed", "uptime_ms": uptime_ms()}));

    let handled = Arc::new(AtomicU64::new(0));
    let progress = {
        let handled = Arc::clone(&handled);
        let every = args.progress;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                emit(&serde_json::json!({
                    "uptime_ms": uptime_ms(),
                    "records": handled.load(Ordering::Relaxed),
                }));
            }
        })
    };
    let mut output = args.output.as_ref().map(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(std::io::BufWriter::new)
            .unwrap_or_else(|error| usage(&format!("opening {path}: {error}")))
    });

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    let mut done = false;
    {
        let mut batches = std::pin::pin!(subscriber.batches(args.batch));
        loop {
            let batch = tokio::select! {
                batch = batches.next() => batch,
                _ = terminate.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            };
            let batch = match batch {
                Some(Ok(batch)) => batch,
                Some(Err(error)) => {
                    eprintln!("peer_drain: {error}");
                    continue;
                }
                None => break,
            };
            let count = batch.len() as u64;
            if let Some(file) = output.as_mut() {
                let delivered_ms = epoch_ms();
                for message in &batch {
                    let line = serde_json::json!({"shard": shard_of(message), "delivered_ms": delivered_ms});
                    let _ = writeln!(file, "{line}");
                }
                let _ = file.flush();
            }
            acknowledge(batch).await;
            let total = handled.fetch_add(count, Ordering::Relaxed) + count;
            if !done && args.records.is_some_and(|expected| total >= expected) {
                done = true;
                emit(
                    &serde_json::json!({"event": "done", "uptime_ms": uptime_ms(), "records": total}),
                );
            }
        }
    }
    progress.abort();
    drop(subscriber);
    if let Err(error) = connected.shutdown().await {
        eprintln!("peer_drain: shutting down: {error}");
    }
}
