//! `tally finalize`: makes a closed poll final once the recount agrees.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tally_service::settings::{Clients, Common};
use tally_store::dynamo::DynamoVoteStore;
use tally_worker::close::{self, FinalizeSettings, Finalized, ScanProgress};
use tally_worker::snapshot::SnapshotSettings;

use super::ScanArgs;

#[derive(clap::Args, Debug)]
pub struct FinalizeArgs {
    /// The poll.
    pub id: String,
    /// Print the audit as JSON.
    #[arg(long)]
    pub json: bool,
    /// Wait this long after the closing time before checking the shards
    /// (clock skew with Kinesis arrival times).
    #[arg(long, env = "TALLY_CLOSE_MARGIN_MS", default_value_t = 2_000)]
    pub margin_ms: u64,
    /// Give up when the shards have not passed the close by then.
    #[arg(long, env = "TALLY_FINALIZE_TIMEOUT_S", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub wait_timeout_s: u64,
    #[command(flatten)]
    pub scan: ScanArgs,
}

/// Finalizes the poll; exits 3 when the recount differs (the poll stays
/// closed and the report is kept).
pub async fn run(
    common: &Common,
    snapshots: &SnapshotSettings,
    args: FinalizeArgs,
) -> anyhow::Result<ExitCode> {
    let clients = Clients::from_env().await?;
    let store = DynamoVoteStore::new(clients.dynamodb.clone(), common.table_names());
    let stream = tally_lease::KinesisStream::new(clients.kinesis.clone(), &common.stream);
    let leases = tally_lease::DynamoStore::new(clients.dynamodb.clone(), common.lease_table());
    let settings = FinalizeSettings {
        margin: Duration::from_millis(args.margin_ms),
        wait_timeout: Duration::from_secs(args.wait_timeout_s),
        check_every: Duration::from_secs(1),
        plan: args.scan.plan(),
    };
    let progress = Arc::new(ScanProgress::default());
    let reporter = close::report_progress(progress.clone(), args.scan.segments);
    let outcome = close::finalize(
        &store,
        &stream,
        &leases,
        &args.id,
        &settings,
        &progress,
        &|line| eprintln!("finalize: {line}"),
    )
    .await;
    reporter.abort();
    let id = &args.id;
    match outcome? {
        Finalized::Final(audit) => {
            super::publish_final(snapshots, &store, &audit).await?;
            super::print_audit(&audit, args.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Finalized::AlreadyFinal(record) => {
            eprintln!("finalize: poll {id} is final already");
            println!("{}", record.unwrap_or_else(|| "{}".into()));
            Ok(ExitCode::SUCCESS)
        }
        Finalized::Mismatch(audit) => {
            super::print_audit(&audit, args.json)?;
            eprintln!("finalize: poll {id} stays closed; the report is kept. Settle it with `tally resolve {id} --use recount|tallies --reason TEXT`");
            Ok(ExitCode::from(super::DIFFERENT))
        }
    }
}
