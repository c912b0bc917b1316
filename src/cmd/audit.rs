//! `tally audit`: the live tallies against a recount, read-only.

use std::process::ExitCode;
use std::sync::Arc;

use tally_service::settings::Common;
use tally_worker::close::{self, ScanProgress};

use super::ScanArgs;

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The poll.
    pub id: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub scan: ScanArgs,
}

/// Prints the audit; exits 3 when the tallies and the recount differ.
pub async fn run(common: &Common, args: AuditArgs) -> anyhow::Result<ExitCode> {
    let store = super::vote_store(common).await?;
    let progress = Arc::new(ScanProgress::default());
    let reporter = close::report_progress(progress.clone(), args.scan.segments);
    let audit = close::audit(&store, &args.id, args.scan.plan(), &progress).await;
    reporter.abort();
    let audit = audit?;
    super::print_audit(&audit, args.json)?;
    Ok(super::equal_or_different(audit.equal))
}
