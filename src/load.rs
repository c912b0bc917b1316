//! `tally load`: realistic vote traffic through the producer SDK. Voters
//! vote in the given polls at a set rate; a share of the votes repeat an
//! earlier voter's (duplicates to be), a share are malformed records; it
//! runs for a count or a duration, prints a progress line every 2 s and a
//! JSON summary at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use rand::{Rng, SeedableRng};
use tally_producer::{Producer, Record, VoteBuilder};

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
pub async fn run(producer: &Producer, plan: &LoadPlan) -> anyhow::Result<Summary> {
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
            .cast_at(crate::time::format_rfc3339(crate::time::now_millis()))
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
