//! The command line. Every flag can also be set by the environment
//! variable named in `--help`.

use std::path::PathBuf;

use anyhow::Context;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use clap::{Parser, Subcommand};

use crate::settings::{Clients, Common, LeaseSettings};
use crate::store::dynamo::DynamoVoteStore;
use crate::store::VoteStore;
use crate::telemetry::LogFormat;

#[derive(Parser, Debug)]
#[command(
    name = "tally",
    version,
    about = "Real-time, exactly-once vote counting on Kinesis and DynamoDB",
    long_about = "Real-time, exactly-once vote counting on Kinesis and DynamoDB.\n\n\
AWS settings come from the standard variables (AWS_REGION, credentials, \
AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_KINESIS / AWS_ENDPOINT_URL_DYNAMODB for \
the local stack)."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    /// Log format on stderr.
    #[arg(
        long,
        env = "TALLY_LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,
    /// Export traces over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT
    /// (default http://localhost:4318).
    #[arg(long, env = "TALLY_OTLP", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", global = true)]
    pub otlp: bool,
    #[command(flatten)]
    pub snapshots: crate::snapshot::SnapshotSettings,
    #[command(subcommand)]
    pub command: Command,
}

/// How the votes table is scanned by a recount.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ScanArgs {
    /// Parallel scan segments.
    #[arg(long, env = "TALLY_RECOUNT_SEGMENTS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub segments: u32,
    /// Segments scanned at once.
    #[arg(long, env = "TALLY_RECOUNT_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
}

