//! `tally tail`: a lease worker whose processor prints every record as a
//! JSON line and checkpoints after each batch. Operators use it to look at
//! the stream; the lease tests and benchmarks use it as a real worker.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine;
use tally_lease::processor::ProcessorError;
use tally_lease::{
    Batch, CheckpointOutcome, Checkpointer, DynamoStore, KinesisStream, ProcessorFactory,
    RecordProcessor, ShardId, ShardStart, Worker, WorkerConfig,
};
use tokio_util::sync::CancellationToken;

use tally_service::settings::{Clients, Common, LeaseSettings};

/// Where records go.
#[derive(Clone)]
pub struct Output {
    sink: Option<Arc<Mutex<Box<dyn Write + Send>>>>,
}

impl Output {
    pub fn new(path: Option<PathBuf>, quiet: bool) -> anyhow::Result<Self> {
        if quiet {
            return Ok(Self { sink: None });
        }
        let sink: Box<dyn Write + Send> = match path {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening --output {}", path.display()))?,
            ),
            None => Box::new(std::io::stdout()),
        };
        Ok(Self {
            sink: Some(Arc::new(Mutex::new(sink))),
        })
    }
}

/// One JSON line per record.
pub fn record_line(worker: &str, shard: &ShardId, record: &tally_lease::Record) -> String {
    let data = match std::str::from_utf8(&record.data) {
        Ok(text) => serde_json::json!(text),
        Err(_) => {
            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(&record.data) })
        }
    };
    let arrival_ms = record
        .arrival
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    serde_json::json!({
        "shard": shard.as_str(),
        "sequence": record.position.sequence.as_str(),
        "sub_sequence": record.position.sub_sequence,
        "partition_key": record.partition_key,
        "data": data,
        "arrival_ms": arrival_ms,
        "worker": worker,
        "delivered_ms": std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        "bad_aggregate": record.bad_aggregate,
    })
    .to_string()
}

struct TailProcessor {
    worker: String,
    output: Output,
}

#[async_trait]
impl RecordProcessor for TailProcessor {
    async fn initialize(&mut self, start: &ShardStart) -> Result<(), ProcessorError> {
        tracing::info!(shard_id = %start.shard, checkpoint = %start.checkpoint, "shard started");
        Ok(())
    }

    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        if let Some(sink) = &self.output.sink {
            let mut text = String::new();
            for record in &batch.records {
                text.push_str(&record_line(&self.worker, &batch.shard, record));
                text.push('\n');
            }
            let mut sink = sink.lock().expect("lock");
            sink.write_all(text.as_bytes())?;
            sink.flush()?;
        }
        if let Some(last) = batch.records.last() {
            if checkpointer.checkpoint(last.position.clone()).await? == CheckpointOutcome::Lost {
                tracing::info!(shard_id = %batch.shard, "lease lost at checkpoint");
            }
        }
        Ok(())
    }
}

struct Factory {
    worker: String,
    output: Output,
}

impl ProcessorFactory for Factory {
    fn create(&self, _shard: &ShardId) -> Box<dyn RecordProcessor> {
        Box::new(TailProcessor {
            worker: self.worker.clone(),
            output: self.output.clone(),
        })
    }
}

async fn follow(
    common: &Common,
    clients: &Clients,
    config: WorkerConfig,
    output: Output,
    metrics_interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Arc::new(DynamoStore::new(
        clients.dynamodb.clone(),
        common.lease_table(),
    ));
    let stream = Arc::new(KinesisStream::new(clients.kinesis.clone(), &common.stream));
    let factory = Arc::new(Factory {
        worker: config.worker_id.clone(),
        output,
    });
    let worker = Worker::new(config, store, stream, factory)?;
    let metrics = worker.metrics();
    let reporter_stop = CancellationToken::new();
    let reporter = tokio::spawn({
        let stop = reporter_stop.clone();
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(metrics_interval) => {}
                }
                log_metrics(&metrics);
            }
            log_metrics(&metrics);
        }
    });
    let result = worker.run(shutdown).await;
    reporter_stop.cancel();
    let _ = reporter.await;
    result.context("lease worker failed")
}

fn log_metrics(metrics: &tally_lease::metrics::Metrics) {
    let snapshot: serde_json::Map<String, serde_json::Value> = metrics
        .snapshot()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), serde_json::json!(value)))
        .collect();
    let uptime_ms = tally_service::started().elapsed().as_millis() as u64;
    tracing::info!(metrics = %serde_json::Value::Object(snapshot), uptime_ms, "metrics");
}

/// `tally tail`.
#[derive(clap::Args, Debug)]
pub struct TailArgs {
    #[command(flatten)]
    pub lease: LeaseSettings,
    /// Append records to this file instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print no records (only checkpoint): for draining and benchmarks.
    #[arg(long)]
    pub quiet: bool,
    /// How often to log the metrics.
    #[arg(long, env = "TALLY_METRICS_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub metrics_interval_ms: u64,
}

/// Follows the stream until a stop signal.
pub async fn run(common: &Common, args: TailArgs) -> anyhow::Result<ExitCode> {
    let config = args.lease.worker_config(&common.app)?;
    let clients = Clients::from_env().await?;
    let shutdown = tally_service::shutdown::on_signal();
    follow(
        common,
        &clients,
        config,
        Output::new(args.output, args.quiet)?,
        Duration::from_millis(args.metrics_interval_ms),
        shutdown,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
