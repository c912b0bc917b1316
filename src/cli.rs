//! The command line. Every flag can also be set by the environment
//! variable named in `--help`.

use std::path::PathBuf;

use anyhow::Context;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use clap::{Parser, Subcommand};

use crate::settings::{Clients, Common, LeaseSettings};
use crate::telemetry::LogFormat;

#[derive(Parser, Debug)]
#[command(
    name = "tally",
    version,
    about = "Real-time, exactly-once vote counting on Kinesis and DynamoDB",
    long_about = "Real-time, exactly-once vote counting on Kinesis and DynamoDB.\n\n\
AWS settings come from the standard variables (AWS_REGION, credentials, \
AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_KINESIS / AWS_ENDPOINT_URL_DYNAMODB for \
the local stack)."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    /// Log format on stderr.
    #[arg(
        long,
        env = "TALLY_LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Creates the stream and the lease table unless they exist.
    Init {
        /// Shards of a new stream.
        #[arg(long, env = "TALLY_SHARDS", default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=10_000))]
        shards: i32,
    },
    /// Shows the lease table: shard, owner, checkpoint, parents and state
    /// (processing, free, waiting on parents, ended), and the workers' heartbeats.
    Leases {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this worker's leases (read through the leaseOwner index, no scan).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Reads the stream as a lease worker and prints every record as a JSON
    /// line (shard, sequence, sub-sequence, partition key, data, worker),
    /// checkpointing after each batch. Stops gracefully on SIGTERM/SIGINT.
    Tail {
        #[command(flatten)]
        lease: LeaseSettings,
        /// Append records to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Print no records (only checkpoint): for draining and benchmarks.
        #[arg(long)]
        quiet: bool,
        /// How often to log the worker's metrics.
        #[arg(long, env = "TALLY_METRICS_INTERVAL_MS", default_value_t = 10_000)]
        metrics_interval_ms: u64,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.common.validate()?;
    match cli.command {
        Command::Init { shards } => init(&cli.common, shards).await,
        Command::Leases { json, owner } => {
            if let Some(owner) = &owner {
                if !tally_lease::config::valid_id(owner) {
                    anyhow::bail!("invalid --owner {owner:?}: worker ids are 1 to 128 characters of [A-Za-z0-9._:@-]");
                }
            }
            let clients = Clients::from_env().await?;
            crate::leases_view::show(&cli.common, &clients, json, owner.as_deref()).await
        }
        Command::Tail {
            lease,
            output,
            quiet,
            metrics_interval_ms,
        } => {
            let config = lease.worker_config()?;
            let clients = Clients::from_env().await?;
            let shutdown = crate::shutdown::on_signal();
            crate::tail::run(
                &cli.common,
                &clients,
                config,
                crate::tail::Output::new(output, quiet)?,
                std::time::Duration::from_millis(metrics_interval_ms.max(100)),
                shutdown,
            )
            .await
        }
    }
}

async fn init(common: &Common, shards: i32) -> anyhow::Result<()> {
    let clients = Clients::from_env().await?;
    let created = clients
        .kinesis
        .create_stream()
        .stream_name(&common.stream)
        .shard_count(shards)
        .send()
        .await;
    match created {
        Ok(_) => eprintln!("stream {}: created with {shards} shards", common.stream),
        Err(error) if error.code() == Some("ResourceInUseException") => {
            eprintln!("stream {}: exists", common.stream)
        }
        Err(error) => {
            return Err(anyhow::Error::new(error))
                .with_context(|| format!("creating stream {}", common.stream))
        }
    }
    for _ in 0..300 {
        let summary = clients
            .kinesis
            .describe_stream_summary()
            .stream_name(&common.stream)
            .send()
            .await
            .with_context(|| format!("describing stream {}", common.stream))?;
        let active = summary
            .stream_description_summary()
            .is_some_and(|d| d.stream_status() == &aws_sdk_kinesis::types::StreamStatus::Active);
        if active {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let store = tally_lease::DynamoStore::new(clients.dynamodb.clone(), common.lease_table());
    tally_lease::LeaseStore::ensure_table(&store)
        .await
        .with_context(|| format!("creating lease table {}", common.lease_table()))?;
    eprintln!("lease table {}: ready", common.lease_table());
    Ok(())
}