impl ScanArgs {
    pub fn plan(&self) -> crate::close::ScanPlan {
        crate::close::ScanPlan {
            segments: self.segments,
            concurrency: usize::from(self.concurrency),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplaySource {
    Votes,
    Stream,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveSource {
    Recount,
    Tallies,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Creates the stream, the lease table and the vote tables (polls,
    /// votes, tallies, rejects) unless they exist; with --snapshot-bucket,
    /// also the S3 bucket of snapshots.
    Init {
        /// Shards of a new stream.
        #[arg(long, env = "TALLY_SHARDS", default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=10_000))]
        shards: i32,
    },
    /// Shows the lease table: shard, owner, checkpoint, parents and state
    /// (processing, free, waiting on parents, ended), and the workers' heartbeats.
    Leases {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this worker's leases (read through the leaseOwner index, no scan).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Reads the stream as a lease worker and prints every record as a JSON
    /// line (shard, sequence, sub-sequence, partition key, data, worker),
    /// checkpointing after each batch. Stops gracefully on SIGTERM/SIGINT.
    Tail {
        #[command(flatten)]
        lease: LeaseSettings,
        /// Append records to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Print no records (only checkpoint): for draining and benchmarks.
        #[arg(long)]
        quiet: bool,
        /// How often to log the worker's metrics.
        #[arg(long, env = "TALLY_METRICS_INTERVAL_MS", default_value_t = 10_000)]
        metrics_interval_ms: u64,
    },
    /// Creates, opens, closes and shows polls.
    Poll {
        #[command(subcommand)]
        command: PollCommand,
    },
    /// The vote-counting daemon: holds shard leases, counts every vote
    /// exactly once and commits the counts with its checkpoints. Serves
    /// /health and /metrics; stops gracefully on SIGTERM/SIGINT.
    Worker(crate::daemon::WorkerArgs),
    /// The HTTP gateway: the vote API (votes go on the stream), polls, live
    /// results (JSON and Server-Sent Events), admin routes, the web pages
    /// (/, /vote, /dashboard, /admin), /healthz, /readyz, /metrics and
    /// /openapi.json. Stops gracefully on SIGTERM/SIGINT.
    Gateway(crate::gateway::GatewayArgs),
    /// Compares a poll's live tallies with a recount of the votes table
    /// (read-only). Exits 3 when they differ.
    Audit {
        /// The poll.
        id: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        scan: ScanArgs,
    },
    /// Finalizes a closed poll: waits until every shard is processed past
    /// its closing time, recounts the votes table and compares it with the
    /// tallies. Equal: the poll becomes final with its audit record.
    /// Different: it stays closed, the report is kept, and the command
    /// exits 3 (see `tally resolve`).
    Finalize {
        /// The poll.
        id: String,
        /// Print the audit as JSON.
        #[arg(long)]
        json: bool,
        /// Wait this long after the closing time before checking the shards
        /// (clock skew with Kinesis arrival times).
        #[arg(long, env = "TALLY_CLOSE_MARGIN_MS", default_value_t = 2_000)]
        margin_ms: u64,
        /// Give up when the shards have not passed the close by then.
        #[arg(long, env = "TALLY_FINALIZE_TIMEOUT_S", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
        wait_timeout_s: u64,
        #[command(flatten)]
        scan: ScanArgs,
    },
    /// Settles a recount mismatch explicitly and makes the poll final:
    /// `--use recount` replaces the counters with the recount, `--use
    /// tallies` keeps them; the audit record names the choice and reason.
    Resolve {
        /// The poll.
        id: String,
        /// Which counts become the final result.
        #[arg(long = "use", value_enum)]
        source: ResolveSource,
        /// Why, for the audit record.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        scan: ScanArgs,
    },
    /// Rebuilds a poll's tallies apart from the live ones, into shadow
    /// tables, and prints the difference (exits 3 when they differ): from
    /// the votes table, or by reprocessing the stream with a worker of its
    /// own (its own application name and lease table). Never writes to the
    /// live tables.
    Replay {
        /// The poll.
        id: String,
        /// What to rebuild from.
        #[arg(long, value_enum)]
        from: ReplaySource,
        /// Prefix of the shadow tables (must differ from --table-prefix).
        #[arg(long)]
        shadow_prefix: String,
        /// Application name of a stream replay (lease table `<name>-leases`;
        /// must differ from --app).
        #[arg(long, default_value = "tally-replay")]
        replay_app: String,
        /// Where a stream replay starts: trim_horizon or an RFC 3339 time.
        #[arg(long, default_value = "trim_horizon")]
        position: String,
        /// Give up when a stream replay has not caught up by then.
        #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_s: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        scan: ScanArgs,
    },
    /// Writes polls' results to S3 as versioned JSON objects
    /// (`<prefix><poll>/snapshots/<as_of>-<total>.json`; needs
    /// TALLY_SNAPSHOT_BUCKET): once, or every --interval-s while they
    /// change, until Ctrl-C.
    Snapshot {
        /// Polls to snapshot (default: every poll that is open or closed).
        #[arg(long = "poll")]
        polls: Vec<String>,
        /// Run until Ctrl-C, writing changed results at this interval.
        #[arg(long, env = "TALLY_SNAPSHOT_INTERVAL_S", value_parser = clap::value_parser!(u64).range(1..))]
        interval_s: Option<u64>,
    },
    /// Exits 0 when URL answers 2xx within 2 s, 1 otherwise: the container
    /// HEALTHCHECK (the image has no curl).
    Probe {
        /// e.g. http://127.0.0.1:9464/health (worker) or http://127.0.0.1:8080/healthz (gateway).
        #[arg(default_value = "http://127.0.0.1:9464/health")]
        url: String,
    },
    /// A poll's live results, summed over its counter items.
    Results {
        /// The poll.
        id: String,
        /// Print JSON: {"poll_id","status","options":[{"id","label","votes"}],"total","as_of"}.
        #[arg(long)]
        json: bool,
        /// Print again every --interval-ms until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Refresh interval of --watch.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
        interval_ms: u64,
    },
    /// What became of a voter's vote in a poll: counted, duplicate (with
    /// --vote-id: the voter's counted vote is another one), rejected (with
    /// the reason) or unknown. Prints JSON.
    VoteStatus {
        #[arg(long)]
        poll: String,
        #[arg(long)]
        voter: String,
        /// Ask about this one vote of the voter.
        #[arg(long)]
        vote_id: Option<String>,
    },
    /// Sends realistic vote traffic through the producer SDK: voters vote
    /// in the given polls (default: every open poll) at a rate, a share
    /// repeat an earlier voter, a share are malformed; for a count or a
    /// duration. Progress on stderr every 2 s, a JSON summary on stdout.
    Load {
        /// A poll to vote in (repeat for several; default: every open poll).
        #[arg(long = "poll")]
        polls: Vec<String>,
        /// Records to send.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
        votes: Option<u64>,
        /// Or: send for this many seconds.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        duration_s: Option<u64>,
        /// Distinct voters.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        voters: u64,
        /// Records per second (0: as fast as the stream takes them).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Share of votes that repeat an earlier voter (0 to 1).
        #[arg(long, default_value_t = 0.1)]
        repeat_share: f64,
        /// Share of records that are malformed (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        malformed_share: f64,
        /// Pack records into KPL aggregates per shard.
        #[arg(long)]
        aggregate: bool,
        /// How long the producer waits to fill a call.
        #[arg(long, default_value_t = 50)]
        linger_ms: u64,
        /// Prefix of the generated voter ids.
        #[arg(long, default_value = "voter-")]
        voter_prefix: String,
        /// Seed of the random choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
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
        #[arg(long, default_value_t = crate::poll::DEFAULT_COUNTER_SHARDS, value_parser = clap::value_parser!(u32).range(1..=256))]
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

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.common.validate()?;
    match cli.command {
        Command::Init { shards } => {
            init(&cli.common, shards).await?;
            if let Some(snapshots) = snapshots(&cli.snapshots).await? {
                snapshots.ensure_bucket().await?;
            }
            Ok(())
        }
        Command::Snapshot { polls, interval_s } => {
            let snapshots = snapshots(&cli.snapshots).await?.ok_or_else(|| {
                anyhow::anyhow!("missing setting TALLY_SNAPSHOT_BUCKET (--snapshot-bucket): where the snapshots go")
            })?;
            let store = vote_store(&cli.common).await?;
            let stop = if interval_s.is_some() {
                crate::shutdown::on_signal()
            } else {
                tokio_util::sync::CancellationToken::new()
            };
            crate::snapshot::run(
                &store,
                &snapshots,
                &polls,
                interval_s.map(std::time::Duration::from_secs),
                stop,
            )
            .await
        }
        Command::Leases { json, owner } => {
            if let Some(owner) = &owner {
                if !tally_lease::config::valid_id(owner) {
                    anyhow::bail!("invalid --owner {owner:?}: worker ids are 1 to 128 characters of [A-Za-z0-9._:@-]");
                }
            }
            let clients = Clients::from_env().await?;
            crate::leases_view::show(&cli.common, &clients, json, owner.as_deref()).await
        }
        Command::Tail {
            lease,
            output,
            quiet,
            metrics_interval_ms,
        } => {
            let config = lease.worker_config()?;
            let clients = Clients::from_env().await?;
            let shutdown = crate::shutdown::on_signal();
            crate::tail::run(
                &cli.common,
                &clients,
                config,
                crate::tail::Output::new(output, quiet)?,
                std::time::Duration::from_millis(metrics_interval_ms.max(100)),
                shutdown,
            )
            .await
        }
        Command::Poll { command } => poll(&cli.common, command).await,
        Command::Worker(args) => {
            let faults = args.faults()?;
            args.lease.worker_config()?;
            let clients = Clients::with_faults(faults.clone()).await?;
            let shutdown = crate::shutdown::on_signal();
            crate::daemon::run(&cli.common, &clients, &args, faults, shutdown).await
        }
        Command::Gateway(args) => {
            let shutdown = crate::shutdown::on_signal();
            crate::gateway::run(&cli.common, args, shutdown).await
        }
        Command::Audit { id, json, scan } => {
            let store = vote_store(&cli.common).await?;
            let progress = std::sync::Arc::new(crate::close::ScanProgress::default());
            let reporter = crate::close::report_progress(progress.clone(), scan.segments);
            let audit = crate::close::audit(&store, &id, scan.plan(), &progress).await;
            reporter.abort();
            let audit = audit?;
            print_audit(&audit, json)?;
            if !audit.equal {
                std::process::exit(3);
            }
            Ok(())
        }
        Command::Finalize {
            id,
            json,
            margin_ms,
            wait_timeout_s,
            scan,
        } => {
            let clients = Clients::from_env().await?;
            let store = DynamoVoteStore::new(clients.dynamodb.clone(), cli.common.table_names());
            let stream =
                tally_lease::KinesisStream::new(clients.kinesis.clone(), &cli.common.stream);
            let leases =
                tally_lease::DynamoStore::new(clients.dynamodb.clone(), cli.common.lease_table());
            let settings = crate::close::FinalizeSettings {
                margin: std::time::Duration::from_millis(margin_ms),
                wait_timeout: std::time::Duration::from_secs(wait_timeout_s),
                check_every: std::time::Duration::from_secs(1),
                plan: scan.plan(),
            };
            let progress = std::sync::Arc::new(crate::close::ScanProgress::default());
            let reporter = crate::close::report_progress(progress.clone(), scan.segments);
            let outcome = crate::close::finalize(
                &store,
                &stream,
                &leases,
                &id,
                &settings,
                &progress,
                &|line| eprintln!("finalize: {line}"),
            )
            .await;
            reporter.abort();
            match outcome? {
                crate::close::Finalized::Final(audit) => {
                    publish_final(&cli.snapshots, &store, &audit).await?;
                    print_audit(&audit, json)
                }
                crate::close::Finalized::AlreadyFinal(record) => {
                    eprintln!("finalize: poll {id} is final already");
                    println!("{}", record.unwrap_or_else(|| "{}".into()));
                    Ok(())
                }
                crate::close::Finalized::Mismatch(audit) => {
                    print_audit(&audit, json)?;
                    eprintln!("finalize: poll {id} stays closed; the report is kept. Settle it with `tally resolve {id} --use recount|tallies --reason TEXT`");
                    std::process::exit(3);
                }
            }
        }
        Command::Resolve {
            id,
            source,
            reason,
            scan,
        } => {
            let store = vote_store(&cli.common).await?;
            let progress = crate::close::ScanProgress::default();
            let audit = crate::close::resolve(
                &store,
                &id,
                source == ResolveSource::Recount,
                &reason,
                scan.plan(),
                &progress,
            )
            .await?;
            publish_final(&cli.snapshots, &store, &audit).await?;
            print_audit(&audit, false)
        }
        Command::Replay {
            id,
            from,
            shadow_prefix,
            replay_app,
            position,
            timeout_s,
            json,
            scan,
        } => {
            let shadow = Common {
                table_prefix: shadow_prefix.clone(),
                app: replay_app.clone(),
                ..cli.common.clone()
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
            if shadow_prefix == cli.common.table_prefix {
                anyhow::bail!(
                    "invalid --shadow-prefix {shadow_prefix:?}: it is the live tables' prefix"
                );
            }
            if replay_app == cli.common.app {
                anyhow::bail!("invalid --replay-app {replay_app:?}: it is the live application");
            }
            let position = crate::settings::parse_initial_position(&position).map_err(|error| {
                anyhow::anyhow!(
                    "{}",
                    error
                        .to_string()
                        .replace("TALLY_INITIAL_POSITION", "--position")
                )
            })?;
            let clients = Clients::from_env().await?;
            let live = DynamoVoteStore::new(clients.dynamodb.clone(), cli.common.table_names());
            let report = match from {
                ReplaySource::Votes => {
                    let progress = std::sync::Arc::new(crate::close::ScanProgress::default());
                    let reporter = crate::close::report_progress(progress.clone(), scan.segments);
                    let report = crate::replay::from_votes(
                        &live,
                        &clients.dynamodb,
                        &id,
                        &shadow_prefix,
                        scan.plan(),
                        &progress,
                    )
                    .await;
                    reporter.abort();
                    report?
                }
                ReplaySource::Stream => {
                    crate::replay::from_stream(
                        &live,
                        &clients.kinesis,
                        &clients.dynamodb,
                        &id,
                        &crate::replay::StreamReplay {
                            stream: cli.common.stream.clone(),
                            app: replay_app,
                            shadow_prefix,
                            position,
                            timeout: std::time::Duration::from_secs(timeout_s),
                        },
                        &|line| eprintln!("{line}"),
                    )
                    .await?
                }
            };
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", crate::replay::report_text(&report));
            }
            if !report.equal {
                std::process::exit(3);
            }
            Ok(())
        }
        Command::Probe { url } => {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(2))
                .build()?;
            let response = client
                .get(&url)
                .send()
                .await
                .with_context(|| format!("probing {url}"))?;
            if !response.status().is_success() {
                anyhow::bail!("{url} answered {}", response.status());
            }
            Ok(())
        }
        Command::Results {
            id,
            json,
            watch,
            interval_ms,
        } => {
            let store = vote_store(&cli.common).await?;
            let stop = if watch {
                crate::shutdown::on_signal()
            } else {
                tokio_util::sync::CancellationToken::new()
            };
            crate::admin::show_results(
                &store,
                &id,
                json,
                watch.then(|| std::time::Duration::from_millis(interval_ms)),
                stop,
            )
            .await
        }
        Command::VoteStatus {
            poll,
            voter,
            vote_id,
        } => {
            let store = vote_store(&cli.common).await?;
            let status =
                crate::admin::vote_status(&store, &poll, &voter, vote_id.as_deref()).await?;
            println!("{status}");
            Ok(())
        }
        Command::Load {
            polls,
            votes,
            duration_s,
            voters,
            rate,
            repeat_share,
            malformed_share,
            aggregate,
            linger_ms,
            voter_prefix,
            seed,
        } => {
            if !crate::vote::valid_id(&format!("{voter_prefix}0"), crate::vote::MAX_ID_CHARS - 20) {
                anyhow::bail!(
                    "invalid --voter-prefix {voter_prefix:?}: characters of [A-Za-z0-9._:@-] only"
                );
            }
            for (flag, share) in [
                ("--repeat-share", repeat_share),
                ("--malformed-share", malformed_share),
            ] {
                if !(0.0..=1.0).contains(&share) {
                    anyhow::bail!("invalid {flag} {share}: a share is 0 to 1");
                }
            }
            if votes.is_none() && duration_s.is_none() {
                anyhow::bail!("give --votes N or --duration-s S");
            }
            let store = vote_store(&cli.common).await?;
            let chosen = if polls.is_empty() {
                store
                    .list_polls()
                    .await?
                    .into_iter()
                    .filter(|poll| poll.status == crate::poll::PollStatus::Open)
                    .collect::<Vec<_>>()
            } else {
                let mut found = Vec::new();
                for id in &polls {
                    found.push(store.get_poll(id).await?.with_context(|| {
                        format!("no poll {id} (`tally poll list` shows the polls)")
                    })?);
                }
                found
            };
            if chosen.is_empty() {
                anyhow::bail!("no open poll to vote in (`tally poll create ... --open`)");
            }
            let clients = Clients::from_env().await?;
            let sink = std::sync::Arc::new(tally_producer::KinesisSink::new(
                clients.kinesis.clone(),
                &cli.common.stream,
            ));
            let producer = tally_producer::Producer::start(
                sink,
                tally_producer::ProducerConfig {
                    linger: std::time::Duration::from_millis(linger_ms),
                    aggregation: aggregate.then(tally_producer::Aggregation::default),
                    ..tally_producer::ProducerConfig::default()
                },
            );
            let plan = crate::load::LoadPlan {
                polls: chosen
                    .iter()
                    .map(|poll| {
                        (
                            poll.id.clone(),
                            poll.options.iter().map(|o| o.id.clone()).collect(),
                        )
                    })
                    .collect(),
                votes,
                duration: duration_s.map(std::time::Duration::from_secs),
                voters,
                rate,
                repeat_share,
                malformed_share,
                seed,
                voter_prefix,
            };
            let summary = crate::load::run(&producer, &plan).await?;
            producer.close().await?;
            println!("{}", serde_json::to_string(&summary)?);
            if summary.failed > 0 {
                anyhow::bail!(
                    "{} of {} records were not put",
                    summary.failed,
                    summary.sent
                );
            }
            Ok(())
        }
    }
}

async fn snapshots(
    settings: &crate::snapshot::SnapshotSettings,
) -> anyhow::Result<Option<crate::snapshot::Snapshots>> {
    if settings.snapshot_bucket.is_none() {
        return Ok(None);
    }
    let clients = Clients::from_env().await?;
    crate::snapshot::Snapshots::new(&clients.config, settings)
}

/// Writes a final result to S3 when a bucket is configured.
async fn publish_final(
    settings: &crate::snapshot::SnapshotSettings,
    store: &DynamoVoteStore,
    audit: &crate::close::Audit,
) -> anyhow::Result<()> {
    if let Some(snapshots) = snapshots(settings).await? {
        let results = crate::admin::results(store, &audit.poll_id).await?;
        let address = snapshots
            .final_result(&results, &serde_json::to_value(audit)?)
            .await?;
        eprintln!("final result written to {address}");
    }
    Ok(())
}

fn print_audit(audit: &crate::close::Audit, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(audit)?);
    } else {
        print!("{}", crate::close::audit_text(audit));
    }
    Ok(())
}

async fn vote_store(common: &Common) -> anyhow::Result<DynamoVoteStore> {
    let clients = Clients::from_env().await?;
    Ok(DynamoVoteStore::new(
        clients.dynamodb.clone(),
        common.table_names(),
    ))
}

async fn poll(common: &Common, command: PollCommand) -> anyhow::Result<()> {
    let store = vote_store(common).await?;
    match command {
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
            let poll = crate::admin::new_poll(
                &id,
                &question,
                &options,
                opens_at.as_deref(),
                closes_at.as_deref(),
                counter_shards,
            )?;
            let poll = crate::admin::create_poll(&store, poll, open).await?;
            crate::admin::print_poll(&poll, json);
        }
        PollCommand::Open { id, json } => {
            let poll = crate::admin::open_poll(&store, &id).await?;
            crate::admin::print_poll(&poll, json);
        }
        PollCommand::Close { id, at, json } => {
            let now = crate::time::now_millis();
            let at_ms = match at {
                None => now + crate::admin::CLOSE_GRACE.as_millis() as i64,
                Some(text) => {
                    let at_ms = crate::time::parse_rfc3339(&text)
                        .with_context(|| format!("invalid --at {text:?}: not an RFC 3339 time"))?;
                    if at_ms < now {
                        anyhow::bail!("invalid --at {text:?}: it is in the past; votes already counted after it would stay counted");
                    }
                    at_ms
                }
            };
            let poll = crate::admin::close_poll(&store, &id, at_ms).await?;
            crate::admin::print_poll(&poll, json);
        }
        PollCommand::List { json } => {
            let polls = store.list_polls().await?;
            if json {
                let list: Vec<serde_json::Value> =
                    polls.iter().map(crate::admin::poll_json).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                print!("{}", crate::admin::polls_table(&polls));
            }
        }
        PollCommand::Show { id, json } => {
            let poll = store
                .get_poll(&id)
                .await?
                .with_context(|| format!("no poll {id} (`tally poll list` shows the polls)"))?;
            crate::admin::print_poll(&poll, json);
        }
    }
    Ok(())
}

async fn init(common: &Common, shards: i32) -> anyhow::Result<()> {
    let clients = Clients::from_env().await?;
    let created = clients
        .kinesis
        .create_stream()
        .stream_name(&common.stream)
        .shard_count(shards)
        .send()
        .await;
    match created {
        Ok(_) => eprintln!("stream {}: created with {shards} shards", common.stream),
        Err(error) if error.code() == Some("ResourceInUseException") => {
            eprintln!("stream {}: exists", common.stream)
        }
        Err(error) => {
            return Err(anyhow::Error::new(error))
                .with_context(|| format!("creating stream {}", common.stream))
        }
    }
    for _ in 0..300 {
        let summary = clients
            .kinesis
            .describe_stream_summary()
            .stream_name(&common.stream)
            .send()
            .await
            .with_context(|| format!("describing stream {}", common.stream))?;
        let active = summary
            .stream_description_summary()
            .is_some_and(|d| d.stream_status() == &aws_sdk_kinesis::types::StreamStatus::Active);
        if active {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let store = DynamoVoteStore::new(clients.dynamodb.clone(), common.table_names());
    store.ensure_tables().await.context("creating the tables")?;
    let names = store.names();
    eprintln!(
        "tables ready: {}, {}, {}, {}, {}",
        names.leases, names.polls, names.votes, names.tallies, names.rejects
    );
    Ok(())
}
