//! `tally worker`: the long-running daemon. It runs the lease worker with
//! the vote pipeline on every shard it holds, serves `/health` and
//! `/metrics` over HTTP, logs its metrics periodically, and stops
//! gracefully on SIGTERM: stop taking leases, finish and commit the
//! in-flight batches, release the leases, exit, well inside ECS's 30 s.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use clap::Args;
use tally_lease::{DynamoStore, KinesisStream, Worker};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineConfig, VoteProcessorFactory, VoteWrites};
use tally_service::faults::Faults;
use tally_service::settings::{Clients, Common, LeaseSettings};
use tally_store::dynamo::DynamoVoteStore;
use tally_store::poll_cache::PollCacheConfig;

/// The worker's settings.
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub lease: LeaseSettings,
    /// Address of the `/health` and `/metrics` endpoints (port 0: any free
    /// port). Default 127.0.0.1:9464, or a free port (logged) when another
    /// process on the host holds it; an address given here that cannot be
    /// bound fails at start.
    #[arg(long, env = "TALLY_HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,
    /// Votes being written at once per shard: that many conditional puts,
    /// or that many divided by 25 (at least one) batch requests.
    #[arg(long, env = "TALLY_PUT_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub put_concurrency: u16,
    /// How votes are written: `batched` (BatchExecuteStatement, 25 INSERTs
    /// a request) or `single` (one conditional PutItem each, for comparison).
    #[arg(long, env = "TALLY_VOTE_WRITES", value_enum, default_value_t = VoteWrites::Batched)]
    pub vote_writes: VoteWrites,
    /// A cached poll older than this is read again (keep it well under the
    /// close grace of `tally poll close`).
    #[arg(long, env = "TALLY_POLL_CACHE_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_cache_ms: u64,
    /// How often to log the metrics.
    #[arg(long, env = "TALLY_METRICS_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub metrics_interval_ms: u64,
    /// After a stop signal, how long to finish in-flight batches before
    /// giving up on their retries (ECS stops a task 30 s after SIGTERM).
    #[arg(long, env = "TALLY_SHUTDOWN_TIMEOUT_MS", default_value_t = 20_000)]
    pub shutdown_timeout_ms: u64,
    #[command(flatten)]
    pub faults: tally_service::faults::FaultArgs,
    /// TESTING ONLY (builds with the `faults` feature): abort the process at this step of the counting
    /// protocol, `NAME[:N]` (the N-th time): after_validate, after_rejects,
    /// mid_puts, after_puts, between_commits, after_commit.
    #[arg(long, env = "TALLY_CRASH_POINT")]
    pub crash_point: Option<String>,
    #[command(flatten)]
    pub cloudwatch: tally_service::cloudwatch::CloudWatchArgs,
    /// Most actions per commit transaction (2 to 100; lower only to test splitting).
    #[arg(long, env = "TALLY_MAX_TRANSACTION_ACTIONS", default_value_t = 100, value_parser = clap::value_parser!(u16).range(2..=100))]
    pub max_transaction_actions: u16,
}

impl WorkerArgs {
    /// Parses the testing switches, naming the setting at fault.
    pub fn faults(&self) -> anyhow::Result<Option<Arc<Faults>>> {
        if let Some(spec) = &self.crash_point {
            tally_service::faults::arm_crash_point(spec)?;
            tracing::warn!(crash_point = %spec, "crash point armed: this worker will abort on purpose");
        }
        self.faults.parse()
    }

    fn pipeline_config(&self) -> PipelineConfig {
        PipelineConfig {
            put_concurrency: usize::from(self.put_concurrency),
            vote_writes: self.vote_writes,
            poll_cache: PollCacheConfig {
                max_age: Duration::from_millis(self.poll_cache_ms),
                ..PollCacheConfig::default()
            },
            max_transaction_actions: usize::from(self.max_transaction_actions),
        }
    }
}

#[derive(Clone)]
struct Shared {
    worker_id: String,
    metrics: Arc<Metrics>,
    lease_metrics: Arc<tally_lease::metrics::Metrics>,
    faults: Option<Arc<Faults>>,
    stopping: Arc<AtomicBool>,
    store: Arc<DynamoVoteStore>,
    kinesis: Arc<KinesisStream>,
}

