//! `tally gateway`: the HTTP gateway.

use std::process::ExitCode;

use tally_gateway::GatewayArgs;
use tally_service::settings::Common;

/// Serves until a stop signal.
pub async fn run(common: &Common, args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let shutdown = tally_service::shutdown::on_signal();
    tally_gateway::run(common, args, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
