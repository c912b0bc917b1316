//! `tally replay`: rebuilds a poll's tallies into shadow tables and
//! compares them with the live ones.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tally_service::settings::{parse_consumer_mode, parse_initial_position, Clients, Common};
use tally_store::dynamo::DynamoVoteStore;
use tally_worker::close::{self, ScanProgress};
use tally_worker::replay::{self, StreamReplay};

use super::ScanArgs;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplaySource {
    Votes,
    Stream,
}

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The poll.
    pub id: String,
    /// What to rebuild from.
    #[arg(long, value_enum)]
    pub from: ReplaySource,
    /// Prefix of the shadow tables (must differ from --table-prefix).
    #[arg(long)]
    pub shadow_prefix: String,
    /// Application name of a stream replay (lease table `<name>-leases`;
    /// must differ from --app) [default: <app>-replay, the names the replay
    /// role on AWS may use].
    #[arg(long)]
    pub replay_app: Option<String>,
    /// Where a stream replay starts: trim_horizon or an RFC 3339 time.
    #[arg(long, default_value = "trim_horizon")]
    pub position: String,
    /// How a stream replay reads: fan-out (SubscribeToShard through a
    /// stream consumer named after --replay-app, registered if missing and
    /// deregistered when the replay ends; none of the live application's
    /// GetRecords capacity is taken) or polling (GetRecords, sharing each
    /// shard's 5 reads a second with the live application).
    #[arg(long, default_value = "fan-out")]
    pub consumer_mode: String,
    /// Give up when a stream replay has not caught up by then.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_s: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub scan: ScanArgs,
}

impl ReplayArgs {
    /// The replay's application name: `--replay-app`, or `<app>-replay`.
    fn replay_app(&self, live: &Common) -> String {
        self.replay_app
            .clone()
            .unwrap_or_else(|| format!("{}-replay", live.app))
    }

    /// Checks the shadow names against the live ones, naming the flag at
    /// fault.
    fn validate(&self, live: &Common) -> anyhow::Result<()> {
        let replay_app = self.replay_app(live);
        let shadow = Common {
            table_prefix: self.shadow_prefix.clone(),
            app: replay_app.clone(),
            ..live.clone()
        };
        shadow.validate().map_err(|error| {
            anyhow::anyhow!(
                "{}",
                error
                    .to_string()
                    .replace("TALLY_TABLE_PREFIX (--table-prefix)", "--shadow-prefix")
                    .replace("TALLY_APP (--app)", "--replay-app")
            )
        })?;
        if self.shadow_prefix == live.table_prefix {
            anyhow::bail!(
                "invalid --shadow-prefix {:?}: it is the live tables' prefix",
                self.shadow_prefix
            );
        }
        if replay_app == live.app {
            anyhow::bail!("invalid --replay-app {replay_app:?}: it is the live application");
        }
        Ok(())
    }
}

/// Prints the replay's report; exits 3 when it differs from the live tallies.
pub async fn run(common: &Common, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    args.validate(common)?;
    let replay_app = args.replay_app(common);
    let position = parse_initial_position(&args.position).map_err(|error| {
        anyhow::anyhow!(
            "{}",
            error
                .to_string()
                .replace("TALLY_INITIAL_POSITION", "--position")
        )
    })?;
    let consumer_mode = parse_consumer_mode(&args.consumer_mode, &replay_app).map_err(|error| {
        anyhow::anyhow!(
            "{}",
            error.to_string().replace(
                "setting TALLY_CONSUMER_MODE (--consumer-mode)",
                "--consumer-mode"
            )
        )
    })?;
    let clients = Clients::from_env().await?;
    let live = DynamoVoteStore::new(clients.dynamodb.clone(), common.table_names());
    let report = match args.from {
        ReplaySource::Votes => {
            let progress = Arc::new(ScanProgress::default());
            let reporter = close::report_progress(progress.clone(), args.scan.segments);
            let report = replay::from_votes(
                &live,
                &clients.dynamodb,
                &args.id,
                &args.shadow_prefix,
                args.scan.plan(),
                &progress,
            )
            .await;
            reporter.abort();
            report?
        }
        ReplaySource::Stream => {
            let settings = StreamReplay {
                stream: common.stream.clone(),
                app: replay_app,
                shadow_prefix: args.shadow_prefix,
                position,
                consumer_mode,
                timeout: Duration::from_secs(args.timeout_s),
                // SIGINT or SIGTERM: stop, and deregister the consumer.
                stop: tally_service::shutdown::on_signal(),
            };
            replay::from_stream(
                &live,
                &clients.kinesis,
                &clients.dynamodb,
                &args.id,
                &settings,
                &|line| eprintln!("{line}"),
            )
            .await?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", replay::report_text(&report));
    }
    Ok(super::equal_or_different(report.equal))
}
