//! The command line. Every flag can also be set by the environment
//! variable named in `--help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tally_service::settings::Common;
use tally_service::telemetry::LogFormat;

use crate::cmd;

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
    pub snapshots: tally_worker::snapshot::SnapshotSettings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Creates the stream, the lease table and the vote tables (polls,
    /// votes, tallies, rejects) unless they exist; with --snapshot-bucket,
    /// also the S3 bucket of snapshots.
    Init(cmd::init::InitArgs),
    /// Shows the lease table: shard, owner, checkpoint, parents and state
    /// (processing, free, waiting on parents, ended), and the workers' heartbeats.
    Leases(cmd::leases::LeasesArgs),
    /// Reads the stream as a lease worker and prints every record as a JSON
    /// line (shard, sequence, sub-sequence, partition key, data, worker),
    /// checkpointing after each batch. Stops gracefully on SIGTERM/SIGINT.
    Tail(cmd::tail::TailArgs),
    /// The application's enhanced fan-out stream consumer (named after
    /// --app): `show` prints it, `deregister` removes it (workers never do).
    Consumer(cmd::consumer::ConsumerArgs),
    /// Creates, opens, closes and shows polls.
    Poll(cmd::poll::PollArgs),
    /// The vote-counting daemon: holds shard leases, counts every vote
    /// exactly once and commits the counts with its checkpoints. Serves
    /// /health and /metrics; stops gracefully on SIGTERM/SIGINT.
    Worker(tally_worker::daemon::WorkerArgs),
    /// The HTTP gateway: the vote API (votes go on the stream), polls, live
    /// results (JSON and Server-Sent Events), admin routes, the web pages
    /// (/, /vote, /dashboard, /admin), /healthz, /readyz, /metrics and
    /// /openapi.json. Stops gracefully on SIGTERM/SIGINT.
    Gateway(tally_gateway::GatewayArgs),
    /// Compares a poll's live tallies with a recount of the votes table
    /// (read-only). Exits 3 when they differ.
    Audit(cmd::audit::AuditArgs),
    /// Finalizes a closed poll: waits until every shard is processed past
    /// its closing time, recounts the votes table and compares it with the
    /// tallies. Equal: the poll becomes final with its audit record.
    /// Different: it stays closed, the report is kept, and the command
    /// exits 3 (see `tally resolve`).
    Finalize(cmd::finalize::FinalizeArgs),
    /// Settles a recount mismatch explicitly and makes the poll final:
    /// `--use recount` replaces the counters with the recount, `--use
    /// tallies` keeps them; the audit record names the choice and reason.
    Resolve(cmd::resolve::ResolveArgs),
    /// Rebuilds a poll's tallies apart from the live ones, into shadow
    /// tables, and prints the difference (exits 3 when they differ): from
    /// the votes table, or by reprocessing the stream with a worker of its
    /// own (its own application name and lease table). Never writes to the
    /// live tables.
    Replay(cmd::replay::ReplayArgs),
    /// Writes polls' results to S3 as versioned JSON objects
    /// (`<prefix><poll>/snapshots/<as_of>-<total>.json`; needs
    /// TALLY_SNAPSHOT_BUCKET): once, or every --interval-s while they
    /// change, until Ctrl-C.
    Snapshot(cmd::snapshot::SnapshotArgs),
    /// Exits 0 when URL answers 2xx within 2 s, 1 otherwise: the container
    /// HEALTHCHECK (the image has no curl).
    Probe(cmd::probe::ProbeArgs),
    /// A poll's live results, summed over its counter items.
    Results(cmd::results::ResultsArgs),
    /// What became of a voter's vote in a poll: counted, duplicate (with
    /// --vote-id: the voter's counted vote is another one), rejected (with
    /// the reason) or unknown. Prints JSON.
    VoteStatus(cmd::vote_status::VoteStatusArgs),
    /// Sends realistic vote traffic through the producer SDK: voters vote
    /// in the given polls (default: every open poll) at a rate, a share
    /// repeat an earlier voter, a share are malformed; for a count or a
    /// duration. Progress on stderr every 2 s, a JSON summary on stdout.
    Load(cmd::load::LoadArgs),
}

