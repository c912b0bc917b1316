//! `tally replay`: rebuilds a poll's tallies apart from the live ones and
//! prints the difference.
//! - From the `votes` table: recount into shadow tables (their own table
//!   prefix): the live counters should equal the source of truth.
//! - From the stream: a worker of its own (its own application name, hence
//!   lease table, and table prefix) reads the stream from TRIM_HORIZON or a
//!   time until it has passed the moment the replay started, counting into
//!   the shadow tables with the same pipeline: the live pipeline should
//!   equal an independent run over the same records. By default it reads
//!   through an enhanced fan-out stream consumer of its own, named after its
//!   application, so it takes none of the `GetRecords` capacity the live
//!   (polling) application shares; it deregisters that consumer when it
//!   ends, since nothing else reads through it.
//!
//! It never writes to the live tables.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tally_lease::metrics::Metrics;
use tally_lease::{ConsumerMode, InitialPosition, KinesisStream, LeaseStore, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

use crate::close::{recount, ScanPlan, ScanProgress};
use crate::pipeline::{Pipeline, PipelineConfig, VoteProcessorFactory};
use tally_core::poll::Poll;
use tally_store::dynamo::{DynamoVoteStore, TableNames};
use tally_store::{AuditStore, Counts, PollStore, VoteReads, VoteStore};

/// The live counts next to the replayed ones.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplayReport {
    pub poll_id: String,
    /// `votes` or `stream`.
    pub source: String,
    pub shadow_prefix: String,
    pub equal: bool,
    pub live: BTreeMap<String, u64>,
    pub replay: BTreeMap<String, u64>,
    /// Options whose counts differ: (option, live, replay).
    pub differences: Vec<(String, u64, u64)>,
    /// How a replay from the stream read it (absent for `votes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads: Option<StreamReads>,
}

/// How a stream replay read the stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamReads {
    /// `polling` or `fan-out`.
    pub consumer_mode: String,
    /// `GetRecords` calls of the replay's worker (in fan-out mode only the
    /// end checks of a closed shard whose subscription never says so).
    pub get_records: u64,
    /// `SubscribeToShard` subscriptions of the replay's worker.
    pub subscriptions: u64,
    /// Catch-up checks (`close::pending_shards`), each one `GetRecords` per
    /// shard not yet seen past the replay's start.
    pub progress_checks: u64,
}

fn report(
    poll: &Poll,
    source: &str,
    shadow_prefix: &str,
    live: &Counts,
    replay: &Counts,
) -> ReplayReport {
    let options: BTreeSet<&String> = live
        .by_option
        .keys()
        .chain(replay.by_option.keys())
        .chain(poll.options.iter().map(|option| &option.id))
        .collect();
    let get = |counts: &Counts, option: &String| counts.by_option.get(option).copied().unwrap_or(0);
    let differences: Vec<(String, u64, u64)> = options
        .iter()
        .filter(|option| get(live, option) != get(replay, option))
        .map(|option| ((*option).clone(), get(live, option), get(replay, option)))
        .collect();
    ReplayReport {
        poll_id: poll.id.clone(),
        source: source.to_owned(),
        shadow_prefix: shadow_prefix.to_owned(),
        equal: differences.is_empty(),
        live: options
            .iter()
            .map(|option| ((*option).clone(), get(live, option)))
            .collect(),
        replay: options
            .iter()
            .map(|option| ((*option).clone(), get(replay, option)))
            .collect(),
        differences,
        reads: None,
    }
}

/// The report as people read it.
pub fn report_text(report: &ReplayReport) -> String {
    let mut text = format!(
        "poll {}: live counts and the replay from the {} (shadow prefix {}) {}\n  {:<24} {:>12} {:>12}\n",
        report.poll_id,
        report.source,
        report.shadow_prefix,
        if report.equal { "AGREE" } else { "DIFFER" },
        "option",
        "live",
        "replay"
    );
    for (option, live) in &report.live {
        let replay = report.replay.get(option).copied().unwrap_or(0);
        let mark = if *live == replay { "" } else { "   <- differs" };
        text.push_str(&format!("  {option:<24} {live:>12} {replay:>12}{mark}\n"));
    }
    if let Some(reads) = &report.reads {
        text.push_str(&format!(
            "  read in {} mode: {} GetRecords calls, {} subscriptions, {} catch-up checks\n",
            reads.consumer_mode, reads.get_records, reads.subscriptions, reads.progress_checks
        ));
    }
    text
}

