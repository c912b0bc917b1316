//! The `tally` binary: parses the command line and runs the command.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tally::tail::started();
    let cli = tally::cli::Cli::parse();
    tally::telemetry::init(cli.log_format);
    match tally::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
