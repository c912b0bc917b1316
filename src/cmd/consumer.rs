//! `tally consumer`: the application's enhanced fan-out stream consumer
//! (named after `--app`), shown or deregistered by an operator. Workers in
//! fan-out mode register it and never deregister it.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;
use tally_lease::KinesisStream;
use tally_service::settings::{Clients, Common};

#[derive(Args, Debug)]
pub struct ConsumerArgs {
    #[command(subcommand)]
    pub action: ConsumerAction,
}

#[derive(Subcommand, Debug)]
pub enum ConsumerAction {
    /// Prints the consumer's status and ARN as JSON (`registered: false`
    /// when there is none).
    Show,
    /// Deregisters the consumer: workers still in fan-out mode register it
    /// again, and their subscriptions end. Prints JSON.
    Deregister,
}

pub async fn run(common: &Common, args: ConsumerArgs) -> anyhow::Result<ExitCode> {
    let clients = Clients::from_env().await?;
    let stream = KinesisStream::new(clients.kinesis, &common.stream);
    let name = &common.app;
    let answer = match args.action {
        ConsumerAction::Show => match stream.consumer_status(name).await? {
            Some((status, arn)) => json!({
                "consumer": name, "registered": true, "status": status, "arn": arn,
            }),
            None => json!({ "consumer": name, "registered": false }),
        },
        ConsumerAction::Deregister => {
            let deregistered = stream.deregister_consumer(name).await?;
            json!({ "consumer": name, "deregistered": deregistered })
        }
    };
    println!("{answer}");
    Ok(ExitCode::SUCCESS)
}