async fn shadow_with_poll(
    dynamodb: &aws_sdk_dynamodb::Client,
    names: TableNames,
    poll: &Poll,
) -> anyhow::Result<DynamoVoteStore> {
    let shadow = DynamoVoteStore::new(dynamodb.clone(), names);
    shadow
        .ensure_tables()
        .await
        .context("creating the shadow tables")?;
    if !shadow.create_poll(poll).await? {
        let existing = shadow.get_poll(&poll.id).await?;
        if existing
            .as_ref()
            .is_none_or(|existing| !existing.same_definition(poll))
        {
            anyhow::bail!(
                "the shadow tables hold another poll {}; use a fresh --shadow-prefix",
                poll.id
            );
        }
    }
    Ok(shadow)
}

/// Rebuilds the poll's tallies from the `votes` table into the shadow tables.
pub async fn from_votes(
    live: &dyn VoteStore,
    dynamodb: &aws_sdk_dynamodb::Client,
    poll_id: &str,
    shadow_prefix: &str,
    plan: ScanPlan,
    progress: &ScanProgress,
) -> anyhow::Result<ReplayReport> {
    let poll = live
        .get_poll(poll_id)
        .await?
        .with_context(|| format!("no poll {poll_id}"))?;
    // Nothing is committed to the shadow tables: the lease table is unused.
    let names = TableNames::with_prefix(shadow_prefix, format!("{shadow_prefix}unused-leases"));
    let shadow = shadow_with_poll(dynamodb, names, &poll).await?;
    let recounted = recount(live, poll_id, plan, progress).await?;
    let rebuilt = Counts {
        by_option: recounted.by_option,
    };
    shadow.set_counts(&poll, &rebuilt).await?;
    let replayed = shadow.counts(&poll).await?;
    let live_counts = live.counts(&poll).await?;
    Ok(report(
        &poll,
        "votes",
        shadow_prefix,
        &live_counts,
        &replayed,
    ))
}

/// What a stream replay reads.
#[derive(Clone, Debug)]
pub struct StreamReplay {
    pub stream: String,
    /// The replay's own application name (lease table `<app>-leases`).
    pub app: String,
    /// The shadow tables' prefix.
    pub shadow_prefix: String,
    pub position: InitialPosition,
    /// Polling, or fan-out through the stream consumer named after `app`
    /// (deregistered when the replay ends).
    pub consumer_mode: ConsumerMode,
    /// Give up when the replay has not caught up by then.
    pub timeout: Duration,
    /// Cancelled to stop the replay early (a signal): its worker stops and
    /// its stream consumer is deregistered as on any other end.
    pub stop: CancellationToken,
}

/// Longest time between two catch-up checks in fan-out mode, whatever the
/// subscriptions say.
const FAN_OUT_CHECK_EVERY: Duration = Duration::from_secs(30);

/// When the replay looks at the shards' progress (`close::pending_shards`,
/// one `GetRecords` per unfinished shard). Polling: every second. Fan-out:
/// only once the subscriptions have delivered events since the last check
/// and report the worker at the tip (`MillisBehindLatest` 0), or every
/// [`FAN_OUT_CHECK_EVERY`]: a few calls over the whole replay instead of one
/// per shard a second next to the live application's polling.
struct CheckGate {
    fan_out: bool,
    events_at_last_check: u64,
    last_check: std::time::Instant,
}

impl CheckGate {
    fn new(mode: &ConsumerMode) -> Self {
        Self {
            fan_out: matches!(mode, ConsumerMode::FanOut { .. }),
            events_at_last_check: 0,
            last_check: std::time::Instant::now(),
        }
    }

    fn should_check(&mut self, metrics: &Metrics) -> bool {
        let events = metrics.subscription_events_total.load(Relaxed);
        let at_tip = metrics.millis_behind_latest.load(Relaxed) == 0;
        let check = !self.fan_out
            || (at_tip && events > self.events_at_last_check)
            || self.last_check.elapsed() >= FAN_OUT_CHECK_EVERY;
        if check {
            self.events_at_last_check = events;
            self.last_check = std::time::Instant::now();
        }
        check
    }
}

