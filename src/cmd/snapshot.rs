//! `tally snapshot`: results in S3.

use std::process::ExitCode;
use std::time::Duration;

use tally_service::settings::Common;
use tally_worker::snapshot::SnapshotSettings;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct SnapshotArgs {
    /// Polls to snapshot (default: every poll that is open or closed).
    #[arg(long = "poll")]
    pub polls: Vec<String>,
    /// Run until Ctrl-C, writing changed results at this interval.
    #[arg(long, env = "TALLY_SNAPSHOT_INTERVAL_S", value_parser = clap::value_parser!(u64).range(1..))]
    pub interval_s: Option<u64>,
}

/// Writes the snapshots once, or until a stop signal.
pub async fn run(
    common: &Common,
    settings: &SnapshotSettings,
    args: SnapshotArgs,
) -> anyhow::Result<ExitCode> {
    let snapshots = super::snapshots(settings).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "missing setting TALLY_SNAPSHOT_BUCKET (--snapshot-bucket): where the snapshots go"
        )
    })?;
    let store = super::vote_store(common).await?;
    let stop = if args.interval_s.is_some() {
        tally_service::shutdown::on_signal()
    } else {
        CancellationToken::new()
    };
    tally_worker::snapshot::run(
        &store,
        &snapshots,
        &args.polls,
        args.interval_s.map(Duration::from_secs),
        stop,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
