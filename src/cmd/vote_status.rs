//! `tally vote-status`: what became of a voter's vote.

use std::process::ExitCode;

use tally_service::settings::Common;

#[derive(clap::Args, Debug)]
pub struct VoteStatusArgs {
    #[arg(long)]
    pub poll: String,
    #[arg(long)]
    pub voter: String,
    /// Ask about this one vote of the voter.
    #[arg(long)]
    pub vote_id: Option<String>,
}

/// Prints the status as JSON.
pub async fn run(common: &Common, args: VoteStatusArgs) -> anyhow::Result<ExitCode> {
    let store = super::vote_store(common).await?;
    let status =
        tally_store::admin::vote_status(&store, &args.poll, &args.voter, args.vote_id.as_deref())
            .await?;
    println!("{status}");
    Ok(ExitCode::SUCCESS)
}
