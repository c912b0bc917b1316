//! `tally results`: a poll's live results.

use std::process::ExitCode;
use std::time::Duration;

use tally_service::settings::Common;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct ResultsArgs {
    /// The poll.
    pub id: String,
    /// Print JSON: {"poll_id","status","options":[{"id","label","votes"}],"total","as_of"}.
    #[arg(long)]
    pub json: bool,
    /// Print again every --interval-ms until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Refresh interval of --watch.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
    pub interval_ms: u64,
}

/// Prints the results once, or until a stop signal with `--watch`.
pub async fn run(common: &Common, args: ResultsArgs) -> anyhow::Result<ExitCode> {
    let store = super::vote_store(common).await?;
    let stop = if args.watch {
        tally_service::shutdown::on_signal()
    } else {
        CancellationToken::new()
    };
    tally_store::admin::show_results(
        &store,
        &args.id,
        args.json,
        args.watch.then(|| Duration::from_millis(args.interval_ms)),
        stop,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