/// Runs the command; the exit code is for `main` to use.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    cli.common.validate()?;
    let common = &cli.common;
    let snapshots = &cli.snapshots;
    match cli.command {
        Command::Init(args) => cmd::init::run(common, snapshots, args).await,
        Command::Leases(args) => cmd::leases::run(common, args).await,
        Command::Tail(args) => cmd::tail::run(common, args).await,
        Command::Consumer(args) => cmd::consumer::run(common, args).await,
        Command::Poll(args) => cmd::poll::run(common, args).await,
        Command::Worker(args) => cmd::worker::run(common, args).await,
        Command::Gateway(args) => cmd::gateway::run(common, args).await,
        Command::Audit(args) => cmd::audit::run(common, args).await,
        Command::Finalize(args) => cmd::finalize::run(common, snapshots, args).await,
        Command::Resolve(args) => cmd::resolve::run(common, snapshots, args).await,
        Command::Replay(args) => cmd::replay::run(common, args).await,
        Command::Snapshot(args) => cmd::snapshot::run(common, snapshots, args).await,
        Command::Probe(args) => cmd::probe::run(args).await,
        Command::Results(args) => cmd::results::run(common, args).await,
        Command::VoteStatus(args) => cmd::vote_status::run(common, args).await,
        Command::Load(args) => cmd::load::run(common, args).await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use clap::CommandFactory;

    use super::Cli;

    /// One setting: its variable, its flag, its default, the commands that
    /// read it and the first sentence of its help.
    #[derive(Default)]
    struct Setting {
        flag: String,
        default: String,
        commands: BTreeSet<String>,
        help: String,
    }

    fn first_sentence(help: &str) -> String {
        let text = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let end = text
            .match_indices(". ")
            .map(|(at, _)| at + 1)
            .next()
            .unwrap_or(text.len());
        text[..end].trim_end_matches('.').replace('|', "\\|")
    }

    fn collect(command: &clap::Command, path: &str, settings: &mut BTreeMap<String, Setting>) {
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let env = env.to_string_lossy().into_owned();
            let flag = arg.get_long().map(|l| format!("--{l}")).unwrap_or_default();
            let default = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|help| first_sentence(&help.to_string()))
                .unwrap_or_default();
            let setting = settings.entry(env.clone()).or_default();
            if !setting.commands.is_empty() {
                // One variable, one meaning: the table has one row for it.
                assert_eq!(
                    (&setting.flag, &setting.default, &setting.help),
                    (&flag, &default, &help),
                    "{env} is declared differently by {path:?} and {:?}",
                    setting.commands
                );
            }
            setting.flag = flag;
            setting.default = default;
            setting.help = help;
            setting
                .commands
                .insert(if arg.is_global_set() || path.is_empty() {
                    "every command".to_owned()
                } else {
                    path.to_owned()
                });
        }
        for sub in command.get_subcommands() {
            let path = format!("{path} {}", sub.get_name()).trim().to_owned();
            collect(sub, &path, settings);
        }
    }

    /// The README's settings table, from the command definitions that
    /// `--help` prints.
    fn settings_table() -> String {
        let mut settings = BTreeMap::new();
        collect(&Cli::command(), "", &mut settings);
        let mut table = String::from(
            "| variable | flag | default | read by | what it sets |\n| --- | --- | --- | --- | --- |\n",
        );
        for (env, setting) in &settings {
            let commands = if setting.commands.contains("every command") {
                "every command".to_owned()
            } else {
                setting
                    .commands
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let default = if setting.default.is_empty() {
                String::new()
            } else {
                format!("`{}`", setting.default)
            };
            table.push_str(&format!(
                "| `{env}` | `{}` | {default} | {commands} | {} |\n",
                setting.flag, setting.help
            ));
        }
        table
    }

    const BEGIN: &str = "<!-- settings: begin (generated from the command definitions; `TALLY_WRITE_README=1 cargo test -p tally settings` rewrites it) -->\n";
    const END: &str = "<!-- settings: end -->";

    /// Every setting `--help` shows is in the README's table, with its flag,
    /// default and commands, and the table has nothing else.
    #[test]
    fn the_readme_settings_table_is_what_help_shows() {
        let path = tally_lease::testing::repo_root().join("README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md");
        let (start, end) = match (readme.find(BEGIN), readme.find(END)) {
            (Some(start), Some(end)) if start < end => (start + BEGIN.len(), end),
            _ => panic!("README.md has no settings table between its markers"),
        };
        let table = settings_table();
        if std::env::var_os("TALLY_WRITE_README").is_some() {
            let written = format!("{}{table}{}", &readme[..start], &readme[end..]);
            std::fs::write(&path, written).expect("write README.md");
            return;
        }
        assert!(
            readme[start..end] == table,
            "README.md's settings table differs from the command definitions; run TALLY_WRITE_README=1 cargo test -p tally settings\n\nexpected:\n{table}"
        );
    }

    /// The flags without a variable (`--json`, `--watch`, ...) of every
    /// command are named in that command's row of the README's command
    /// table.
    #[test]
    fn the_readme_command_table_names_every_flag() {
        let readme = std::fs::read_to_string(tally_lease::testing::repo_root().join("README.md"))
            .expect("README.md");
        let rows: Vec<&str> = readme
            .lines()
            .filter(|line| line.starts_with("| `tally "))
            .collect();
        let mut missing = Vec::new();
        fn walk(command: &clap::Command, path: &str, rows: &[&str], missing: &mut Vec<String>) {
            let subcommands: Vec<&clap::Command> = command.get_subcommands().collect();
            if subcommands.is_empty() && !path.is_empty() {
                let mine: Vec<&&str> = rows
                    .iter()
                    .filter(|row| row.contains(&format!("`tally {path}")))
                    .collect();
                if mine.is_empty() {
                    missing.push(format!("tally {path}: no row"));
                }
                for arg in command.get_arguments() {
                    let Some(long) = arg.get_long() else { continue };
                    if arg.get_env().is_some() || arg.is_global_set() || long == "help" {
                        continue;
                    }
                    if !mine.iter().any(|row| row.contains(&format!("--{long}"))) {
                        missing.push(format!("tally {path} --{long}"));
                    }
                }
            }
            for sub in subcommands {
                let path = format!("{path} {}", sub.get_name()).trim().to_owned();
                walk(sub, &path, rows, missing);
            }
        }
        walk(&Cli::command(), "", &rows, &mut missing);
        assert!(
            missing.is_empty(),
            "not in the README's command table: {missing:?}"
        );
    }

    /// The table is complete: a setting of a subcommand appears in it.
    #[test]
    fn the_settings_table_names_every_command_setting() {
        let table = settings_table();
        for env in [
            "TALLY_HEALTH_ADDR",
            "TALLY_GATEWAY_ADDR",
            "TALLY_STREAM",
            "TALLY_VOTE_WRITES",
        ] {
            assert!(
                table.contains(&format!("`{env}`")),
                "{env} missing:\n{table}"
            );
        }
        assert!(
            table.contains("| `TALLY_STREAM` | `--stream` | `tally-votes` | every command |"),
            "{table}"
        );
    }
}
