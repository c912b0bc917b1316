//! One module per command: each an args struct and a `run` that returns
//! the exit code; only `main` ends the process. What several commands
//! share is here.

pub mod audit;
pub mod consumer;
pub mod finalize;
pub mod gateway;
pub mod init;
pub mod leases;
pub mod load;
pub mod poll;
pub mod probe;
pub mod replay;
pub mod resolve;
pub mod results;
pub mod snapshot;
pub mod tail;
pub mod vote_status;
pub mod worker;

use std::process::ExitCode;

use tally_service::settings::{Clients, Common};
use tally_store::dynamo::DynamoVoteStore;
use tally_worker::close::{Audit, ScanPlan};
use tally_worker::snapshot::{SnapshotSettings, Snapshots};

/// The exit code of a comparison that found a difference (`audit`,
/// `finalize`, `replay`).
pub const DIFFERENT: u8 = 3;

/// How the votes table is scanned by a recount.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ScanArgs {
    /// Parallel scan segments.
    #[arg(long, env = "TALLY_RECOUNT_SEGMENTS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub segments: u32,
    /// Segments scanned at once.
    #[arg(long, env = "TALLY_RECOUNT_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
}

impl ScanArgs {
    pub fn plan(&self) -> ScanPlan {
        ScanPlan {
            segments: self.segments,
            concurrency: usize::from(self.concurrency),
        }
    }
}

/// The vote tables, through the standard AWS settings.
pub async fn vote_store(common: &Common) -> anyhow::Result<DynamoVoteStore> {
    let clients = Clients::from_env().await?;
    Ok(DynamoVoteStore::new(
        clients.dynamodb.clone(),
        common.table_names(),
    ))
}

/// The S3 snapshots, when a bucket is configured.
pub async fn snapshots(settings: &SnapshotSettings) -> anyhow::Result<Option<Snapshots>> {
    if settings.snapshot_bucket.is_none() {
        return Ok(None);
    }
    let clients = Clients::from_env().await?;
    Snapshots::new(&clients.config, settings)
}

/// Writes a final result to S3 when a bucket is configured.
pub async fn publish_final(
    settings: &SnapshotSettings,
    store: &DynamoVoteStore,
    audit: &Audit,
) -> anyhow::Result<()> {
    if let Some(snapshots) = snapshots(settings).await? {
        let results = tally_store::admin::results(store, &audit.poll_id).await?;
        let address = snapshots
            .final_result(&results, &serde_json::to_value(audit)?)
            .await?;
        eprintln!("final result written to {address}");
    }
    Ok(())
}

/// Prints an audit as text or JSON.
pub fn print_audit(audit: &Audit, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(audit)?);
    } else {
        print!("{}", tally_core::recount::audit_text(audit));
    }
    Ok(())
}

/// Success, or [`DIFFERENT`] when a comparison found a difference.
pub fn equal_or_different(equal: bool) -> ExitCode {
    if equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(DIFFERENT)
    }
}
