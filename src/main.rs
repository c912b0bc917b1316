//! The `tally` binary: parses the command line and runs the command.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tally::tail::started();
    let cli = tally::cli::Cli::parse();
    if cli.otlp {
        if let Err(error) = tally::telemetry::check_otlp_settings() {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let telemetry = tally::telemetry::init(cli.log_format, cli.otlp);
    let outcome = tally::cli::run(cli).await;
    // The exporter's own thread blocks while it flushes.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .ok();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
