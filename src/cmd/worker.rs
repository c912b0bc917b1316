//! `tally worker`: the vote-counting daemon.

use std::process::ExitCode;

use tally_service::settings::{Clients, Common};
use tally_worker::daemon::WorkerArgs;

/// Runs the daemon until a stop signal.
pub async fn run(common: &Common, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let faults = args.faults()?;
    args.lease.worker_config(&common.app)?;
    let clients = Clients::with_faults(faults.clone()).await?;
    let shutdown = tally_service::shutdown::on_signal();
    tally_worker::daemon::run(common, &clients, &args, faults, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
