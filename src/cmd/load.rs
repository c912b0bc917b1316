//! `tally load`: realistic vote traffic through the producer SDK. Voters
//! vote in the given polls at a set rate; a share of the votes repeat an
//! earlier voter's (duplicates to be), a share are malformed records; it
//! runs for a count or a duration, prints a progress line every 2 s and a
//! JSON summary at the end.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use rand::{Rng, SeedableRng};
use tally_producer::{Producer, Record, VoteBuilder};
use tally_service::settings::{Clients, Common};

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// Polls and their option ids.
    pub polls: Vec<(String, Vec<String>)>,
    /// Stop after this many records (`None`: only the duration stops it).
    pub votes: Option<u64>,
    pub duration: Option<Duration>,
    /// Distinct voters to draw from.
    pub voters: u64,
    /// Records per second (0: as fast as the producer takes them).
    pub rate: u64,
    /// Share of votes that repeat a voter who already voted.
    pub repeat_share: f64,
    /// Share of records that are not votes at all.
    pub malformed_share: f64,
    pub seed: u64,
    pub voter_prefix: String,
}

/// What happened.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub sent: u64,
    pub put: u64,
    pub failed: u64,
    pub malformed_sent: u64,
    pub seconds: f64,
    pub records_per_second: f64,
    pub producer: serde_json::Value,
}

