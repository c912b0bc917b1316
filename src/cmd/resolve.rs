//! `tally resolve`: settles a recount mismatch explicitly.

use std::process::ExitCode;

use tally_service::settings::Common;
use tally_worker::close::{self, ScanProgress};
use tally_worker::snapshot::SnapshotSettings;

use super::ScanArgs;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveSource {
    Recount,
    Tallies,
}

#[derive(clap::Args, Debug)]
pub struct ResolveArgs {
    /// The poll.
    pub id: String,
    /// Which counts become the final result.
    #[arg(long = "use", value_enum)]
    pub source: ResolveSource,
    /// Why, for the audit record.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub scan: ScanArgs,
}

/// Makes the poll final with the chosen counts.
pub async fn run(
    common: &Common,
    snapshots: &SnapshotSettings,
    args: ResolveArgs,
) -> anyhow::Result<ExitCode> {
    let store = super::vote_store(common).await?;
    let progress = ScanProgress::default();
    let audit = close::resolve(
        &store,
        &args.id,
        args.source == ResolveSource::Recount,
        &args.reason,
        args.scan.plan(),
        &progress,
    )
    .await?;
    super::publish_final(snapshots, &store, &audit).await?;
    super::print_audit(&audit, false)?;
    Ok(ExitCode::SUCCESS)
}
