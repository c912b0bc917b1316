//! `tally load`: puts valid random votes for a poll on the stream, at a
//! given rate, for demos and benchmarks. Each voter votes once (plus a
//! share of repeats); records are keyed by voter, put with `PutRecords` in
//! batches of up to 500, and any record the stream refuses is put again.
//!
//! Wraps <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_PutRecords.html>.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use rand::{Rng, SeedableRng};

use crate::vote::{encode, Vote};

/// What to put.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    pub poll_id: String,
    pub options: Vec<String>,
    pub votes: u64,
    /// Distinct voters (votes beyond them are repeats).
    pub voters: u64,
    /// Votes per second (0: as fast as possible).
    pub rate: u64,
    pub seed: u64,
    /// Prefix of voter ids.
    pub voter_prefix: String,
}

/// Puts the votes; returns how many were put and how long it took.
pub async fn run(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    plan: &LoadPlan,
) -> anyhow::Result<(u64, Duration)> {
    if plan.options.is_empty() {
        bail!("poll {} has no options", plan.poll_id);
    }
    let mut random = rand::rngs::StdRng::seed_from_u64(plan.seed);
    let started = Instant::now();
    let mut put = 0u64;
    let mut last_report = Instant::now();
    while put < plan.votes {
        let size = (plan.votes - put).min(500);
        let mut pending: Vec<PutRecordsRequestEntry> = (0..size)
            .map(|offset| {
                let number = put + offset;
                let voter = format!("{}{}", plan.voter_prefix, number % plan.voters.max(1));
                let vote = Vote {
                    vote_id: format!("{:016x}", random.gen::<u64>()),
                    poll_id: plan.poll_id.clone(),
                    option: plan.options[random.gen_range(0..plan.options.len())].clone(),
                    voter_id: voter.clone(),
                    cast_at: Some(crate::time::format_rfc3339(crate::time::now_millis())),
                };
                PutRecordsRequestEntry::builder()
                    .partition_key(voter)
                    .data(Blob::new(encode(&vote)))
                    .build()
                    .expect("partition key and data are set")
            })
            .collect();
        let mut attempts = 0;
        while !pending.is_empty() {
            attempts += 1;
            let output = kinesis
                .put_records()
                .stream_name(stream)
                .set_records(Some(pending.clone()))
                .send()
                .await
                .with_context(|| format!("putting votes on stream {stream}"))?;
            // Put again exactly the records the stream refused.
            pending = pending
                .into_iter()
                .zip(output.records())
                .filter(|(_, result)| result.error_code().is_some())
                .map(|(entry, _)| entry)
                .collect();
            if !pending.is_empty() {
                if attempts > 20 {
                    bail!("{} records kept being refused by the stream", pending.len());
                }
                tokio::time::sleep(Duration::from_millis(50 * attempts)).await;
            }
        }
        put += size;
        if plan.rate > 0 {
            let due = Duration::from_secs_f64(put as f64 / plan.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!("load: {put}/{} votes put", plan.votes);
        }
    }
    Ok((put, started.elapsed()))
}