impl Shared {
    fn snapshot(&self) -> serde_json::Value {
        let mut snapshot = self.metrics.snapshot();
        for (name, value) in self.lease_metrics.snapshot() {
            snapshot[name] = serde_json::json!(value);
        }
        if let Some(faults) = &self.faults {
            snapshot["tally_faults_injected_total"] = faults.injected_json();
        }
        let usage = tally_store::CountStore::usage(self.store.as_ref());
        snapshot["tally_dynamodb_requests_total"] = usage.requests.into();
        snapshot["tally_dynamodb_write_units_total"] = usage.write_units.into();
        snapshot["tally_kinesis_requests_total"] = self.kinesis.requests().into();
        snapshot["worker_id"] = self.worker_id.clone().into();
        snapshot["uptime_ms"] = (tally_service::started().elapsed().as_millis() as u64).into();
        snapshot
    }
}

async fn health_handler(State(shared): State<Shared>) -> (StatusCode, Json<serde_json::Value>) {
    let stopping = shared.stopping.load(Ordering::Relaxed);
    let body = serde_json::json!({
        "status": if stopping { "stopping" } else { "ok" },
        "worker_id": shared.worker_id,
        "uptime_ms": tally_service::started().elapsed().as_millis() as u64,
    });
    let status = if stopping {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body))
}

async fn metrics_handler(State(shared): State<Shared>) -> Json<serde_json::Value> {
    Json(shared.snapshot())
}

async fn not_found() -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "not found; try /health or /metrics"})),
    )
}

/// Where `/health` and `/metrics` listen unless `TALLY_HEALTH_ADDR` says.
pub const DEFAULT_HEALTH_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// Binds the health endpoints: the address given (failing at start, naming
/// the setting, when it cannot be bound), or `default`, falling back to a
/// free port on the same interface when another process holds it, so that
/// several workers with default settings share a host.
async fn bind_health(
    given: Option<SocketAddr>,
    default: SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    if let Some(address) = given {
        return tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| {
                format!("invalid setting TALLY_HEALTH_ADDR: cannot listen on {address}")
            });
    }
    match tokio::net::TcpListener::bind(default).await {
        Ok(listener) => Ok(listener),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(default.ip(), 0))
                .await
                .context("listening on a free port for /health")?;
            tracing::warn!(
                default = %default,
                health_addr = %listener.local_addr()?,
                "the default health address is taken (another worker on this host?); listening on a free port"
            );
            Ok(listener)
        }
        Err(error) => Err(error).with_context(|| {
            format!("listening on the default health address {default} (TALLY_HEALTH_ADDR chooses another)")
        }),
    }
}