/// Sends the traffic through `producer`, then flushes it.
pub async fn send(producer: &Producer, plan: &LoadPlan) -> anyhow::Result<Summary> {
    if plan.polls.is_empty() || plan.polls.iter().any(|(_, options)| options.is_empty()) {
        bail!("no poll with options to vote in");
    }
    if plan.votes.is_none() && plan.duration.is_none() {
        bail!("give --votes or --duration-s");
    }
    let mut random = rand::rngs::StdRng::seed_from_u64(plan.seed);
    let put = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut summary = Summary::default();
    let mut next_new_voter = 0u64;
    loop {
        if plan.votes.is_some_and(|votes| summary.sent >= votes)
            || plan
                .duration
                .is_some_and(|limit| started.elapsed() >= limit)
        {
            break;
        }
        let repeat = next_new_voter > 0 && random.gen_bool(plan.repeat_share.clamp(0.0, 1.0));
        let voter_number = if repeat || next_new_voter >= plan.voters {
            random.gen_range(0..next_new_voter.max(1))
        } else {
            next_new_voter += 1;
            next_new_voter - 1
        };
        let voter = format!("{}{voter_number}", plan.voter_prefix);
        let record = if random.gen_bool(plan.malformed_share.clamp(0.0, 1.0)) {
            summary.malformed_sent += 1;
            Record::new(voter, format!("not a vote {}", summary.sent).into_bytes())
        } else {
            let (poll, options) = &plan.polls[random.gen_range(0..plan.polls.len())];
            VoteBuilder::new(
                format!("{:016x}", random.gen::<u64>()),
                poll,
                &options[random.gen_range(0..options.len())],
                voter,
            )
            .cast_at(tally_contract::time::format_rfc3339(
                tally_contract::time::now_millis(),
            ))
            .build()?
        };
        let receipt = producer.send(record).await?;
        summary.sent += 1;
        let (put_count, failed_count, first) = (put.clone(), failed.clone(), first_error.clone());
        tokio::spawn(async move {
            match receipt.await {
                Ok(_) => put_count.fetch_add(1, Ordering::Relaxed),
                Err(error) => {
                    first
                        .lock()
                        .expect("lock")
                        .get_or_insert_with(|| error.to_string());
                    failed_count.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
        if plan.rate > 0 {
            let due = Duration::from_secs_f64(summary.sent as f64 / plan.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            eprintln!(
                "load: sent {}, put {}, failed {}, {:.0} records/s",
                summary.sent,
                put.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                summary.sent as f64 / started.elapsed().as_secs_f64().max(1e-9)
            );
        }
    }
    producer.flush().await?;
    // Receipts resolve in their own tasks; give them a moment to be counted.
    for _ in 0..100 {
        if put.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= summary.sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    summary.put = put.load(Ordering::Relaxed);
    summary.failed = failed.load(Ordering::Relaxed);
    summary.seconds = started.elapsed().as_secs_f64();
    summary.records_per_second = summary.sent as f64 / summary.seconds.max(1e-9);
    summary.producer = producer.metrics().snapshot();
    if let Some(error) = first_error.lock().expect("lock").as_ref() {
        eprintln!(
            "load: {} records failed; the first error: {error}",
            summary.failed
        );
    }
    Ok(summary)
}

/// `tally load`.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// A poll to vote in (repeat for several; default: every open poll).
    #[arg(long = "poll")]
    pub polls: Vec<String>,
    /// Records to send.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub votes: Option<u64>,
    /// Or: send for this many seconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration_s: Option<u64>,
    /// Distinct voters.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub voters: u64,
    /// Records per second (0: as fast as the stream takes them).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Share of votes that repeat an earlier voter (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    pub repeat_share: f64,
    /// Share of records that are malformed (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub malformed_share: f64,
    /// Pack records into KPL aggregates per shard.
    #[arg(long)]
    pub aggregate: bool,
    /// How long the producer waits to fill a call.
    #[arg(long, default_value_t = 50)]
    pub linger_ms: u64,
    /// Prefix of the generated voter ids.
    #[arg(long, default_value = "voter-")]
    pub voter_prefix: String,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl LoadArgs {
    /// Checks the flags before any request, naming the flag at fault.
    fn validate(&self) -> anyhow::Result<()> {
        let prefix = &self.voter_prefix;
        if !tally_contract::vote::valid_id(
            &format!("{prefix}0"),
            tally_contract::vote::MAX_ID_CHARS - 20,
        ) {
            bail!("invalid --voter-prefix {prefix:?}: characters of [A-Za-z0-9._:@-] only");
        }
        for (flag, share) in [
            ("--repeat-share", self.repeat_share),
            ("--malformed-share", self.malformed_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                bail!("invalid {flag} {share}: a share is 0 to 1");
            }
        }
        if self.votes.is_none() && self.duration_s.is_none() {
            bail!("give --votes N or --duration-s S");
        }
        Ok(())
    }
}

/// The polls to vote in: the ones named, or every open one.
async fn chosen_polls(
    store: &dyn tally_store::VoteStore,
    ids: &[String],
) -> anyhow::Result<Vec<tally_core::poll::Poll>> {
    let chosen = if ids.is_empty() {
        store
            .list_polls()
            .await?
            .into_iter()
            .filter(|poll| poll.status == tally_core::poll::PollStatus::Open)
            .collect::<Vec<_>>()
    } else {
        let mut found = Vec::new();
        for id in ids {
            let poll = store.get_poll(id).await?;
            found.push(poll.ok_or_else(|| {
                anyhow::anyhow!("no poll {id} (`tally poll list` shows the polls)")
            })?);
        }
        found
    };
    if chosen.is_empty() {
        bail!("no open poll to vote in (`tally poll create ... --open`)");
    }
    Ok(chosen)
}

/// Sends the load and prints its summary.
pub async fn run(common: &Common, args: LoadArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let store = super::vote_store(common).await?;
    let chosen = chosen_polls(&store, &args.polls).await?;
    let clients = Clients::from_env().await?;
    let sink = Arc::new(tally_producer::KinesisSink::new(
        clients.kinesis.clone(),
        &common.stream,
    ));
    let producer = Producer::start(
        sink,
        tally_producer::ProducerConfig {
            linger: Duration::from_millis(args.linger_ms),
            aggregation: args.aggregate.then(tally_producer::Aggregation::default),
            ..tally_producer::ProducerConfig::default()
        },
    );
    let plan = LoadPlan {
        polls: chosen
            .iter()
            .map(|poll| {
                (
                    poll.id.clone(),
                    poll.options.iter().map(|o| o.id.clone()).collect(),
                )
            })
            .collect(),
        votes: args.votes,
        duration: args.duration_s.map(Duration::from_secs),
        voters: args.voters,
        rate: args.rate,
        repeat_share: args.repeat_share,
        malformed_share: args.malformed_share,
        seed: args.seed,
        voter_prefix: args.voter_prefix,
    };
    let summary = send(&producer, &plan).await?;
    producer.close().await?;
    println!("{}", serde_json::to_string(&summary)?);
    if summary.failed > 0 {
        bail!(
            "{} of {} records were not put",
            summary.failed,
            summary.sent
        );
    }
    Ok(ExitCode::SUCCESS)
}
