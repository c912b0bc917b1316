//! `tally probe`: the container's health check (the image has no curl).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// e.g. http://127.0.0.1:9464/health (worker) or http://127.0.0.1:8080/healthz (gateway).
    #[arg(default_value = "http://127.0.0.1:9464/health")]
    pub url: String,
}

/// Succeeds when the URL answers 2xx within 2 s.
pub async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let url = &args.url;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("probing {url}"))?;
    if !response.status().is_success() {
        anyhow::bail!("{url} answered {}", response.status());
    }
    Ok(ExitCode::SUCCESS)
}
