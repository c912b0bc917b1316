//! `tally poll`: create, open, close, list and show polls.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use tally_service::settings::Common;
use tally_store::admin;
use tally_store::prelude::*;

#[derive(clap::Args, Debug)]
pub struct PollArgs {
    #[command(subcommand)]
    pub command: PollCommand,
}

#[derive(Subcommand, Debug)]
pub enum PollCommand {
    /// Creates a poll (a draft unless --open). Creating the same poll again
    /// changes nothing; a different poll with the same id is an error.
    Create {
        /// 1 to 128 characters of [A-Za-z0-9._:@-].
        #[arg(long)]
        id: String,
        #[arg(long)]
        question: String,
        /// An option, `ID` or `ID=LABEL`; give 2 to 100.
        #[arg(long = "option", required = true)]
        options: Vec<String>,
        /// Votes that arrive earlier do not count (RFC 3339).
        #[arg(long)]
        opens_at: Option<String>,
        /// Votes that arrive at or after this time do not count (RFC 3339).
        #[arg(long)]
        closes_at: Option<String>,
        /// Open it now.
        #[arg(long)]
        open: bool,
        /// Counter items the tallies are spread over (see docs/DESIGN.md).
        #[arg(long, default_value_t = tally_core::poll::DEFAULT_COUNTER_SHARDS, value_parser = clap::value_parser!(u32).range(1..=256))]
        counter_shards: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Opens a poll now: votes that arrive from now on count.
    Open {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Closes a poll: votes that arrive from the closing time on do not
    /// count. The closing time is 2 s from now unless --at says otherwise,
    /// so that every worker knows it before it passes.
    Close {
        id: String,
        /// The closing time (RFC 3339), not in the past.
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Lists the polls.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Shows one poll.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

/// The closing time `--at` names, or the default grace from now.
fn closing_time(at: Option<&str>) -> anyhow::Result<i64> {
    let now = tally_contract::time::now_millis();
    let Some(text) = at else {
        return Ok(now + admin::CLOSE_GRACE.as_millis() as i64);
    };
    let at_ms = tally_contract::time::parse_rfc3339(text)
        .with_context(|| format!("invalid --at {text:?}: not an RFC 3339 time"))?;
    if at_ms < now {
        anyhow::bail!("invalid --at {text:?}: it is in the past; votes already counted after it would stay counted");
    }
    Ok(at_ms)
}

/// Runs the poll subcommand.
pub async fn run(common: &Common, args: PollArgs) -> anyhow::Result<ExitCode> {
    let store = super::vote_store(common).await?;
    match args.command {
        PollCommand::Create {
            id,
            question,
            options,
            opens_at,
            closes_at,
            open,
            counter_shards,
            json,
        } => {
            let poll = admin::new_poll(
                &id,
                &question,
                &options,
                opens_at.as_deref(),
                closes_at.as_deref(),
                counter_shards,
            )?;
            let poll = admin::create_poll(&store, poll, open).await?;
            admin::print_poll(&poll, json);
        }
        PollCommand::Open { id, json } => {
            let poll = admin::open_poll(&store, &id).await?;
            admin::print_poll(&poll, json);
        }
        PollCommand::Close { id, at, json } => {
            let at_ms = closing_time(at.as_deref())?;
            let poll = admin::close_poll(&store, &id, at_ms).await?;
            admin::print_poll(&poll, json);
        }
        PollCommand::List { json } => {
            let polls = store.list_polls().await?;
            if json {
                let list: Vec<serde_json::Value> = polls.iter().map(admin::poll_json).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                print!("{}", admin::polls_table(&polls));
            }
        }
        PollCommand::Show { id, json } => {
            let poll = store
                .get_poll(&id)
                .await?
                .with_context(|| format!("no poll {id} (`tally poll list` shows the polls)"))?;
            admin::print_poll(&poll, json);
        }
    }
    Ok(ExitCode::SUCCESS)
}
