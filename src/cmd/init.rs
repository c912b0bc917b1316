//! `tally init`: the stream, the lease table and the vote tables.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tally_service::settings::{Clients, Common};
use tally_store::dynamo::DynamoVoteStore;
use tally_store::PollStore;
use tally_worker::snapshot::SnapshotSettings;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Shards of a new stream.
    #[arg(long, env = "TALLY_SHARDS", default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub shards: i32,
}

/// Creates what does not exist yet.
pub async fn run(
    common: &Common,
    snapshots: &SnapshotSettings,
    args: InitArgs,
) -> anyhow::Result<ExitCode> {
    let clients = Clients::from_env().await?;
    create_stream(common, &clients, args.shards).await?;
    let store = DynamoVoteStore::new(clients.dynamodb.clone(), common.table_names());
    store.ensure_tables().await.context("creating the tables")?;
    let names = store.names();
    eprintln!(
        "tables ready: {}, {}, {}, {}, {}",
        names.leases, names.polls, names.votes, names.tallies, names.rejects
    );
    if let Some(snapshots) = super::snapshots(snapshots).await? {
        snapshots.ensure_bucket().await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates the stream unless it exists, and waits until it is active.
async fn create_stream(common: &Common, clients: &Clients, shards: i32) -> anyhow::Result<()> {
    let created = clients
        .kinesis
        .create_stream()
        .stream_name(&common.stream)
        .shard_count(shards)
        .send()
        .await;
    match created {
        Ok(_) => eprintln!("stream {}: created with {shards} shards", common.stream),
        Err(error) if tally_aws::classify(&error) == tally_aws::ErrorClass::InUse => {
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
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