/// Reprocesses the stream with a worker of its own into the shadow tables,
/// until every shard has passed the moment the replay started. In fan-out
/// mode the replay's stream consumer is deregistered at the end, whether
/// the replay caught up or not.
pub async fn from_stream(
    live: &dyn VoteStore,
    kinesis: &aws_sdk_kinesis::Client,
    dynamodb: &aws_sdk_dynamodb::Client,
    poll_id: &str,
    replay: &StreamReplay,
    say: &(dyn Fn(String) + Sync),
) -> anyhow::Result<ReplayReport> {
    let poll = live
        .get_poll(poll_id)
        .await?
        .with_context(|| format!("no poll {poll_id}"))?;
    let names = TableNames::with_prefix(&replay.shadow_prefix, format!("{}-leases", replay.app));
    let shadow = Arc::new(shadow_with_poll(dynamodb, names.clone(), &poll).await?);
    let leases = Arc::new(tally_lease::DynamoStore::new(
        dynamodb.clone(),
        names.leases.clone(),
    ));
    leases
        .ensure_table()
        .await
        .context("creating the replay's lease table")?;
    let stream = Arc::new(KinesisStream::new(kinesis.clone(), &replay.stream));
    let started_ms = tally_contract::time::now_millis();
    let mut config = WorkerConfig::new(format!("replay-{}", std::process::id()));
    config.initial_position = replay.position;
    config.consumer_mode = replay.consumer_mode.clone();
    let pipeline = Pipeline::new(shadow.clone(), PipelineConfig::default(), Arc::default());
    let worker = Worker::new(
        config,
        leases.clone(),
        stream.clone(),
        Arc::new(VoteProcessorFactory { pipeline }),
    )?;
    let metrics = worker.metrics();
    let mut gate = CheckGate::new(&replay.consumer_mode);
    let mut progress_checks = 0u64;
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let deadline = std::time::Instant::now() + replay.timeout;
    let outcome = async {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = replay.stop.cancelled() => anyhow::bail!("the replay was stopped before it caught up"),
            }
            if std::time::Instant::now() >= deadline {
                anyhow::bail!("the replay did not catch up within {:?}", replay.timeout);
            }
            if !gate.should_check(&metrics) {
                continue;
            }
            progress_checks += 1;
            let listed = leases
                .list_leases()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if !listed.is_empty() {
                let pending =
                    crate::close::pending_shards(stream.as_ref(), leases.as_ref(), started_ms)
                        .await
                        .map_err(|error| anyhow::anyhow!("cannot check the shards: {error}"))?;
                if pending.is_empty() {
                    return Ok(());
                }
                say(format!(
                    "replay: {} shards still before the replay's start",
                    pending.len()
                ));
            }
        }
    }
    .await;
    stop.cancel();
    // However the worker ended (even a panic), its consumer goes.
    let joined = running.await;
    if let ConsumerMode::FanOut { consumer_name } = &replay.consumer_mode {
        // The consumer is the replay's own: nothing reads through it once
        // the replay's worker has stopped.
        match stream.deregister_consumer(consumer_name).await {
            Ok(_) => say(format!("replay: stream consumer {consumer_name} deregistered")),
            Err(error) => say(format!(
                "replay: could not deregister stream consumer {consumer_name} (tally consumer deregister --app {consumer_name} removes it): {error}"
            )),
        }
    }
    joined
        .context("the replay worker panicked")?
        .context("the replay worker failed")?;
    outcome?;
    let replayed = shadow.counts(&poll).await?;
    let live_counts = live.counts(&poll).await?;
    let mut report = report(
        &poll,
        "stream",
        &replay.shadow_prefix,
        &live_counts,
        &replayed,
    );
    report.reads = Some(StreamReads {
        consumer_mode: replay.consumer_mode.as_str().to_owned(),
        get_records: metrics.get_records_total.load(Relaxed),
        subscriptions: metrics.subscriptions_total.load(Relaxed),
        progress_checks,
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_polling_replay_checks_every_time_and_a_fan_out_one_only_at_the_tip_after_new_events() {
        let metrics = Metrics::default();
        let mut polling = CheckGate::new(&ConsumerMode::Polling);
        assert!(polling.should_check(&metrics));
        assert!(polling.should_check(&metrics));

        let mut fan_out = CheckGate::new(&ConsumerMode::FanOut {
            consumer_name: "tally-replay".into(),
        });
        // No event yet.
        assert!(!fan_out.should_check(&metrics));
        // Events, but behind the tip.
        Metrics::add(&metrics.subscription_events_total, 3);
        Metrics::set(&metrics.millis_behind_latest, 5_000);
        assert!(!fan_out.should_check(&metrics));
        // At the tip: one check, then none until more events arrive.
        Metrics::set(&metrics.millis_behind_latest, 0);
        assert!(fan_out.should_check(&metrics));
        assert!(!fan_out.should_check(&metrics));
        Metrics::add(&metrics.subscription_events_total, 1);
        assert!(fan_out.should_check(&metrics));
        // Whatever the subscriptions say, a check at least every 30 s.
        fan_out.last_check -= FAN_OUT_CHECK_EVERY;
        assert!(fan_out.should_check(&metrics));
    }
}