/// Runs the worker until `shutdown` fires and the leases are released.
pub async fn run(
    common: &Common,
    clients: &Clients,
    args: &WorkerArgs,
    faults: Option<Arc<Faults>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = args.lease.worker_config(&common.app)?;
    let store = Arc::new(DynamoVoteStore::new(
        clients.dynamodb.clone(),
        common.table_names(),
    ));
    let metrics = Arc::new(Metrics::default());
    let pipeline = Pipeline::new(store.clone(), args.pipeline_config(), metrics.clone());
    let lease_store = Arc::new(DynamoStore::new(
        clients.dynamodb.clone(),
        common.lease_table(),
    ));
    let stream = Arc::new(KinesisStream::new(clients.kinesis.clone(), &common.stream));
    let factory = Arc::new(VoteProcessorFactory {
        pipeline: pipeline.clone(),
    });
    let worker_id = config.worker_id.clone();
    let worker = Worker::new(config, lease_store.clone(), stream.clone(), factory)?;
    let shared = Shared {
        kinesis: stream,
        worker_id: worker_id.clone(),
        metrics,
        lease_metrics: worker.metrics(),
        faults,
        stopping: Arc::default(),
        store,
    };

    let listener = bind_health(args.health_addr, DEFAULT_HEALTH_ADDR).await?;
    let health_addr = listener.local_addr()?;
    let app = Router::new()
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics_handler))
        .fallback(not_found)
        .with_state(shared.clone());
    let server_stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = server_stop.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    });
    tracing::info!(worker_id = %worker_id, health_addr = %health_addr, stream = %common.stream, "worker started");

    let reporter_stop = CancellationToken::new();
    let reporter = tokio::spawn({
        let stop = reporter_stop.clone();
        let shared = shared.clone();
        let interval = Duration::from_millis(args.metrics_interval_ms);
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
                tracing::info!(metrics = %shared.snapshot(), "metrics");
            }
            tracing::info!(metrics = %shared.snapshot(), "metrics");
        }
    });

    // A stop signal: report "stopping", and give in-flight batches a
    // deadline after which their retries are abandoned.
    let watchdog = tokio::spawn({
        let shutdown = shutdown.clone();
        let stopping = shared.stopping.clone();
        let abandon = pipeline.abandon.clone();
        let timeout = Duration::from_millis(args.shutdown_timeout_ms);
        async move {
            shutdown.cancelled().await;
            stopping.store(true, Ordering::Relaxed);
            tracing::info!("stopping: finishing in-flight batches, then releasing leases");
            tokio::time::sleep(timeout).await;
            tracing::warn!("shutdown timeout: abandoning retries of in-flight batches");
            abandon.cancel();
        }
    });

    let publisher_stop = CancellationToken::new();
    let publisher = if args.cloudwatch.cloudwatch {
        tally_service::cloudwatch::validate(&args.cloudwatch)?;
        let shared = shared.clone();
        let leases = lease_store.clone();
        Some(tokio::spawn(tally_service::cloudwatch::publish(
            aws_sdk_cloudwatch::Client::new(&clients.config),
            args.cloudwatch.clone(),
            tally_service::cloudwatch::WORKER_METRICS,
            common.app.clone(),
            worker_id.clone(),
            move || {
                let shared = shared.clone();
                let leases = leases.clone();
                async move {
                    let mut snapshot = shared.snapshot();
                    // Shards not yet read to their end: what the fleet's
                    // size follows (see infra/terraform).
                    if let Ok(all) = tally_lease::LeaseStore::list_leases(leases.as_ref()).await {
                        let open = all
                            .iter()
                            .filter(|lease| lease.checkpoint != tally_lease::Checkpoint::ShardEnd)
                            .count();
                        snapshot["open_shards"] = open.into();
                    }
                    snapshot
                }
            },
            publisher_stop.clone(),
        )))
    } else {
        None
    };

    let result = worker.run(shutdown).await;
    watchdog.abort();
    publisher_stop.cancel();
    if let Some(publisher) = publisher {
        let _ = publisher.await;
    }
    reporter_stop.cancel();
    let _ = reporter.await;
    server_stop.cancel();
    let _ = server.await;
    tracing::info!(worker_id = %worker_id, "worker stopped");
    result.context("worker failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_default_health_address_falls_back_to_a_free_port() {
        let holder = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let taken = holder.local_addr().unwrap();
        let listener = bind_health(None, taken).await.unwrap();
        let bound = listener.local_addr().unwrap();
        assert_eq!(bound.ip(), taken.ip());
        assert_ne!(bound.port(), taken.port());
    }

    #[tokio::test]
    async fn a_default_health_address_that_cannot_be_bound_names_the_setting() {
        // 192.0.2.1 (TEST-NET-1) is no address of this host: binding fails
        // at once, with another error than "in use".
        let unusable: SocketAddr = "192.0.2.1:9464".parse().unwrap();
        let error = bind_health(None, unusable).await.unwrap_err();
        assert!(
            format!("{error:#}").contains("TALLY_HEALTH_ADDR"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn a_taken_health_address_given_explicitly_fails_naming_the_setting() {
        let holder = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let taken = holder.local_addr().unwrap();
        let error = bind_health(Some(taken), DEFAULT_HEALTH_ADDR)
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("TALLY_HEALTH_ADDR"),
            "{error:#}"
        );
    }
}
