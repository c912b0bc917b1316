//! The `tally` binary: parses the command line, runs the command and
//! decides the exit code. Everything else is library code in `crates/`,
//! `lease/` and `producer/`; each command is one module of [`cmd`].

mod cli;
mod cmd;
mod operations;

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tally_service::started();
    let cli = cli::Cli::parse();
    if cli.otlp {
        if let Err(error) = tally_service::telemetry::check_otlp_settings() {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    }
    let telemetry = tally_service::telemetry::init(cli.log_format, cli.otlp);
    let outcome = cli::run(cli).await;
    // The exporter's own thread blocks while it flushes.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .ok();
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
